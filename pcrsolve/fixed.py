"""A fixed number of Newton-PCR iterations with no host synchronisation.

:func:`pcrsolve.solve` checks convergence after every iteration, which costs a few
device-to-host transfers per iteration: on a GPU, for small problems, those round trips and
the kernel launches dominate. :func:`iterate` runs exactly ``iterations`` undamped
iterations and nothing else: no convergence test, no damping, no finiteness check. Every
array operation stays on the device, so the whole call can be captured in one CUDA graph
(:class:`pcrsolve.backends.torch_graphs.CapturedNewton`) and replayed with new inputs.

It is honest only in the way it is used: after ``k`` iterations the first ``k`` states are
exact whatever happens to the rest, and ``k = L`` gives the whole trajectory exactly (in
exact arithmetic). Choose ``iterations`` from a :func:`pcrsolve.solve` of a representative
input (its ``iterations``, plus a margin), and check the result with :func:`residual`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backends import get_backend
from .direction import check_blocks as _check_blocks
from .direction import jacobian_blocks as _jacobian_blocks
from .direction import value_and_blocks
from .errors import InputError
from .factored import solve_direction
from .namespace import infer_namespace, working_dtype
from .newton import _JacobianOf, _Problem, _validate, jacobian_label

__all__ = ["iterate", "residual"]


def iterate(
    step: Callable[[Any, Any], Any],
    x0: Any,
    length: int,
    iterations: int,
    *,
    jacobian: Callable[[Any, Any], Any] | None = None,
    jacobian_structure: str = "dense",
    jvp: Callable[[Any, Any, Any], Any] | None = None,
    value_and_jacobian: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    mode: str = "newton",
    init: Any | None = None,
    linear_method: str = "auto",
) -> Any:
    """Exactly ``iterations`` undamped Newton-PCR iterations, without host synchronisation.

    Parameters
    ----------
    step, x0, length, jacobian, jacobian_structure, jvp, init, linear_method
        As in :func:`pcrsolve.solve`.
    value_and_jacobian : callable, optional
        As in :func:`pcrsolve.solve`: ``(f, J)`` in one call. With it, ``"newton"`` and
        ``"quasi"`` make one call per iteration (the value and the blocks at the same
        states) instead of a ``step`` call and a ``jacobian`` call.
    iterations : int
        Iterations to run (``>= 0``); ``length`` iterations are exact in exact arithmetic.
    mode : {"newton", "quasi", "picard", "jacobi"}, default "newton"

    Returns
    -------
    array, shape (..., L, w)
        The states after the last iteration, in the dtype of ``x0``.

    Raises
    ------
    InputError
        For invalid arguments, as :func:`pcrsolve.solve`.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> step = lambda x, l: np.cos(x)
    >>> x = pcrsolve.iterate(step, np.zeros(1), 20, 6, jacobian=lambda x, l: -np.sin(x),
    ...                      jacobian_structure="diagonal", mode="quasi")
    >>> bool(np.max(np.abs(pcrsolve.residual(step, np.zeros(1), x))) < 1e-8)
    True
    """
    xp = infer_namespace({"x0": x0, "init": init})
    _validate(step, x0, length, mode, jacobian, jacobian_structure, jvp, None, None, None,
              init, linear_method, xp, value_and_jacobian)
    if mode == "sequential":
        raise InputError("`mode` must be an iterative mode for iterate(); got 'sequential'")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise InputError(f"`iterations` must be an int >= 0; got {iterations!r}")
    work, out_dtype = working_dtype({"x0": x0, "init": init}, xp)
    x0w = xp.astype(x0, work, copy=False)
    if value_and_jacobian is not None and jacobian is None:
        jacobian = _JacobianOf(value_and_jacobian)
    pair = value_and_blocks(mode, value_and_jacobian, jacobian_structure, xp)
    prob = _Problem(step, x0w, length, xp, work, pair)
    jac, structure = _jacobian_blocks(mode, step, jacobian, jacobian_structure, jvp,
                                      get_backend(xp), xp)
    if init is None:
        X = xp.broadcast_to(x0w[..., None, :], (*prob.batch, length, prob.w))
    else:
        X = xp.astype(init, work, copy=False)
    for k in range(iterations):
        Xprev = prob.prev(X)
        F, J = prob.value(Xprev, jacobian=True)  # one call with value_and_jacobian
        if jac is None:  # Jacobi: X' = f(X_prev), exactly
            X = F
            continue
        source = "value_and_jacobian" if J is not None else jacobian_label(jacobian, jvp)
        J = J if J is not None else jac(Xprev, prob.idx)
        if k == 0:
            _check_blocks(J, structure, prob.batch, length, prob.w, work,
                          source or "jacobian")
        # the user's method every time: "auto" is re-chosen (cheap), so that a kernel it
        # picked once is not then asked for by name (which may mean another kernel)
        D, _ = solve_direction(J, F - X, structure, linear_method, xp)
        X = X + D
    return xp.astype(X, out_dtype, copy=False)


def residual(step: Callable[[Any, Any], Any], x0: Any, states: Any) -> Any:
    """``f_l(x_{l-1}) - x_l`` for every step: how well ``states`` solve the recurrence.

    Parameters
    ----------
    step : callable
        As in :func:`pcrsolve.solve`.
    x0 : array, shape (..., w)
    states : array, shape (..., L, w)

    Returns
    -------
    array, shape (..., L, w)
    """
    xp = infer_namespace({"x0": x0, "states": states})
    if states.ndim < 2 or states.shape[-1] != x0.shape[-1]:
        raise InputError(
            f"`states` must have shape (..., L, {x0.shape[-1]}); got {tuple(states.shape)}"
        )
    x0b = xp.broadcast_to(xp.astype(x0, states.dtype, copy=False),
                          (*states.shape[:-2], states.shape[-1]))
    prob = _Problem(step, x0b, states.shape[-2], xp, states.dtype)
    return prob.step(prob.prev(states)) - states

"""Jacobians of a vectorized step function, from whatever the user can supply.

A Jacobian provider maps ``(x_prev, l)`` (states ``(..., n, w)``, 0-based step indices
``(n,)``) to the blocks of the Newton system, dense ``(..., n, w, w)`` or diagonal
``(..., n, w)``. Sources, in order of preference:

1. the user's ``jacobian(x_prev, l)`` (dense or diagonal, as declared), or the blocks of
   ``value_and_jacobian(x_prev, l) -> (f, J)``, which the Newton loop calls to evaluate a
   trial trajectory and its blocks at once (:func:`pcrsolve.solve`);
2. the user's ``jvp(x_prev, l, v)``: the dense Jacobian is assembled from ``w`` JVPs with
   the basis vectors in *one* batched call (a new leading batch axis of size ``w``), the
   diagonal one from the same call without materialising the dense blocks;
3. the backend's automatic differentiation (``torch.func.jvp`` for torch);
4. central finite differences, ``(f(x + h v) - f(x - h v)) / 2h`` with a step that
   scales with the states, per component (see :func:`finite_difference_jvp`): accurate to
   about ``eps^(2/3)`` relative at any state scale, which slows Newton's convergence only
   in its last digits (it is an inexact Newton method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import PCRSolveError, StepFunctionError
from .namespace import device_of

__all__ = ["JVP", "assemble_blocks", "finite_difference_jvp", "jacobian_provider"]

#: ``jvp(x_prev, l, v) -> J_l v`` with ``x_prev, v`` of shape (..., n, w).
JVP = Callable[[Any, Any, Any], Any]


def finite_difference_jvp(step: Callable[[Any, Any], Any], xp: Any) -> JVP:
    """A JVP of ``step`` by central differences (one batched call for both sides).

    The step size follows the scale of the states, per component: with ``t_i`` the
    largest ``|x_i|`` over the steps of the call (per batch element) and ``S = max_i t_i``,

        h_i = eps^(1/3) * max(t_i, eps^(1/3) * S)      (eps^(1/3) where S = 0),

    and a direction ``v`` uses ``h = sum_i |v_i| h_i / sum_i |v_i|`` (``h_i`` for the
    basis vectors that assemble Jacobians). Central differences then err by about
    ``eps^(2/3)`` relative whatever the states' magnitude (a fixed ``max(1, |x|)`` scale
    steps far outside states of size 1e-8), components of different magnitudes each get
    their own step, and a state that is zero (such as a zero ``x0``) takes the scale of
    the others. The floor ``eps^(1/3) S`` bounds the rounding error of a component much
    smaller than the rest (whose outputs may be of size ``S``) to about ``eps^(1/3)``;
    components more than ``eps^(-1/3)`` (1e5 in float64) below the largest therefore
    step relatively further than ``eps^(1/3)``.

    Parameters
    ----------
    step : callable
        ``step(x_prev, l)`` vectorized over steps and leading batch dims.
    xp : module
        Array namespace.

    Returns
    -------
    callable
        ``jvp(x_prev, l, v)`` with ``x_prev, v`` of shape ``(..., n, w)``.

    Examples
    --------
    >>> import numpy as np
    >>> jvp = finite_difference_jvp(lambda x, l: np.sin(x), np)
    >>> x = np.array([[1e-9, 2.0]])
    >>> np.allclose(jvp(x, np.arange(1), np.array([[1.0, 0.0]])), [[1.0, 0.0]])
    True
    """

    def jvp(x: Any, l: Any, v: Any) -> Any:
        eps = float(xp.finfo(x.dtype).eps)
        c = eps ** (1.0 / 3.0)
        x, v = xp.broadcast_arrays(x, v)
        typ = xp.max(xp.abs(x), axis=-2, keepdims=True)  # (..., 1, w): per component
        S = xp.max(typ, axis=-1, keepdims=True)  # (..., 1, 1): the states' scale
        S = xp.where(S > 0, S, xp.ones_like(S))  # all zero: no scale to go by
        hi = c * xp.maximum(typ, c * S)
        av = xp.abs(v)
        norm = xp.sum(av, axis=-1, keepdims=True)
        h = xp.sum(av * hi, axis=-1, keepdims=True) / xp.where(norm > 0, norm,
                                                               xp.ones_like(norm))
        h = xp.where(norm > 0, h, c * S)  # v = 0: any step (the difference is 0)
        both = xp.stack([x + h * v, x - h * v], axis=0)
        out = batched_call(step, "step", both, l, "finite-difference Jacobians evaluate "
                           "x + h v and x - h v in one call")
        return (out[0, ...] - out[1, ...]) / (2.0 * h)

    return jvp


def batched_call(fn: Callable[..., Any], name: str, x: Any, l: Any, why: str,
                 *rest: Any) -> Any:
    """``fn(x, l, *rest)`` where ``x`` has an extra leading batch axis; explain a failure.

    A step (or JVP) that works on ``(..., n, w)`` but not with one more leading axis does
    not broadcast over batch dims: :class:`~pcrsolve.StepFunctionError` says so, chained to
    the original exception.
    """
    try:
        return fn(x, l, *rest)
    except PCRSolveError:
        raise
    except Exception as exc:
        raise StepFunctionError(
            f"`{name}` raised {type(exc).__name__} ({exc}) when called with an extra leading "
            f"batch axis, x_prev of shape {tuple(x.shape)} and l of shape {tuple(l.shape)} "
            f"({why}). Step functions must accept any leading batch dims, x_prev of shape "
            "(..., n, w) (in einsum, '...nj' rather than 'nj'); or pass `jacobian=` so that "
            "none is computed."
        ) from exc


def _basis(w: int, ndim: int, like: Any, xp: Any) -> Any:
    """Basis vectors ``e_i`` shaped ``(w, 1, ..., 1, w)`` for states of ``ndim`` axes."""
    eye = xp.eye(w, dtype=like.dtype, device=device_of(like))
    return xp.reshape(eye, (w,) + (1,) * (ndim - 1) + (w,))


def jacobian_provider(
    jvp: JVP, structure: str, xp: Any
) -> Callable[[Any, Any], Any]:
    """Blocks of the Newton system from a JVP: ``w`` JVPs in one batched call.

    Parameters
    ----------
    jvp : callable
        ``jvp(x_prev, l, v)``, broadcasting over leading batch dims.
    structure : {"dense", "diagonal"}
        Assemble the full blocks, or only their diagonals.
    xp : module

    Returns
    -------
    callable
        ``jac(x_prev, l)`` returning ``(..., n, w, w)`` or ``(..., n, w)``.
    """

    def jac(x: Any, l: Any) -> Any:
        w = x.shape[-1]
        E = _basis(w, x.ndim, x, xp)
        xw = xp.broadcast_to(x[None, ...], (w, *x.shape))
        cols = batched_call(jvp, "jvp", xw, l, f"the Jacobian's w={w} columns come from one "
                            "call", xp.broadcast_to(E, xw.shape))  # cols[i] = J e_i
        if tuple(cols.shape) != tuple(xw.shape):
            raise StepFunctionError(
                f"`jvp` must return the shape of its input {tuple(xw.shape)} (it is called "
                f"with an extra leading batch axis of size w={w}); got {tuple(cols.shape)}"
            )
        return assemble_blocks(cols, structure, xp)

    return jac


def assemble_blocks(cols: Any, structure: str, xp: Any) -> Any:
    """Jacobian blocks from the JVPs with the basis vectors.

    Parameters
    ----------
    cols : array, shape (w, ..., n, w)
        ``cols[i] = J e_i``, the Jacobian's columns.
    structure : {"dense", "diagonal"}
    xp : module

    Returns
    -------
    array
        ``(..., n, w, w)`` (rows index outputs, columns inputs) or the diagonals
        ``(..., n, w)``.
    """
    if structure == "diagonal":
        return xp.sum(cols * _basis(cols.shape[0], cols.ndim - 1, cols, xp), axis=0)
    return xp.permute_dims(cols, (*range(1, cols.ndim), 0))

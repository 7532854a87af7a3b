"""Newton-PCR (DeepPCR): a nonlinear Markov recurrence solved for all steps at once.

Algorithm (Danieli et al. 2023, "DeepPCR", arXiv:2309.16318; the same iteration is
DEER, Lim et al. 2024). The recurrence ``x_l = f_l(x_{l-1})``, ``l = 1..L``, is the
nonlinear system ``X_l - f_l(X_{l-1}) = 0`` in the whole trajectory ``X``. Newton's method
linearises every step around the current guess, ``J_l = df_l/dx (X_{l-1})``, and the
update ``D = X' - X`` solves the *linear* recurrence

    D_l = J_l D_{l-1} + (f_l(X_{l-1}) - X_l),   D_0 = 0,

one block-bidiagonal solve (PCR/CR, O(log L) depth) per iteration. The loop below is
assembled from three parts, each in its own module:

* the **direction** (:mod:`pcrsolve.direction`): which Jacobian (the mode), the Newton or
  Levenberg–Marquardt linear solve, and the pinned prefix that makes at least one more
  state exact every iteration (so ``L`` iterations always suffice);
* the **globalisation** (:mod:`pcrsolve.globalisation`): accept the Newton step, or take
  trust-region (Levenberg–Marquardt) steps where it fails;
* the **stopping rule** (:mod:`pcrsolve.stopping`): residual, update and contraction-aware
  error estimate within ``atol + rtol * max|X|``.

Modes (which ``J``): ``"newton"`` (dense), ``"quasi"`` (its diagonal), ``"picard"``
(``J = I``, for residual steps), ``"jacobi"`` (``J = 0``: ``X' = f(X_prev)``),
``"sequential"`` (the loop itself, the reference).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from .backends import get_backend
from .blocks import STRUCTURES
from .direction import (
    all_finite_blocks,
    autodiff_pair,
    check_blocks,
    finite_sum_blocks,
    jacobian_blocks,
    newton_step,
    pinned_prefix,
    value_and_blocks,
)
from .errors import ConvergenceError, InputError, StepFunctionError
from .factored import Factored
from .globalisation import GLOBALISATIONS, NoGlobalisation, make_globalisation, merit
from .linear import METHODS
from .lyapunov import horizon, lyapunov_exponent
from .namespace import (
    check_device,
    check_finite,
    check_memory,
    device_of,
    infer_namespace,
    working_dtype,
)
from .result import Solution, Status
from .steps import call_step, checked, checked_pair
from .stopping import StoppingRule, default_tolerance

__all__ = ["GLOBALISATIONS", "MODES", "default_tolerance", "solve"]

MODES = ("newton", "quasi", "picard", "jacobi", "sequential")
# residual growth (relative to max(1, initial)) called divergence; only the undamped
# iteration (globalisation="none") can diverge: trust-region steps never increase the merit
_DIVERGENCE_LIMIT = 1e12

# kept for callers of the former private names
_jacobian_blocks = jacobian_blocks
_check_blocks = check_blocks


class Iterate(NamedTuple):
    """A trajectory and what the step function says about it.

    Attributes
    ----------
    X : array, shape (..., L, w)
        The states ``X_1 .. X_L``.
    Xprev : array, shape (..., L, w)
        ``(x0, X_1, .., X_{L-1})``: the input of every step.
    F : array, shape (..., L, w)
        ``f_l(X_{l-1})``.
    R : array, shape (..., L, w)
        The residual ``F - X``.
    state_res : array, shape (..., L)
        ``max_i |R_{l,i}|`` per state.
    rnorm : array, shape (...)
        ``max |R|`` per batch element.
    J : array or Factored or None
        The Jacobian blocks at ``Xprev`` when the evaluation returned them
        (``value_and_jacobian``); ``None`` when they are still to be computed.
    """

    X: Any
    Xprev: Any
    F: Any
    R: Any
    state_res: Any
    rnorm: Any
    J: Any = None


class _JacobianOf:
    """``jacobian(x_prev, l)``: the blocks of ``value_and_jacobian`` (its value unused).

    What the loop calls when it needs blocks at a trajectory whose value it has already
    (after a Levenberg–Marquardt step), and what the adjoint solve uses.
    """

    def __init__(self, value_and_jacobian: Callable) -> None:
        self.value_and_jacobian = value_and_jacobian

    def __call__(self, x_prev: Any, l: Any) -> Any:
        out = self.value_and_jacobian(x_prev, l)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise StepFunctionError(
                "`value_and_jacobian` must return a pair (value, jacobian): the step's "
                f"value f(x_prev, l) and its Jacobian blocks; got {type(out).__name__}"
            )
        return out[1]


def jacobian_label(jacobian: Callable | None, jvp: Callable | None) -> str | None:
    """The argument that supplies the Jacobian, for messages (``None``: pcrsolve's own)."""
    if isinstance(jacobian, _JacobianOf):
        return "value_and_jacobian"
    return "jacobian" if jacobian is not None else ("jvp" if jvp is not None else None)


class _Problem:
    """The recurrence being solved: step evaluation with shape/dtype checks."""

    def __init__(self, step: Callable, x0: Any, L: int, xp: Any, dtype: Any,
                 value_and_jacobian: Callable | None = None) -> None:
        self.xp, self.L, self.dtype = xp, L, dtype
        self.x0 = x0
        self.batch = tuple(x0.shape[:-1])
        self.w = int(x0.shape[-1])
        self.idx = xp.arange(L, dtype=xp.int64, device=device_of(x0))
        self._step = checked(step, "step", xp)
        self._pair = (None if value_and_jacobian is None
                      else checked_pair(value_and_jacobian, "value_and_jacobian", xp))

    def prev(self, X: Any) -> Any:
        """``(x0, X_1, .., X_{L-1})``: the input of every step."""
        xp = self.xp
        return xp.concat([self.x0[..., None, :], X[..., :-1, :]], axis=-2)

    def step(self, Xprev: Any) -> Any:
        return self._step(Xprev, self.idx, expect=(*self.batch, self.L, self.w),
                          dtype=self.dtype)

    def value(self, Xprev: Any, jacobian: bool = False) -> tuple[Any, Any]:
        """``(f(X_prev), J)``: ``J`` the blocks at ``X_prev`` when ``jacobian`` is asked for
        and ``value_and_jacobian`` gives them in the same call, else ``None``."""
        if jacobian and self._pair is not None:
            return self._pair(Xprev, self.idx, expect=(*self.batch, self.L, self.w),
                              dtype=self.dtype)
        return self.step(Xprev), None

    def evaluate(self, X: Any, jacobian: bool = False) -> Iterate:
        """The step function at trajectory ``X``: its outputs and residuals.

        With ``jacobian`` (and a ``value_and_jacobian``), one call of it gives the outputs
        and the Jacobian blocks at ``X_prev`` together.
        """
        xp = self.xp
        Xprev = self.prev(X)
        F, J = self.value(Xprev, jacobian)
        R = F - X
        state_res = xp.max(xp.abs(R), axis=-1)
        return Iterate(X, Xprev, F, R, state_res, xp.max(state_res, axis=-1), J)


def _select(mask: Any, new: Iterate, old: Iterate, xp: Any, structure: str = "dense"
            ) -> Iterate:
    """Per batch element, ``new`` where ``mask`` else ``old`` (Jacobian blocks included)."""
    shapes = (2, 2, 2, 2, 1, 0)
    out = []
    for n, o, k in zip(new[:6], old[:6], shapes, strict=True):
        m = mask[(..., *(None,) * k)]
        out.append(xp.where(m, n, o))
    return Iterate(*out, _select_blocks(mask, new.J, old.J, structure, xp))


def _select_blocks(mask: Any, new: Any, old: Any, structure: str, xp: Any) -> Any:
    """Per batch element, the blocks ``new`` where ``mask`` else ``old``; ``None`` (to be
    recomputed) where either is missing or they cannot be mixed."""
    if new is None or old is None:
        return None
    if isinstance(new, Factored) or isinstance(old, Factored):
        if not (isinstance(new, Factored) and isinstance(old, Factored)
                and new.weight is old.weight and new.identity == old.identity):
            return None
        scale = xp.where(mask[..., None, None], new.scale, old.scale)
        return Factored(scale, new.weight, new.identity)
    k = 1 + STRUCTURES[structure].block_ndim
    return xp.where(mask[(..., *(None,) * k)], new, old)


def solve(
    step: Callable[[Any, Any], Any],
    x0: Any,
    length: int,
    *,
    jacobian: Callable[[Any, Any], Any] | None = None,
    jacobian_structure: str = "dense",
    jvp: Callable[[Any, Any, Any], Any] | None = None,
    value_and_jacobian: Callable[[Any, Any], tuple[Any, Any]] | None = None,
    mode: str = "newton",
    tol: float | None = None,
    atol: float | None = None,
    max_iter: int | None = None,
    init: Any | None = None,
    globalisation: str | None = None,
    damping: bool | None = None,
    linear_method: str = "auto",
    fallback: bool = False,
    throw: bool = True,
    params: Any | None = None,
    check_inputs: bool = True,
) -> Solution:
    """Solve the recurrence ``x_l = f_l(x_{l-1})``, ``l = 1..L``, for all steps at once.

    Parameters
    ----------
    step : callable
        ``step(x_prev, l)``, vectorized over steps: ``x_prev`` of shape ``(..., n, w)``
        and 0-based step indices ``l`` of shape ``(n,)`` (``l = i`` computes
        ``x_{i+1}`` from ``x_i``) give the next states ``(..., n, w)``. Leading batch dims
        must broadcast (the Jacobian is assembled with an extra leading axis).
        :func:`pcrsolve.vectorize_step` wraps a one-step-at-a-time function.
    x0 : array, shape (..., w)
        The initial state; its leading dims are the batch.
    length : int
        ``L >= 1``, the number of steps (any integer, e.g. ``numpy.int64``; not bool).
    jacobian : callable, optional
        ``jacobian(x_prev, l)`` returning ``(..., n, w, w)`` blocks
        (``jacobian_structure="dense"``, or a :class:`pcrsolve.Factored`) or their
        diagonals ``(..., n, w)``. NaN or Inf in its result at finite states raises
        :class:`~pcrsolve.StepFunctionError`.
    jacobian_structure : {"dense", "diagonal"}, default "dense"
        What ``jacobian`` returns.
    jvp : callable, optional
        ``jvp(x_prev, l, v)`` returning ``J_l v`` with the shape of ``v``. Used when no
        ``jacobian`` is given; the dense blocks come from ``w`` JVPs in one call.
        With neither, torch uses ``torch.func.jvp``; NumPy/CuPy use central finite
        differences.
    value_and_jacobian : callable, optional
        ``value_and_jacobian(x_prev, l) -> (f, J)``: the step's value ``step(x_prev, l)``
        (the same numbers) and its Jacobian blocks (as ``jacobian`` returns them, of
        ``jacobian_structure``) in one call, for steps whose Jacobian reuses the work of
        the value (``tanh(W x + b)``: ``J = diag(1 - f^2) W``). ``"newton"`` and
        ``"quasi"`` then evaluate each trial trajectory with it, so that an iteration
        makes one call instead of a ``step`` call plus a ``jacobian`` call that
        recomputes the step; a trial that cannot need its blocks (the one that may end
        the iteration, Levenberg–Marquardt trials) takes ``step`` alone. Without
        ``jacobian``, blocks needed at a trajectory whose value is known come from it too
        (its value unused). Results and iteration counts are those of ``jacobian``.
    mode : {"newton", "quasi", "picard", "jacobi", "sequential"}, default "newton"
        Which Jacobian the iteration uses (see the module docstring).
    tol : float, optional
        Relative tolerance ``rtol`` (finite, ``>= 0``). A batch element has converged when
        its residual ``max|f_l(X_{l-1}) - X_l|``, its last update and the error estimate
        ``update * q / (1 - q)`` (``q`` the observed contraction rate) are all at most
        ``atol + rtol * max(|X|, |f(X_prev)|)`` (see :mod:`pcrsolve.stopping`). Default
        ``max(50 eps, 1e-2 sqrt(eps))`` of the dtype (float64: 1.5e-10, float32: 6e-6).
    atol : float, optional
        Absolute tolerance (finite, ``>= 0``); default the dtype's smallest normal number:
        the tolerance scales with the solution's own size, never with ``x0`` or the
        initial guess.
    max_iter : int, optional
        Iteration limit; default ``L`` (every state is the loop's after ``L``
        iterations, whatever the mode and globalisation).
    init : array, shape (..., L, w), optional
        Initial guess of the trajectory (a warm start). Default: ``x0`` repeated.
    globalisation : {"trust-region", "none"}, default "trust-region"
        ``"trust-region"``: each iteration tries the Newton step and keeps it when it
        reduces ``½ Σ |f(X_prev) - X|²``; elements where it does not take
        Levenberg–Marquardt steps ``(G^T G + λ I) Δ = -G^T r`` (one block-tridiagonal solve
        each) with ``λ`` adapted by the gain ratio (:mod:`pcrsolve.globalisation`).
        Problems Newton handles pay only the merit evaluation. ``"none"``: accept every
        step (the plain iteration; may diverge from a poor guess). ``mode="jacobi"`` has
        no Jacobian and always runs without.
    damping : bool, optional
        The former switch, kept: ``True`` means ``globalisation="trust-region"``,
        ``False`` means ``"none"``. Contradicting ``globalisation`` is an error.
    linear_method : str, default "auto"
        Method of the Newton step's linear solve (see :func:`pcrsolve.solve_linear`).
    fallback : bool, default False
        If the iteration fails (no convergence, divergence, NaN/Inf), compute the states
        with the sequential loop and report ``Status.FALLBACK`` with the reason.
    throw : bool, default True
        Raise :class:`~pcrsolve.ConvergenceError` (carrying the partial solution) when the
        result is not converged; with ``False``, return it with its status.
    params : sequence of tensors or torch.nn.Module, optional
        torch only: the tensors that ``step`` depends on and that require grad. The states
        are then differentiable with respect to ``x0`` and ``params`` through an adjoint
        solve (one reverse linear recurrence + one batched VJP), whatever the
        globalisation of the forward solve.
    check_inputs : bool, default True
        Check ``x0`` and ``init`` for NaN/Inf (one pass and, on a GPU, a sync).

    Returns
    -------
    Solution
        ``states`` of shape ``(..., L, w)``, ``status``, ``iterations``, ``residuals``,
        ``lyapunov_exponent``.

    Raises
    ------
    InputError
        For invalid arguments (the message names the argument), unsupported devices and
        problems too large for memory.
    StepFunctionError
        If ``step``, ``jacobian``, ``jvp`` or ``value_and_jacobian`` returns the wrong type,
        shape or dtype, or the Jacobian holds NaN/Inf at finite states.
    ConvergenceError
        If ``throw`` and the iteration did not converge.

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> W = np.random.default_rng(0).standard_normal((64, 4, 4)) / 2
    >>> step = lambda x, l: np.tanh(np.einsum("nij,...nj->...ni", W[l], x))
    >>> jac = lambda x, l: (1 - step(x, l)[..., None] ** 2) * W[l]
    >>> sol = pcrsolve.solve(step, np.ones(4), 64, jacobian=jac)
    >>> sol.status.name, sol.iterations < 10
    ('CONVERGED', True)
    """
    xp = infer_namespace({"x0": x0, "init": init})
    length = _validate(step, x0, length, mode, jacobian, jacobian_structure, jvp, tol, atol,
                       max_iter, init, linear_method, xp, value_and_jacobian)
    if value_and_jacobian is not None and jacobian is None:
        jacobian = _JacobianOf(value_and_jacobian)
    globalisation = _resolve_globalisation(globalisation, damping)
    backend = get_backend(xp)
    if backend.has_autodiff:  # its probe may be the step's first call: explain failures
        backend.check_no_hidden_grad(lambda x, l: call_step(step, x, l), x0, params)
    options = dict(jacobian=jacobian, jacobian_structure=jacobian_structure, jvp=jvp,
                   value_and_jacobian=value_and_jacobian, mode=mode, tol=tol, atol=atol,
                   max_iter=max_iter, init=init,
                   globalisation=globalisation, linear_method=linear_method,
                   fallback=fallback, throw=throw, check_inputs=check_inputs)
    if params is not None or backend.requires_grad(x0):
        if not backend.has_autodiff:
            raise InputError(
                f"`params` (gradients through the solution) need a backend with autodiff; "
                f"{backend.name} has none"
            )
        return backend.differentiable_solve(_solve_impl, step, x0, length, params, options)
    return _solve_impl(step, x0, length, **options)


def _resolve_globalisation(globalisation: str | None, damping: bool | None) -> str:
    """The globalisation from ``globalisation=`` and the older ``damping=`` switch."""
    if globalisation is not None and globalisation not in GLOBALISATIONS:
        raise InputError(
            f"`globalisation` must be one of {GLOBALISATIONS}; got {globalisation!r}")
    if damping is None:
        return globalisation or "trust-region"
    if not isinstance(damping, bool):
        raise InputError(
            f"`damping` must be True or False (or use globalisation=...); got {damping!r}")
    implied = "trust-region" if damping else "none"
    if globalisation is not None and globalisation != implied:
        raise InputError(
            f"`damping={damping}` means globalisation={implied!r}, which contradicts "
            f"globalisation={globalisation!r}; pass only one of them")
    return implied


def _as_length(length: Any) -> int:
    """``length`` as an int (any integer-like but bool), or InputError."""
    if isinstance(length, bool):
        raise InputError(f"`length` must be an int >= 1 (the number of steps L); got {length!r}")
    try:
        value = operator.index(length)
    except TypeError:
        raise InputError(
            f"`length` must be an int >= 1 (the number of steps L); got {length!r}") from None
    if value < 1:
        raise InputError(f"`length` must be an int >= 1 (the number of steps L); got {length!r}")
    return int(value)


def _validate(step, x0, length, mode, jacobian, jacobian_structure, jvp, tol, atol, max_iter,
              init, linear_method, xp, value_and_jacobian=None) -> int:
    """Check the arguments of :func:`solve`; returns ``length`` as an int."""
    if not callable(step):
        raise InputError(f"`step` must be callable as step(x_prev, l); got {type(step).__name__}")
    length = _as_length(length)
    if mode not in MODES:
        raise InputError(f"`mode` must be one of {MODES}; got {mode!r}")
    if jacobian_structure not in ("dense", "diagonal"):
        raise InputError(
            f"`jacobian_structure` must be 'dense' or 'diagonal'; got {jacobian_structure!r}"
        )
    for name, fn in (("jacobian", jacobian), ("jvp", jvp),
                     ("value_and_jacobian", value_and_jacobian)):
        if fn is not None and not callable(fn):
            raise InputError(f"`{name}` must be callable; got {type(fn).__name__}")
    if x0.ndim < 1 or x0.shape[-1] < 1:
        raise InputError(f"`x0` must have shape (..., w) with w >= 1; got {tuple(x0.shape)}")
    check_device({"x0": x0, "init": init})
    for name, v in (("tol", tol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not math.isfinite(v) or not v >= 0):
            raise InputError(f"`{name}` must be a number, finite and >= 0; got {v!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int)
                                 or max_iter < 0):
        raise InputError(f"`max_iter` must be an int >= 0; got {max_iter!r}")
    if linear_method not in ("auto", "kernel") and linear_method not in METHODS:
        raise InputError(
            f"`linear_method` must be 'auto', 'kernel' or one of {sorted(METHODS)}; got "
            f"{linear_method!r}"
        )
    if init is not None:
        expect = (*x0.shape[:-1], length, x0.shape[-1])
        if tuple(init.shape) != expect:
            raise InputError(
                f"`init` must have shape {expect} (batch of x0, L, w); got {tuple(init.shape)}"
            )
    w = int(x0.shape[-1])
    batch = math.prod(int(d) for d in x0.shape[:-1])
    itemsize = 8 if x0.dtype == xp.float64 else 4
    # the iteration holds a handful of (..., L, w) arrays and, for newton, (..., L, w, w)
    # Jacobian blocks (a third set with value_and_jacobian: the trial's, while the current
    # ones are in use); the loop itself at least the states
    blocks = 3 if value_and_jacobian is not None else 2
    per_state = {"newton": 8 * w + w * w * blocks, "sequential": 1}.get(mode, 12 * w)
    check_memory("length", batch * length * per_state * itemsize, device_of(x0),
                 f"L={length} steps of width w={w}, batch {batch}, mode={mode!r}")
    return length


def _solve_impl(step: Callable, x0: Any, length: int, **options: Any) -> Solution:
    """The solve itself, for any backend, without gradient bookkeeping.

    Floating-point warnings (overflow in a rejected trial step) are silenced: the loop
    checks finiteness itself and reports it in the status.
    """
    xp = infer_namespace({"x0": x0, "init": options.get("init")})
    with get_backend(xp).quiet_float_errors():
        return _iterate(step, x0, length, **options)


def _iterate(
    step: Callable,
    x0: Any,
    length: int,
    *,
    jacobian: Callable | None,
    jacobian_structure: str,
    jvp: Callable | None,
    value_and_jacobian: Callable | None = None,
    mode: str,
    tol: float | None,
    atol: float | None,
    max_iter: int | None,
    init: Any | None,
    globalisation: str,
    linear_method: str,
    fallback: bool,
    throw: bool,
    check_inputs: bool,
) -> Solution:
    """The nonlinear loop: direction, globalisation, stopping rule (module docstring)."""
    xp = infer_namespace({"x0": x0, "init": init})
    work, out_dtype = working_dtype({"x0": x0, "init": init}, xp)
    if check_inputs:
        check_finite({"x0": x0, "init": init}, xp)
    x0w = xp.astype(x0, work, copy=False)
    # whose blocks a message names: the user's argument (None: pcrsolve's autodiff)
    pair_source = "value_and_jacobian" if value_and_jacobian is not None else None
    user_jacobian = jacobian_label(
        _JacobianOf(value_and_jacobian) if value_and_jacobian is not None and jacobian is None
        else jacobian, jvp)
    # no Jacobian given: the backend's autodiff may give value and blocks in one pass
    value_and_jacobian, jacobian_structure = autodiff_pair(
        mode, step, jacobian, jvp, value_and_jacobian, jacobian_structure, get_backend(xp))
    if value_and_jacobian is not None and jacobian is None:
        jacobian = _JacobianOf(value_and_jacobian)
    pair = value_and_blocks(mode, value_and_jacobian, jacobian_structure, xp)
    prob = _Problem(step, x0w, length, xp, work, pair)
    L = length
    rtol = default_tolerance(work, xp) if tol is None else float(tol)
    max_iter = L if max_iter is None else max_iter

    if any(d == 0 for d in prob.batch):  # nothing to solve
        empty = xp.zeros((*prob.batch, L, prob.w), dtype=out_dtype, device=device_of(x0w))
        return Solution(empty, Status.CONVERGED, 0, mode=mode, linear_method="none")
    if mode == "sequential":
        return _sequential_solution(prob, out_dtype, throw)

    backend = get_backend(xp)
    jac, structure = jacobian_blocks(mode, step, jacobian, jacobian_structure, jvp,
                                     backend, xp)
    rule = StoppingRule(rtol, atol, L, work, xp)
    glob = make_globalisation(globalisation, jac is not None, prob.batch, work, x0w, xp)

    X0 = (xp.broadcast_to(x0w[..., None, :], (*prob.batch, L, prob.w)) if init is None
          else xp.astype(init, work, copy=False))
    it = prob.evaluate(X0, jacobian=max_iter > 0)
    residuals = [float(xp.max(it.rnorm))]
    updates: list[float] = []
    rule.start(it.rnorm)
    active = xp.ones(prob.batch, dtype=xp.bool, device=device_of(x0w))
    limit = _DIVERGENCE_LIMIT * max(1.0, residuals[0])
    status = Status.MAX_ITER
    if not math.isfinite(residuals[0]):
        status = Status.NONFINITE
    elif residuals[0] == 0.0:
        status = Status.CONVERGED
    method_used = linear_method
    iterations = 0
    J = None
    all_active = True
    checked_from: set[str | None] = set()  # the Jacobian sources whose blocks were checked
    source: str | None = None  # the argument that supplied this iteration's blocks

    def select(m: Any, a: Iterate, b: Iterate) -> Iterate:
        return _select(m, a, b, xp, structure)

    def may_need_blocks(Xn: Any) -> bool:
        """Whether the trial ``Xn`` can need Jacobian blocks: whether it may fail to end
        the iteration (one host read; see :func:`_cannot_converge`)."""
        if pair is None or iterations >= min(L, max_iter):
            return False  # no protocol, or the last iteration
        far = active & _cannot_converge(Xn, it.X, rule, xp)
        return backend.host_floats(xp.reshape(xp.astype(xp.any(far), work), (1,)))[0] > 0.0

    def advance(trial: Iterate, extra: list[Any]) -> tuple[tuple[Iterate, Any, Any, Any],
                                                           list[float]]:
        """Freeze converged elements, apply the stopping rule; one host read."""
        upd = xp.max(xp.abs(trial.X - it.X), axis=(-2, -1))
        kept = trial
        if not all_active:
            upd = xp.where(active, upd, xp.zeros_like(upd))
            kept = select(active, trial, it)
        scale = rule.scale(kept.X, kept.F)
        active_n = active & ~rule.converged(upd, kept.rnorm, scale, iterations)
        stats = xp.stack([xp.max(upd), xp.max(kept.rnorm),
                          *(xp.astype(f, work) for f in
                            [xp.any(active_n), xp.all(active_n), *extra])])
        return (kept, active_n, upd, kept.rnorm), backend.host_floats(stats)

    while status is Status.MAX_ITER and iterations < max_iter:
        iterations += 1
        extra: list[Any] = []
        rejected = None
        if jac is None:  # Jacobi: X' = f(X_prev), exactly
            trial = prob.evaluate(it.F)
        else:
            # the blocks at X_prev: from the call that evaluated it (value_and_jacobian),
            # or computed now
            source = pair_source if it.J is not None else user_jacobian
            J = it.J if it.J is not None else jac(it.Xprev, prob.idx)
            if source not in checked_from:
                check_blocks(J, structure, prob.batch, L, prob.w, work, source or "jacobian")
                checked_from.add(source)
            # the exact prefix (residual 0) and the state after it take f(X_prev): one more
            # exact state per iteration, bit for bit, whatever D is
            # the user's method every time ("auto" re-chosen: cheap), not the one it picked
            # last: asking for "kernel" by name may select another kernel than auto did
            D, method_used = newton_step(J, it.R, None, structure, linear_method, xp)
            exact = pinned_prefix(it.state_res, xp.zeros_like(it.rnorm), xp)[1]
            Xn = xp.where(exact[..., None], it.F, it.X + D)
            trial = prob.evaluate(Xn, jacobian=may_need_blocks(Xn))
            phi = merit(it.R, xp)
            within = trial.rnorm <= rule.tolerance(trial.X, trial.F)
            rejected = glob.rejected(phi, merit(trial.R, xp), within, active)
            # (the cheap sum test; the exact one runs only if it fails, below)
            extra = [xp.all(xp.isfinite(it.F)) & ~finite_sum_blocks(J, xp)]
            if rejected is not None:
                extra.append(xp.any(rejected))
        new, stats = advance(trial, extra)
        if (J is not None and stats[4] > 0.0 and source is not None
                and not bool(all_finite_blocks(J, xp))):
            raise StepFunctionError(
                f"`{source}` returned NaN or Inf at finite states (iteration "
                f"{iterations}); check it where the step function is finite (the step's "
                "own values are finite there)")
        if rejected is not None and stats[5] > 0.0:  # some Newton steps failed: LM steps
            # LM steps solve for the states after the prefix that is converged to the
            # tolerance; that prefix and the next state take f(X_prev)
            pinned = pinned_prefix(it.state_res, rule.tolerance(it.X, it.F), xp)[1]
            trial = glob.search(J, structure, it, pinned, rejected, prob.evaluate, select,
                                trial, lambda m: bool(xp.any(m)), rule.tolerance)
            new, stats = advance(trial, [])
        it, next_active, upd, rn = new
        rule.record(upd, rn)
        updates.append(stats[0])
        residuals.append(stats[1])
        if not (math.isfinite(updates[-1]) and math.isfinite(residuals[-1])):
            status = Status.NONFINITE
            break
        active = next_active
        all_active = stats[3] > 0.0
        if stats[2] == 0.0:
            status = Status.CONVERGED
        elif isinstance(glob, NoGlobalisation) and residuals[-1] > limit:
            status = Status.DIVERGED
    converged_mask = ~active if status is not Status.NONFINITE else xp.zeros_like(active)
    sol = Solution(xp.astype(it.X, out_dtype, copy=False), status, iterations, residuals,
                   updates, converged_mask, mode, method_used, globalisation=glob.name,
                   lm_steps=getattr(glob, "lm_steps", 0))
    if J is not None and mode in ("newton", "quasi"):
        Jlast, st = J, structure
        sol.set_lyapunov(lambda: float(xp.max(lyapunov_exponent(Jlast, st, xp))))
    return _finish(sol, prob, out_dtype, fallback, throw, work, xp)


def _cannot_converge(Xn: Any, X: Any, rule: StoppingRule, xp: Any) -> Any:
    """Per batch element, whether the trial ``Xn`` (after ``X``) surely fails the stopping
    rule, so that the next iteration needs the Jacobian blocks at it.

    Convergence needs ``max|Xn - X| <= τ`` and ``max|R| <= τ``, with
    ``τ = atol + rtol max(|Xn|, |f|)``; the residual bound gives ``|f| <= |Xn| + τ``, so
    ``τ <= (atol + rtol max|Xn|) / (1 - rtol)``: an update above that bound (with 1% to
    spare for rounding) cannot converge, whatever ``f(Xn)`` turns out to be. Decided
    before ``f(Xn)`` is evaluated, it tells whether to evaluate ``f`` and the blocks
    together; a wrong guess costs time, never a different result.
    """
    upd = xp.max(xp.abs(Xn - X), axis=(-2, -1))
    if rule.rtol >= 1.0:
        return xp.zeros_like(upd, dtype=xp.bool)
    bound = (rule.atol + rule.rtol * xp.max(xp.abs(Xn), axis=(-2, -1))) / (1.0 - rule.rtol)
    return ~(upd <= 1.01 * bound)


def _finish(sol: Solution, prob: _Problem, out_dtype: Any, fallback: bool, throw: bool,
            work: Any, xp: Any) -> Solution:
    """Fallback to the loop and the error message, for a solve that did not converge."""
    status = sol.status
    if status is Status.CONVERGED:
        return sol
    chaos = _chaos_note(sol, work, xp)
    if fallback:
        states = _sequential(prob)
        sol.fallback_reason = status
        if _all_finite(states, xp):
            sol.status = Status.FALLBACK
            sol.states = xp.astype(states, out_dtype, copy=False)
            sol.converged_mask = xp.ones_like(sol.converged_mask)
            return sol
        sol.status = Status.NONFINITE  # the loop itself overflows: nothing to fall back on
    if throw:
        extra = " The sequential fallback overflowed too." if sol.fallback_reason else ""
        raise ConvergenceError(
            f"pcrsolve.solve ({sol.mode}) stopped after {sol.iterations} iteration(s): "
            f"{status.message}. Final residual {sol.residuals[-1]:.3e}.{extra}{chaos}",
            sol,
        )
    return sol


def _chaos_note(sol: Solution, work: Any, xp: Any) -> str:
    """A sentence on chaos when the Lyapunov exponent along the trajectory is positive."""
    try:
        lam = sol.lyapunov_exponent
    except Exception:  # a diagnostic must never mask the real failure
        return ""
    if lam is None or not lam > 0.0:
        return ""
    n = horizon(lam, work, xp)
    sol.note = (
        f"The recurrence looks chaotic along this trajectory: its largest Lyapunov exponent "
        f"is about {lam:.3g} per step, so rounding errors grow like exp({lam:.3g} l) and no "
        f"parallel method can match the sequential loop beyond roughly log(1/eps)/λ = "
        f"{n:.0f} steps. Pass fallback=True, or solve segments shorter than that one after "
        "another (Gonzalez et al. 2025, 'Predictability enables parallelization of "
        "nonlinear state space models')."
    )
    return " " + sol.note


def _sequential_solution(prob: _Problem, out_dtype: Any, throw: bool) -> Solution:
    """``mode="sequential"``: the loop, reported as a Solution."""
    xp = prob.xp
    states = _sequential(prob)
    ok = _all_finite(states, xp)
    sol = Solution(xp.astype(states, out_dtype, copy=False),
                   Status.CONVERGED if ok else Status.NONFINITE, 0, mode="sequential",
                   linear_method="none", globalisation="none")
    if not ok and throw:
        raise ConvergenceError(f"pcrsolve.solve (sequential): {Status.NONFINITE.message}", sol)
    return sol


def _all_finite(x: Any, xp: Any) -> bool:
    return bool(xp.all(xp.isfinite(x)))


def _sequential(prob: _Problem) -> Any:
    """The reference loop: ``L`` calls of the step on one step each."""
    xp = prob.xp
    x = prob.x0
    out = []
    for i in range(prob.L):
        x = prob._step(x[..., None, :], prob.idx[i : i + 1],
                       expect=(*prob.batch, 1, prob.w), dtype=prob.dtype)[..., 0, :]
        out.append(x)
    return xp.stack(out, axis=-2)

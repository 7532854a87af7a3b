"""Newton-PCR (DeepPCR): a nonlinear Markov recurrence solved for all steps at once.

Algorithm (Danieli et al. 2023, "DeepPCR", arXiv:2309.16318; the same iteration is
DEER, Lim et al. 2024). The recurrence ``x_l = f_l(x_{l-1})``, ``l = 1..L``, is the
nonlinear system ``X_l - f_l(X_{l-1}) = 0`` in the whole trajectory ``X``. Newton's method
linearises every step around the current guess, ``J_l = df_l/dx (X_{l-1})``, and the
update ``D = X' - X`` solves the *linear* recurrence

    D_l = J_l D_{l-1} + (f_l(X_{l-1}) - X_l),   D_0 = 0,

one block-bidiagonal solve (PCR/CR, O(log L) depth) per iteration. Because ``D_0 = 0``
and the first residual is exact, after ``k`` undamped iterations the first ``k`` states are
exact *whatever* ``J`` is; so every mode converges in at most ``L`` iterations and in
practice in a handful (the modes only change how fast):

* ``"newton"``: dense ``J`` (quadratic convergence, O(L w^2) memory);
* ``"quasi"``: the diagonal of ``J`` (O(L w) memory, elementwise solve);
* ``"picard"``: ``J = I``, for residual steps ``x + g(x)`` (the solve is a cumulative sum);
* ``"jacobi"``: ``J = 0``, no solve at all (``X' = f(X_prev)``);
* ``"sequential"``: the loop itself, the reference.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from .backends import get_backend
from .blocks import STRUCTURES, fits
from .errors import ConvergenceError, InputError, StepFunctionError
from .factored import Factored, solve_direction
from .jacobians import finite_difference_jvp, jacobian_provider
from .linear import METHODS
from .namespace import check_finite, device_of, infer_namespace, working_dtype
from .result import Solution, Status
from .steps import call_step, checked

__all__ = ["MODES", "solve"]

MODES = ("newton", "quasi", "picard", "jacobi", "sequential")
_DIVERGENCE_LIMIT = 1e12  # residual growth (relative to max(1, initial)) called divergence
_MAX_BACKTRACKS = 4
# a residual growing more than this in one iteration triggers damping: healthy Newton
# iterations can grow the max-norm residual a hundredfold early on (diffusion samplers), an
# expanding initial guess grows it by orders of magnitude beyond (the logistic map)
_GROWTH = 1e4


def _batch_max(x: Any, xp: Any) -> Any:
    """``max |x|`` over the step and feature axes: one value per batch element."""
    return xp.max(xp.abs(x), axis=(-2, -1))


class _Problem:
    """The recurrence being solved: step evaluation with shape/dtype checks."""

    def __init__(self, step: Callable, x0: Any, L: int, xp: Any, dtype: Any) -> None:
        self.xp, self.L, self.dtype = xp, L, dtype
        self.x0 = x0
        self.batch = tuple(x0.shape[:-1])
        self.w = int(x0.shape[-1])
        self.idx = xp.arange(L, dtype=xp.int64, device=device_of(x0))
        self._step = checked(step, "step", xp)

    def prev(self, X: Any) -> Any:
        """``(x0, X_1, .., X_{L-1})``: the input of every step."""
        xp = self.xp
        return xp.concat([self.x0[..., None, :], X[..., :-1, :]], axis=-2)

    def step(self, Xprev: Any) -> Any:
        return self._step(Xprev, self.idx, expect=(*self.batch, self.L, self.w),
                          dtype=self.dtype)


def _jacobian_blocks(
    mode: str,
    step: Callable,
    jacobian: Callable | None,
    jacobian_structure: str,
    jvp: Callable | None,
    backend: Any,
    xp: Any,
) -> tuple[Callable[[Any, Any], Any] | None, str]:
    """The Jacobian provider for ``mode`` and the structure of the blocks it returns."""
    if mode == "picard":
        return (lambda X, l: xp.ones(X.shape[:-1], dtype=X.dtype, device=device_of(X))), "scalar"
    if mode == "jacobi":
        return None, "scalar"
    want = "dense" if mode == "newton" else "diagonal"
    if jacobian is not None:
        if jacobian_structure == "diagonal" or want == "dense":
            return jacobian, jacobian_structure

        def diagonal_of(X: Any, l: Any) -> Any:
            J = jacobian(X, l)
            if J.ndim < 2 or tuple(J.shape[-2:]) != (X.shape[-1], X.shape[-1]):
                raise StepFunctionError(
                    f"`jacobian` must return dense blocks (..., n, {X.shape[-1]}, "
                    f"{X.shape[-1]}) with the default jacobian_structure='dense'; got shape "
                    f"{tuple(J.shape)}. If it returns diagonals, pass "
                    "jacobian_structure='diagonal'."
                )
            if isinstance(J, Factored):
                J.check(tuple(X.shape[:-2]), X.shape[-2], X.shape[-1])
                return J.diagonal(xp)
            return xp.linalg.diagonal(J)

        return diagonal_of, "diagonal"
    if jvp is None and backend.has_autodiff:
        return backend.jacobian(step, want), want
    if jvp is None:
        jvp = finite_difference_jvp(step, xp)
    return jacobian_provider(jvp, want, xp), want


def _check_blocks(J: Any, structure: str, batch: tuple[int, ...], L: int, w: int,
                  dtype: Any) -> None:
    """Raise :class:`StepFunctionError` unless ``J`` holds ``structure`` blocks of ``dtype``."""
    if isinstance(J, Factored):
        if structure != "dense":
            raise StepFunctionError(
                f"`jacobian` returned Factored blocks, which stand for dense blocks; pass "
                f"jacobian_structure='dense' (got {structure!r})"
            )
        J.check(batch, L, w)
    else:
        _check_shape(J, structure, batch, L, w)
    if J.dtype != dtype:
        raise StepFunctionError(f"`jacobian` must return dtype {dtype}; got {J.dtype}")


def _check_shape(J: Any, structure: str, batch: tuple[int, ...], L: int, w: int) -> None:
    tail = (L, *STRUCTURES[structure].block_shape(w))
    if not fits(tuple(J.shape), tail, batch):
        shown = ", ".join(map(str, tail))
        other = {"dense": "diagonal", "diagonal": "dense"}.get(structure)
        hint = (f" If it returns {other} blocks, pass jacobian_structure={other!r}."
                if other else "")
        raise StepFunctionError(
            f"`jacobian` must return shape (..., {shown}) ({structure} blocks, batch dims "
            f"broadcasting to {batch}); got {tuple(J.shape)}.{hint}"
        )


def solve(
    step: Callable[[Any, Any], Any],
    x0: Any,
    length: int,
    *,
    jacobian: Callable[[Any, Any], Any] | None = None,
    jacobian_structure: str = "dense",
    jvp: Callable[[Any, Any, Any], Any] | None = None,
    mode: str = "newton",
    tol: float | None = None,
    atol: float | None = None,
    max_iter: int | None = None,
    init: Any | None = None,
    damping: bool = True,
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
        ``L >= 1``, the number of steps.
    jacobian : callable, optional
        ``jacobian(x_prev, l)`` returning ``(..., n, w, w)`` blocks
        (``jacobian_structure="dense"``) or their diagonals ``(..., n, w)``.
    jacobian_structure : {"dense", "diagonal"}, default "dense"
        What ``jacobian`` returns.
    jvp : callable, optional
        ``jvp(x_prev, l, v)`` returning ``J_l v`` with the shape of ``v``. Used when no
        ``jacobian`` is given; the dense blocks come from ``w`` JVPs in one call.
        With neither, torch uses ``torch.func.jvp``; NumPy/CuPy use central finite
        differences (accurate to about ``eps^(2/3)``).
    mode : {"newton", "quasi", "picard", "jacobi", "sequential"}, default "newton"
        Which Jacobian the iteration uses (see the module docstring).
    tol : float, optional
        Relative tolerance ``rtol``. A batch element has converged when its residual
        ``max|f_l(X_{l-1}) - X_l|`` over all steps and its last update ``max|X_new - X|``
        are both at most ``atol + rtol * max|X|`` (the update test is waived once ``L``
        iterations have fixed every state, exact in exact arithmetic). Default
        ``sqrt(eps) * 1e-2`` of the dtype, floored at ``50 eps`` (float64: 1.5e-10,
        float32: 6e-6).
    atol : float, optional
        Absolute tolerance; default ``tol * max(max|x0|, max|f(X_prev) - X|)`` of the
        initial guess, per batch element (so it scales with the problem).
    max_iter : int, optional
        Iteration limit; default ``L`` (in exact arithmetic every mode is exact after ``L``
        iterations; in floating point the stopping rule decides, and on chaotic
        recurrences rounding errors can keep it from being met: ``MAX_ITER`` then).
    init : array, shape (..., L, w), optional
        Initial guess of the trajectory (a warm start: e.g. the previous training step's
        states). Default: ``x0`` repeated.
    damping : bool, default True
        For batch elements whose residual grew more than 10^4-fold in one iteration (the
        max-norm residual of a healthy Newton iteration may grow a hundredfold early on), retry
        the iteration with the Jacobian
        scaled down (by 1/8, 1/64, then 0, i.e. a Jacobi step); the scale recovers in
        later iterations. Any Jacobian keeps the "first k states exact after k
        iterations" guarantee, so damping never loses convergence in ``L`` iterations;
        it prevents the overflow that undamped Newton suffers when the initial guess
        lies where the steps expand. Each retry costs one linear solve and one step
        evaluation; none happen while the residual behaves.
    linear_method : str, default "auto"
        Method of the linear solve of each iteration (see :func:`pcrsolve.solve_linear`).
    fallback : bool, default False
        If the iteration fails (no convergence, divergence, NaN/Inf), compute the states
        with the sequential loop and report ``Status.FALLBACK`` with the reason.
    throw : bool, default True
        Raise :class:`~pcrsolve.ConvergenceError` (carrying the partial solution) when the
        result is not converged; with ``False``, return it with its status.
    params : sequence of tensors or torch.nn.Module, optional
        torch only: the tensors that ``step`` depends on and that require grad. The states
        are then differentiable with respect to ``x0`` and ``params`` through an adjoint
        solve (one reverse linear recurrence + one batched VJP), not by backpropagating
        through the iterations.
    check_inputs : bool, default True
        Check ``x0`` and ``init`` for NaN/Inf (one pass and, on a GPU, a sync).

    Returns
    -------
    Solution
        ``states`` of shape ``(..., L, w)``, ``status``, ``iterations``, ``residuals``.

    Raises
    ------
    InputError
        For invalid arguments (the message names the argument).
    StepFunctionError
        If ``step``, ``jacobian`` or ``jvp`` returns the wrong type, shape or dtype.
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
    backend = get_backend(xp)
    _validate(step, x0, length, mode, jacobian, jacobian_structure, jvp, tol, atol, max_iter,
              init, linear_method, xp)
    if backend.has_autodiff:  # its probe may be the step's first call: explain failures
        backend.check_no_hidden_grad(lambda x, l: call_step(step, x, l), x0, params)
    options = dict(jacobian=jacobian, jacobian_structure=jacobian_structure, jvp=jvp,
                   mode=mode, tol=tol, atol=atol, max_iter=max_iter, init=init, damping=damping,
                   linear_method=linear_method, fallback=fallback, throw=throw,
                   check_inputs=check_inputs)
    if params is not None or backend.requires_grad(x0):
        if not backend.has_autodiff:
            raise InputError(
                f"`params` (gradients through the solution) need a backend with autodiff; "
                f"{backend.name} has none"
            )
        return backend.differentiable_solve(_solve_impl, step, x0, length, params, options)
    return _solve_impl(step, x0, length, **options)


def _validate(step, x0, length, mode, jacobian, jacobian_structure, jvp, tol, atol, max_iter,
              init, linear_method, xp) -> None:
    if not callable(step):
        raise InputError(f"`step` must be callable as step(x_prev, l); got {type(step).__name__}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise InputError(f"`length` must be an int >= 1 (the number of steps L); got {length!r}")
    if mode not in MODES:
        raise InputError(f"`mode` must be one of {MODES}; got {mode!r}")
    if jacobian_structure not in ("dense", "diagonal"):
        raise InputError(
            f"`jacobian_structure` must be 'dense' or 'diagonal'; got {jacobian_structure!r}"
        )
    for name, fn in (("jacobian", jacobian), ("jvp", jvp)):
        if fn is not None and not callable(fn):
            raise InputError(f"`{name}` must be callable; got {type(fn).__name__}")
    if x0.ndim < 1 or x0.shape[-1] < 1:
        raise InputError(f"`x0` must have shape (..., w) with w >= 1; got {tuple(x0.shape)}")
    for name, v in (("tol", tol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)
                              or not v >= 0):
            raise InputError(f"`{name}` must be a number >= 0; got {v!r}")
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


def default_tolerance(dtype: Any, xp: Any) -> float:
    """The default ``tol``/``atol`` for states of ``dtype``."""
    eps = float(xp.finfo(dtype).eps)
    return max(50.0 * eps, 1e-2 * eps**0.5)


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
    mode: str,
    tol: float | None,
    atol: float | None,
    max_iter: int | None,
    init: Any | None,
    damping: bool,
    linear_method: str,
    fallback: bool,
    throw: bool,
    check_inputs: bool,
) -> Solution:
    """Newton's loop (see the module docstring)."""
    xp = infer_namespace({"x0": x0, "init": init})
    work, out_dtype = working_dtype({"x0": x0, "init": init}, xp)
    if check_inputs:
        check_finite({"x0": x0, "init": init}, xp)
    x0w = xp.astype(x0, work, copy=False)
    prob = _Problem(step, x0w, length, xp, work)
    L = length
    rtol = default_tolerance(work, xp) if tol is None else float(tol)
    max_iter = L if max_iter is None else max_iter

    if any(d == 0 for d in prob.batch):  # nothing to solve
        empty = xp.zeros((*prob.batch, L, prob.w), dtype=out_dtype, device=device_of(x0w))
        return Solution(empty, Status.CONVERGED, 0, mode=mode, linear_method="none")
    if mode == "sequential":
        states = _sequential(prob)
        ok = _all_finite(states, xp)
        sol = Solution(xp.astype(states, out_dtype, copy=False),
                       Status.CONVERGED if ok else Status.NONFINITE, 0, mode="sequential",
                       linear_method="none")
        if not ok and throw:
            raise ConvergenceError(f"pcrsolve.solve (sequential): {Status.NONFINITE.message}",
                                   sol)
        return sol

    backend = get_backend(xp)
    jac, structure = _jacobian_blocks(mode, step, jacobian, jacobian_structure, jvp,
                                      backend, xp)
    jac_checked = False

    if init is None:
        X = xp.broadcast_to(x0w[..., None, :], (*prob.batch, L, prob.w))
    else:
        X = xp.astype(init, work, copy=False)
    Xprev = prob.prev(X)
    F = prob.step(Xprev)
    R = F - X
    rnorm = _batch_max(R, xp)
    residuals = [float(xp.max(rnorm))]
    updates: list[float] = []
    active = xp.ones(prob.batch, dtype=xp.bool, device=device_of(x0w))
    # the default absolute tolerance scales with the problem: rtol * max(|x0|, |R_0|)
    if atol is None:
        scale = xp.maximum(xp.max(xp.abs(x0w), axis=-1), rnorm)
        tiny = float(xp.finfo(work).smallest_normal)
        atol_e = rtol * xp.maximum(scale, xp.full_like(scale, tiny))
    else:
        atol_e = xp.full_like(rnorm, float(atol))
    limit = _DIVERGENCE_LIMIT * max(1.0, residuals[0])
    status = Status.MAX_ITER
    method_used = linear_method
    iterations = 0
    if not math.isfinite(residuals[0]):
        status = Status.NONFINITE
    elif residuals[0] == 0.0:
        status = Status.CONVERGED
    # damping: per batch element, the Jacobian is scaled by gamma in [0, 1]. Any J keeps
    # the "first k states exact after k iterations" property, so this never loses the
    # finite-termination guarantee; gamma = 0 is the Jacobi step X' = f(X_prev).
    gamma = xp.ones(prob.batch, dtype=work, device=device_of(x0w))
    damped = False  # whether some gamma < 1 (tracked on the host: no sync while False)
    J = None

    def direction(g: Any) -> Any:
        nonlocal method_used
        D, method_used = solve_direction(J, R, structure, method_used, xp,
                                         g if damped else None)
        return D

    def proposal(g: Any) -> Any:
        """The next iterate: ``X + D``, or exactly ``f(X_prev)`` for Jacobi steps."""
        if J is None:
            return F
        Xn = X + direction(g)
        return xp.where((g == 0.0)[..., None, None], F, Xn) if damped else Xn

    all_active = True  # whether every batch element is still iterating (host copy)

    def _advance(trial: tuple[Any, ...], rn: Any, worse: Any) -> tuple[Any, list[float]]:
        """Freeze converged elements and take stock, reading the host once per iteration.

        Returns the new ``((X, F, R, Xprev), rnorm, active)`` and, on the host, the largest
        update, the largest residual, whether any element is still active, whether all
        are, and whether any is ``worse``. An element has converged when its states satisfy
        every step to the tolerance and the iteration has settled (its last update is as
        small, or ``L`` iterations fixed every state). While every element is active (most
        iterations) nothing needs freezing: the selects are skipped.
        """
        upd = _batch_max(trial[0] - X, xp)
        if all_active:
            kept, rnorm_n = trial, rn
        else:
            upd = xp.where(active, upd, xp.zeros_like(rnorm))
            kept = _select(active, trial, (X, F, R, Xprev), xp)
            rnorm_n = xp.where(active, rn, rnorm)
        threshold = atol_e + rtol * _batch_max(kept[0], xp)
        settled = (upd <= threshold) | (iterations >= L)
        active_n = active & ~((rnorm_n <= threshold) & settled)
        flags = [xp.any(active_n), xp.all(active_n)]
        flags += [] if worse is None else [xp.any(worse)]
        stats = xp.stack([xp.max(upd), xp.max(rnorm_n),
                          *(xp.astype(f, work) for f in flags)])
        return (kept, rnorm_n, active_n), backend.host_floats(stats)

    while status is Status.MAX_ITER and iterations < max_iter:
        # one Newton step: D_l = J_l D_{l-1} + R_l, D_0 = 0
        if jac is not None:
            J = jac(Xprev, prob.idx)
            if not jac_checked:
                _check_blocks(J, structure, prob.batch, L, prob.w, work)
                jac_checked = True
        iterations += 1
        trial, rn = _trial(prob, proposal(gamma), xp)
        # elements whose residual grew too much take a damped step instead (backtracking)
        check_worse = damping and J is not None
        worse = (~(rn <= _GROWTH * rnorm) & active) if check_worse else None
        new, stats = _advance(trial, rn, worse)
        if worse is not None and stats[4] > 0.0:  # rare: backtrack, then take stock again
            for attempt in range(_MAX_BACKTRACKS):
                shrink = 0.0 if attempt == _MAX_BACKTRACKS - 1 else 0.125
                gamma = xp.where(worse, gamma * shrink, gamma)
                damped = True
                retry, rt = _trial(prob, proposal(gamma), xp)
                trial = _select(worse, retry, trial, xp)
                rn = xp.where(worse, rt, rn)
                worse = ~(rn <= _GROWTH * rnorm) & active
                if attempt == _MAX_BACKTRACKS - 1 or not bool(xp.any(worse)):
                    break
            new, stats = _advance(trial, rn, None)
        if damped:
            gamma = xp.minimum(gamma * 4.0 + 1e-3, xp.ones_like(gamma))
            damped = bool(xp.any(gamma < 1.0))
        (X, F, R, Xprev), rnorm, next_active = new
        updates.append(stats[0])
        residuals.append(stats[1])
        if not (math.isfinite(updates[-1]) and math.isfinite(residuals[-1])):
            status = Status.NONFINITE
            break
        active = next_active
        all_active = stats[3] > 0.0
        if stats[2] == 0.0:
            status = Status.CONVERGED
        elif residuals[-1] > limit:
            status = Status.DIVERGED
    converged_mask = ~active if status is not Status.NONFINITE else xp.zeros_like(active)
    sol = Solution(xp.astype(X, out_dtype, copy=False), status, iterations, residuals, updates,
                   converged_mask, mode, method_used)
    if status is not Status.CONVERGED and fallback:
        states = _sequential(prob)
        sol.fallback_reason = status
        if _all_finite(states, xp):
            sol.status = Status.FALLBACK
            sol.states = xp.astype(states, out_dtype, copy=False)
            sol.converged_mask = xp.ones_like(active)
            return sol
        sol.status = Status.NONFINITE  # the loop itself overflows: nothing to fall back on
    if sol.status is not Status.CONVERGED and throw:
        extra = " The sequential fallback overflowed too." if sol.fallback_reason else ""
        raise ConvergenceError(
            f"pcrsolve.solve ({mode}) stopped after {iterations} iteration(s): "
            f"{status.message}. Final residual {residuals[-1]:.3e}.{extra}",
            sol,
        )
    return sol


def _trial(prob: _Problem, Xn: Any, xp: Any) -> tuple[tuple[Any, Any, Any, Any], Any]:
    """``(Xn, f(Xn_prev), its residual, Xn_prev)`` and the residual's norm per element."""
    Xprev = prob.prev(Xn)
    F = prob.step(Xprev)
    R = F - Xn
    return (Xn, F, R, Xprev), _batch_max(R, xp)


def _select(mask: Any, new: tuple[Any, ...], old: tuple[Any, ...], xp: Any) -> tuple[Any, ...]:
    """Per batch element, ``new`` where ``mask`` else ``old`` (for (..., L, w) arrays)."""
    m = mask[..., None, None]
    return tuple(xp.where(m, n, o) for n, o in zip(new, old, strict=True))


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


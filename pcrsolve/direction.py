"""The direction of one nonlinear iteration: which Jacobian, and which linear solve.

A *direction* turns the current trajectory ``X`` (its residual ``R = f(X_prev) - X`` and the
Jacobian blocks ``J_l = df_l/dx (X_{l-1})``) into a proposed step. Two of them:

* the **Newton step** (``λ = 0``): ``D_l = J_l D_{l-1} + R_l``, one block-*bi*\\ diagonal
  solve (:func:`pcrsolve.solve_linear`, or a backend's fused factored kernel);
* the **Levenberg–Marquardt step** (``λ > 0``): with ``r = -R`` and ``G = dr/dX``
  (identity blocks on the diagonal, ``-J_l`` below), ``(G^T G + λ I) Δ = -G^T r``, one
  block-*tri*\\ diagonal SPD solve (:mod:`pcrsolve.tridiagonal`).

Both respect a **pinned prefix**, which gives every mode its finite-termination guarantee:
the states ``1..p+1`` are set to ``f(X_prev)`` (the Jacobi/sequential update, which makes
state ``p+1`` exact when the first ``p`` are) and the step moves only the states after
them. For the Newton step ``p`` counts the *exact* leading states (residual 0: the Newton
step is zero there anyway, and the tail keeps its quadratic convergence); for
Levenberg–Marquardt steps it counts the states converged to the tolerance, which are held
fixed. Every iteration therefore makes at least one more state exact, whatever the
Jacobian and whatever the globalisation does with the rest.

The Jacobian providers (:func:`jacobian_blocks`) live here too: the user's ``jacobian``,
``w`` JVPs, the backend's autodiff or finite differences, reduced to the structure the mode
wants (dense for ``"newton"``, diagonal for ``"quasi"``, scalar ones for ``"picard"``, none
for ``"jacobi"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .blocks import STRUCTURES, fits
from .errors import StepFunctionError
from .factored import Factored, solve_direction
from .jacobians import finite_difference_jvp, jacobian_provider
from .namespace import device_of, finite_sum

__all__ = [
    "check_blocks",
    "jacobian_blocks",
    "lm_step",
    "model_residual",
    "newton_step",
    "periodic_tail",
    "pinned_prefix",
    "value_and_blocks",
]

#: the longest period :func:`periodic_tail` looks for
KMAX = 64


def jacobian_blocks(
    mode: str,
    step: Callable,
    jacobian: Callable | None,
    jacobian_structure: str,
    jvp: Callable | None,
    backend: Any,
    xp: Any,
) -> tuple[Callable[[Any, Any], Any] | None, str]:
    """The Jacobian provider for ``mode`` and the structure of the blocks it returns.

    Parameters
    ----------
    mode : {"newton", "quasi", "picard", "jacobi"}
    step, jacobian, jacobian_structure, jvp
        As in :func:`pcrsolve.solve`.
    backend : Backend
        The array library's backend (autodiff, if it has one).
    xp : module

    Returns
    -------
    provider : callable or None
        ``provider(x_prev, l)`` with ``x_prev`` of shape ``(..., n, w)`` returning blocks
        ``(..., n, w, w)`` / ``(..., n, w)`` / ``(..., n)``; ``None`` for ``"jacobi"``.
    structure : {"dense", "diagonal", "scalar"}
    """
    if mode == "picard":
        return (lambda X, l: xp.ones(X.shape[:-1], dtype=X.dtype, device=device_of(X))), "scalar"
    if mode == "jacobi":
        return None, "scalar"
    want = "dense" if mode == "newton" else "diagonal"
    if jacobian is not None:
        if jacobian_structure == "diagonal" or want == "dense":
            return jacobian, jacobian_structure

        def diagonal_of(X: Any, l: Any) -> Any:
            return _diagonal_of(jacobian(X, l), X, "jacobian", xp)

        return diagonal_of, "diagonal"
    if jvp is None and backend.has_autodiff:
        return backend.jacobian(step, want), want
    if jvp is None:
        jvp = finite_difference_jvp(step, xp)
    return jacobian_provider(jvp, want, xp), want


def _diagonal_of(J: Any, X: Any, name: str, xp: Any) -> Any:
    """The diagonals ``(..., n, w)`` of the dense blocks ``J`` (for ``mode="quasi"``)."""
    if J.ndim < 2 or tuple(J.shape[-2:]) != (X.shape[-1], X.shape[-1]):
        raise StepFunctionError(
            f"`{name}` must return dense blocks (..., n, {X.shape[-1]}, "
            f"{X.shape[-1]}) with the default jacobian_structure='dense'; got shape "
            f"{tuple(J.shape)}. If it returns diagonals, pass "
            "jacobian_structure='diagonal'."
        )
    if isinstance(J, Factored):
        J.check(tuple(X.shape[:-2]), X.shape[-2], X.shape[-1])
        return J.diagonal(xp)
    return xp.linalg.diagonal(J)


def value_and_blocks(
    mode: str,
    value_and_jacobian: Callable | None,
    jacobian_structure: str,
    xp: Any,
) -> Callable[[Any, Any], tuple[Any, Any]] | None:
    """``(x_prev, l) -> (f, blocks)`` from the user's ``value_and_jacobian``, or ``None``.

    The blocks are reduced as :func:`jacobian_blocks` reduces the user's ``jacobian``
    (dense blocks to their diagonals for ``mode="quasi"``), so the structure is the one
    :func:`jacobian_blocks` reports. ``None`` for the modes without a Jacobian to compute
    (``"picard"``, ``"jacobi"``), which evaluate the plain step.

    Parameters
    ----------
    mode : {"newton", "quasi", "picard", "jacobi"}
    value_and_jacobian : callable or None
        ``value_and_jacobian(x_prev, l) -> (f, J)``, as in :func:`pcrsolve.solve`.
    jacobian_structure : {"dense", "diagonal"}
        What its ``J`` holds.
    xp : module

    Returns
    -------
    callable or None
    """
    if value_and_jacobian is None or mode not in ("newton", "quasi"):
        return None
    diagonal = mode == "quasi" and jacobian_structure == "dense"

    def provider(X: Any, l: Any) -> tuple[Any, Any]:
        out = value_and_jacobian(X, l)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise StepFunctionError(
                "`value_and_jacobian` must return a pair (value, jacobian): the step's "
                f"value f(x_prev, l) and its Jacobian blocks; got {type(out).__name__}"
            )
        F, J = out
        return F, (_diagonal_of(J, X, "value_and_jacobian", xp) if diagonal else J)

    return provider


def check_blocks(J: Any, structure: str, batch: tuple[int, ...], L: int, w: int,
                 dtype: Any, name: str = "jacobian") -> None:
    """Raise :class:`StepFunctionError` unless ``J`` holds ``structure`` blocks of ``dtype``.

    Parameters
    ----------
    J : array or Factored
        What the Jacobian provider returned for all ``L`` steps.
    structure : {"dense", "diagonal", "scalar"}
    batch : tuple of int
        The batch shape of the states.
    L, w : int
    dtype
        The working dtype.
    name : str, default "jacobian"
        The argument that supplied ``J``, for messages.
    """
    if isinstance(J, Factored):
        if structure != "dense":
            raise StepFunctionError(
                f"`{name}` returned Factored blocks, which stand for dense blocks; pass "
                f"jacobian_structure='dense' (got {structure!r})"
            )
        J.check(batch, L, w)
    else:
        tail = (L, *STRUCTURES[structure].block_shape(w))
        if not fits(tuple(J.shape), tail, batch):
            shown = ", ".join(map(str, tail))
            other = {"dense": "diagonal", "diagonal": "dense"}.get(structure)
            hint = (f" If it returns {other} blocks, pass jacobian_structure={other!r}."
                    if other else "")
            raise StepFunctionError(
                f"`{name}` must return shape (..., {shown}) ({structure} blocks, batch dims "
                f"broadcasting to {batch}); got {tuple(J.shape)}.{hint}"
            )
    if J.dtype != dtype:
        raise StepFunctionError(f"`{name}` must return dtype {dtype}; got {J.dtype}")


def all_finite_blocks(J: Any, xp: Any) -> Any:
    """A 0-d bool array: whether every Jacobian block is finite (no host sync)."""
    if isinstance(J, Factored):
        return xp.all(xp.isfinite(J.scale)) & xp.all(xp.isfinite(J.weight))
    return xp.all(xp.isfinite(J))


def finite_sum_blocks(J: Any, xp: Any) -> Any:
    """A 0-d bool array: whether the sum of the Jacobian blocks is finite (no host sync).

    True proves every block finite in one read-only pass
    (:func:`pcrsolve.namespace.finite_sum`), where :func:`all_finite_blocks` writes a
    boolean mask of ``J``'s size and reads it again (``B = 8``, ``L = 2^16``, ``w = 4`` on a
    CPU: 4 ms against 50 ms). False may also mean finite values whose sum overflows: then
    ask :func:`all_finite_blocks`.
    """
    if isinstance(J, Factored):
        return finite_sum(J.scale, xp) & finite_sum(J.weight, xp)
    return finite_sum(J, xp)


def autodiff_pair(mode: str, step: Callable, jacobian: Callable | None, jvp: Callable | None,
                  value_and_jacobian: Callable | None, jacobian_structure: str, backend: Any
                  ) -> tuple[Callable | None, str]:
    """The ``value_and_jacobian`` a Newton loop uses, and the structure of its blocks.

    The user's, if given. With no Jacobian source at all (no ``jacobian``, ``jvp`` or
    ``value_and_jacobian``) in ``"newton"`` or ``"quasi"`` mode, the backend's autodiff
    pair (:meth:`Backend.value_and_jacobian`: the step's value and its blocks from one
    evaluation), if it has one, with the blocks the mode wants. Otherwise None.
    """
    if (value_and_jacobian is None and jacobian is None and jvp is None
            and mode in ("newton", "quasi")):
        want = "dense" if mode == "newton" else "diagonal"
        pair = backend.value_and_jacobian(step, want)
        if pair is not None:
            return pair, want
    return value_and_jacobian, jacobian_structure


def pinned_prefix(state_res: Any, tau: Any, xp: Any) -> tuple[Any, Any]:
    """The converged prefix and the pinned states, per batch element.

    Parameters
    ----------
    state_res : array, shape (..., L)
        ``max_i |R_{l,i}|``: each state's residual.
    tau : array, shape (...)
        The tolerance of each batch element.
    xp : module

    Returns
    -------
    frozen : array of bool, shape (..., L)
        ``l <= p``: the leading states whose residuals are all within ``tau``.
    pinned : array of bool, shape (..., L)
        ``l <= p + 1``: the states set to ``f(X_prev)`` by this iteration (the converged
        prefix and the first state after it).
    """
    bad = xp.astype(~(state_res <= tau[..., None]), xp.int32)
    seen = xp.cumulative_sum(bad, axis=-1)
    frozen = seen == 0
    pinned = (seen - bad) == 0  # no bad state strictly before l
    return frozen, pinned


def newton_step(J: Any, R: Any, frozen: Any, structure: str, method: str, xp: Any,
                gamma: Any = None) -> tuple[Any, str]:
    """The Newton step ``D_l = J_l D_{l-1} + R_l`` with the converged prefix held fixed.

    Parameters
    ----------
    J : array or Factored
        Blocks of ``structure``.
    R : array, shape (..., L, w)
        The residual ``f(X_prev) - X``.
    frozen : array of bool, shape (..., L), or None
        The converged prefix: its residuals are dropped, so ``D = 0`` there and the first
        state after it moves by exactly its residual (``None``: nothing frozen).
    structure : {"dense", "diagonal", "scalar"}
    method : str
        The linear method (``"auto"`` chooses, a backend's fused kernel included).
    xp : module
    gamma : array, shape (...), optional
        Per-element scale of ``J`` (the damped-Jacobian variant; ``None``: undamped).

    Returns
    -------
    D : array, shape (..., L, w)
    method : str
        The linear method that ran.
    """
    Rf = R if frozen is None else xp.where(frozen[..., None], xp.zeros_like(R), R)
    return solve_direction(J, Rf, structure, method, xp, gamma)


def periodic_tail(X: Any, F: Any, x0: Any, head: Any, xp: Any, kmax: int = KMAX) -> Any:
    """A restart of the tail: keep the head, make the next state exact, repeat the last period.

    With ``p`` the length of the converged ``head`` and ``q = p + 1`` (state ``q`` takes
    ``f_q(X_p)``, exact when the head is), the states after ``q`` repeat the last ``K``
    known ones: ``Y_l = Y_{l-K}`` for ``l > q``. ``K`` is the head's return time: the
    ``K <= min(kmax, q)`` with the smallest ``max_i |Y_q - Y_{q-K}|`` (``Y_0 = x0``), the
    smallest ``K`` among those within twice the best. A trajectory settling on a fixed point
    gets ``K = 1`` (``f_q(X_p)`` repeated), one settling on a ``k``-cycle ``K = k``: the
    tail is then the cycle itself, in the phase the head left it, and the residual is
    nonzero only where the head is not yet on the cycle. Everything is a gather: no step
    is evaluated sequentially.

    Parameters
    ----------
    X, F : array, shape (..., L, w)
        A trajectory and ``f_l(X_{l-1})``.
    x0 : array, shape (..., w)
    head : array of bool, shape (..., L)
        The converged prefix (``frozen`` of :func:`pinned_prefix`).
    xp : module
    kmax : int
        The longest period looked for.

    Returns
    -------
    array, shape (..., L, w)
        ``X`` on the head, ``F`` at state ``q``, the repeated period after it.

    Examples
    --------
    >>> import numpy as np
    >>> from pcrsolve.direction import periodic_tail
    >>> X = np.array([0.2, 0.8, 0.2, 0.5, 0.5, 0.5])[:, None]  # a 2-cycle, then a guess
    >>> head = np.array([True, True, False, False, False, False])
    >>> F = np.array([0.2, 0.8, 0.2, 0.8, 0.5, 0.5])[:, None]  # f(X_prev), f swaps 0.2 and 0.8
    >>> periodic_tail(X, F, np.array([0.8]), head, np)[:, 0].tolist()
    [0.2, 0.8, 0.2, 0.8, 0.2, 0.8]
    """
    L, w = X.shape[-2], X.shape[-1]
    dev = device_of(X)
    p = xp.sum(xp.astype(head, xp.int64), axis=-1)
    q = xp.minimum(p + 1, xp.full_like(p, L))
    steps = xp.arange(1, L + 1, dtype=xp.int64, device=dev)
    nxt = steps == q[..., None]
    Y = xp.where(head[..., None] | ~nxt[..., None], X, F)
    # P_l = Y_l for l = 0..L, with Y_0 = x0
    P = xp.concat([xp.broadcast_to(x0[..., None, :], (*X.shape[:-2], 1, w)), Y], axis=-2)
    K = xp.arange(1, min(kmax, L) + 1, dtype=xp.int64, device=dev)
    back = q[..., None] - K
    back = xp.where(back >= 0, back, xp.zeros_like(back))
    Pk = xp.take_along_axis(P, xp.broadcast_to(back[..., None], (*back.shape, w)), axis=-2)
    Pq = xp.take_along_axis(P, xp.broadcast_to(q[..., None, None], (*q.shape, 1, w)), axis=-2)
    d = xp.max(xp.abs(Pk - Pq), axis=-1)
    d = xp.where(K <= q[..., None], d, xp.full_like(d, math.inf))
    near = d <= 2.0 * xp.min(d, axis=-1)[..., None]  # none where d is NaN: K = 1
    period = xp.min(xp.where(near, K, xp.full_like(back, 1 << 30)), axis=-1)
    period = xp.where(period > L, xp.ones_like(period), period)
    offset = xp.remainder(steps - q[..., None] - 1, period[..., None])
    index = xp.where(steps > q[..., None], q[..., None] - period[..., None] + 1 + offset,
                     steps)
    return xp.take_along_axis(P, xp.broadcast_to(index[..., None], (*index.shape, w)),
                              axis=-2)


def _dense(J: Any, xp: Any) -> Any:
    return J.dense(xp) if isinstance(J, Factored) else J


def _shift_down(x: Any, xp: Any) -> Any:
    """``out_l = x_{l-1}`` along axis -2, ``out_1 = 0``."""
    return xp.concat([xp.zeros_like(x[..., :1, :]), x[..., :-1, :]], axis=-2)


def _reduced(J: Any, R: Any, pinned: Any, structure: str, xp: Any) -> tuple[Any, Any]:
    """``(J~, r~)``: the least-squares problem in the states after the pinned ones.

    The pinned states are held fixed: their residuals are dropped and every block that
    multiplies a pinned state is zeroed, so ``Δ = 0`` on the pinned rows and the free
    states' step is that of the reduced problem.
    """
    s = STRUCTURES[structure]
    Jd = _dense(J, xp)
    r = xp.where(pinned[..., None], xp.zeros_like(R), -R)
    prev_pinned = xp.concat([xp.ones_like(pinned[..., :1]), pinned[..., :-1]], axis=-1)
    mask = prev_pinned[(..., *(None,) * s.block_ndim)]
    Jr = xp.where(mask, xp.zeros_like(Jd), Jd)
    return Jr, r


def lm_step(J: Any, R: Any, pinned: Any, lam: Any, structure: str, xp: Any
            ) -> tuple[Any, Any, Any]:
    """The Levenberg–Marquardt step ``(G^T G + λ I) Δ = -G^T r`` on the free states.

    Parameters
    ----------
    J : array or Factored
        Blocks of ``structure`` (a :class:`Factored` is materialised).
    R : array, shape (..., L, w)
        The residual ``f(X_prev) - X`` (so ``r = -R``) at a trajectory whose pinned states
        already hold ``f(X_prev)``.
    pinned : array of bool, shape (..., L)
        The pinned states, held fixed (see :func:`pinned_prefix`).
    lam : array, shape (...)
        ``λ >= 0`` per batch element.
    structure : {"dense", "diagonal", "scalar"}
    xp : module

    Returns
    -------
    delta : array, shape (..., L, w)
        The step of the free states (zero on the pinned ones).
    model : array, shape (...)
        ``½ |r~ + G~ Δ|^2``: the linear model's merit of the free rows after the step.
    base : array, shape (...)
        ``½ |r~|^2``: the free rows' merit before it (the gain ratio's baseline).
    """
    from .tridiagonal import TridiagonalSystem, solve_tridiagonal

    Jr, r = _reduced(J, R, pinned, structure, xp)
    system = TridiagonalSystem.normal_equations(Jr, r, lam, structure=structure,
                                                check_finite=False, xp=xp)
    delta = solve_tridiagonal(system)
    return delta, model_residual(Jr, r, delta, structure, xp), 0.5 * xp.sum(r * r,
                                                                           axis=(-2, -1))


def model_residual(J: Any, r: Any, delta: Any, structure: str, xp: Any) -> Any:
    """``½ |r + G Δ|^2`` per batch element, ``(G Δ)_l = Δ_l - J_l Δ_{l-1}``."""
    s = STRUCTURES[structure]
    m = r + delta - s.apply(J, _shift_down(delta, xp), xp)
    return 0.5 * xp.sum(m * m, axis=(-2, -1))

"""The sequential loop: the reference every parallel solver is tested against.

    x_l = A_l x_{l-1} + b_l,  l = 1..L

L dependent steps of O(w^2) (dense) or O(w) (diagonal, scalar) work each: depth O(L),
work O(L w^2). Fastest when the per-step work hides the per-step overhead (wide blocks)
or L is short.
"""

from __future__ import annotations

from typing import Any

from ..blocks import Structure

__all__ = ["solve_sequential"]


def _unstack(x: Any, axis: int, xp: Any) -> tuple[Any, ...]:
    if hasattr(xp, "unstack"):
        return tuple(xp.unstack(x, axis=axis))
    return tuple(x[(..., i) + (slice(None),) * (-axis - 1)] for i in range(x.shape[axis]))


def solve_sequential(A: Any, b: Any, x0: Any, structure: Structure, xp: Any) -> Any:
    """Solve a forward system step by step.

    Parameters
    ----------
    A : array, shape (..., L, w, w) / (..., L, w) / (..., L)
    b : array, shape (..., L, w)
    x0 : array, shape (..., w)
    structure : Structure
    xp : module

    Returns
    -------
    array, shape (..., L, w)
    """
    if b.shape[-2] == 0:
        return b
    blocks = _unstack(A, structure.step_axis, xp)
    rhs = _unstack(b, -2, xp)
    out = []
    x = x0
    for Al, bl in zip(blocks, rhs, strict=True):
        x = structure.apply(Al, x, xp) + bl
        out.append(x)
    return xp.stack(out, axis=-2)

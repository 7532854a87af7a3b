"""The sequential loop: the reference every parallel solver is tested against.

    x_l = A_l x_{l-1} + b_l,  l = 1..L

L dependent steps of O(w^2) (dense) or O(w) (diagonal, scalar) work each: depth O(L),
work O(L w^2). Fastest when the per-step work hides the per-step overhead (wide blocks)
or L is short.

Being the reference of every speed-up, the loop must be lean: the backend may run it in
its own way (:meth:`Backend.sequential_linear`: Python floats for tiny states, in-place
updates into a preallocated output on NumPy). The generic Array-API loop below is one
multiply (``vecdot`` for dense blocks) and one add per step, and one ``stack`` at the end.
"""

from __future__ import annotations

from typing import Any

from ..backends import get_backend
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
    lean = get_backend(xp).sequential_linear(A, b, x0, structure)
    if lean is not None:
        return lean
    dense = structure.block_ndim == 2
    if structure.block_ndim == 0:
        A = A[..., None]  # once for all steps: a scalar block acts as a diagonal one
    blocks = _unstack(A, -3 if dense else -2, xp)
    rhs = _unstack(b, -2, xp)
    out = []
    append = out.append
    x = x0
    if dense:
        for Al, bl in zip(blocks, rhs, strict=True):
            x = xp.vecdot(Al, x[..., None, :]) + bl
            append(x)
    else:
        for Al, bl in zip(blocks, rhs, strict=True):
            x = Al * x + bl
            append(x)
    return xp.stack(out, axis=-2)

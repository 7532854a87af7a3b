"""Parallel cyclic reduction on the bidiagonal system (recursive doubling).

Algorithm (Hillis & Steele 1986; for block-bidiagonal systems this is what PCR reduces
to, Hockney & Jesshope 1981, and what DeepPCR uses, Danieli et al. 2023):

First fold ``x0`` into the first equation, ``b_1 <- A_1 x0 + b_1``, so every equation maps
the zero state. Equation ``l`` then says ``x_l = A_l x_{l-1} + b_l``. Substituting equation
``l - d`` into equation ``l`` gives ``x_l = (A_l A_{l-d}) x_{l-1-d} + (A_l b_{l-d} + b_l)``:
an equation that skips ``2d`` unknowns. With ``d = 1, 2, 4, ...`` every equation reaches
the boundary after ``ceil(log2 L)`` rounds, and then ``b_l = x_l``.

Only equations that have not yet reached the boundary need their ``A``; in the round
with offset ``d`` that is ``l >= 2d``, so the ``A`` array shrinks as the rounds go.

Cost: ``ceil(log2 L)`` rounds of ``L`` block applications and ``L - 2d`` block products:
O(L log L) work (dense: O(L w^3 log L)), O(log L) depth, memory twice that of (A, b).
"""

from __future__ import annotations

from typing import Any

from ..blocks import Structure

__all__ = ["solve_pcr"]


def fold_x0(A: Any, b: Any, x0: Any, structure: Structure, xp: Any) -> Any:
    """``b`` with ``A_1 x0`` added to its first equation (so the boundary state is zero)."""
    if b.shape[-2] == 0:
        return b
    first = structure.apply(structure.take(A, slice(0, 1)), x0[..., None, :], xp) + b[..., :1, :]
    return xp.concat([first, b[..., 1:, :]], axis=-2)


def solve_pcr(A: Any, b: Any, x0: Any, structure: Structure, xp: Any) -> Any:
    """Solve a forward system by recursive doubling.

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
    L = b.shape[-2]
    if L == 0:
        return b
    b = fold_x0(A, b, x0, structure, xp)
    tail = structure.take(A, slice(1, None))  # A_l for l >= d, here d = 1
    d = 1
    while d < L:
        # b_l <- A_l b_{l-d} + b_l for l >= d
        upd = structure.apply(tail, b[..., : L - d, :], xp) + b[..., d:, :]
        b = xp.concat([b[..., :d, :], upd], axis=-2)
        if 2 * d < L:  # A_l <- A_l A_{l-d}, kept only for l >= 2d
            left = structure.take(tail, slice(d, None))
            right = structure.take(tail, slice(0, L - 2 * d))
            tail = structure.compose(left, right, xp)
        d *= 2
    return b

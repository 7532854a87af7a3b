"""Chunked solve: sequential inside chunks, parallel across chunk boundaries.

Algorithm (the two-level scan of Blelloch 1990, "scan-then-propagate"):

1. Split the ``L`` equations into ``n = ceil(L / C)`` chunks of ``C`` steps (the last one
   padded with zero equations, which change nothing before them). Run the recurrence
   inside every chunk at once, from a zero state, for ``C`` steps: this gives each chunk's
   affine map ``x_end = P_c x_start + y_c`` (``P_c`` the product of its blocks).
2. The chunk maps form a system of length ``n``; solve it with cyclic reduction to get
   the state entering every chunk.
3. Run the recurrence inside every chunk once more, now from its true entering state,
   writing the solution.

Cost: ``2C + 2 log2(n)`` parallel steps; work about twice the sequential loop's plus
``L w^3`` for the chunk products (dense). Memory O(L w) for the solution plus O(n w^2)
for the chunk maps, instead of the O(L w^2) temporaries of PCR/CR: the way past memory.
"""

from __future__ import annotations

import math
from typing import Any

from ..blocks import Structure
from ..namespace import device_of
from .cr import solve_cr
from .sequential import _unstack

__all__ = ["default_chunk_size", "solve_chunked"]


def default_chunk_size(L: int) -> int:
    """``ceil(sqrt(L))``: balances the ``2C`` sequential and ``L/C`` parallel steps."""
    return max(1, math.isqrt(max(L - 1, 0)) + 1)


def solve_chunked(
    A: Any, b: Any, x0: Any, structure: Structure, xp: Any, chunk_size: int | None = None
) -> Any:
    """Solve a forward system in chunks of ``chunk_size`` steps.

    Parameters
    ----------
    A : array, shape (..., L, w, w) / (..., L, w) / (..., L)
    b : array, shape (..., L, w)
    x0 : array, shape (..., w)
    structure : Structure
    xp : module
    chunk_size : int, optional
        Steps per chunk; defaults to :func:`default_chunk_size`.

    Returns
    -------
    array, shape (..., L, w)
    """
    L, w = b.shape[-2], b.shape[-1]
    if L == 0:
        return b
    C = default_chunk_size(L) if chunk_size is None else int(chunk_size)
    n = -(-L // C)
    pad = n * C - L
    if pad:
        A = structure.concat([A, structure.zeros(structure.batch_shape(A), pad, w, A, xp)], xp)
        zeros = xp.zeros((*b.shape[:-2], pad, w), dtype=b.dtype, device=device_of(b))
        b = xp.concat([b, zeros], axis=-2)
    abatch = structure.batch_shape(A)
    Ac = xp.reshape(A, (*abatch, n, C, *structure.block_shape(w)))
    bc = xp.reshape(b, (*b.shape[:-2], n, C, w))
    A_steps = _unstack(Ac, structure.step_axis, xp)  # C arrays of n blocks
    b_steps = _unstack(bc, -2, xp)  # C arrays of shape (..., n, w)

    # 1. every chunk's map from a zero entering state
    y = b_steps[0]
    P = A_steps[0]
    for Aj, bj in zip(A_steps[1:], b_steps[1:], strict=True):
        y = structure.apply(Aj, y, xp) + bj
        P = structure.compose(Aj, P, xp)
    # 2. the states leaving each chunk, in parallel over chunks
    ends = solve_cr(P, y, x0, structure, xp)
    start = xp.concat([x0[..., None, :], ends[..., :-1, :]], axis=-2)
    # 3. the solution, from the true entering states
    out = []
    x = start
    for Aj, bj in zip(A_steps, b_steps, strict=True):
        x = structure.apply(Aj, x, xp) + bj
        out.append(x)
    X = xp.stack(out, axis=-2)  # (..., n, C, w)
    X = xp.reshape(X, (*X.shape[:-3], n * C, w))
    return X[..., :L, :]

"""Work-efficient cyclic reduction on the bidiagonal system (odd-even reduction).

Algorithm (Hockney 1965 for tridiagonal systems; on a bidiagonal system it is the
Blelloch 1990 work-efficient scan of affine maps):

After folding ``x0`` into the first equation (see :mod:`pcrsolve.linear.pcr`), pair the
equations ``(2i, 2i+1)`` (0-based). Substituting the first into the second eliminates the
even unknowns: ``x_{2i+1} = (A_{2i+1} A_{2i}) x_{2i-1} + (A_{2i+1} b_{2i} + b_{2i+1})``, a
system of half the length in the odd unknowns. Solve it recursively, then recover every
even unknown from its own equation, ``x_{2i} = A_{2i} x_{2i-1} + b_{2i}``, in one parallel
step. An odd length leaves the last equation unpaired; it is recovered like the evens.

Cost: ``2 ceil(log2 L)`` parallel steps, about ``L`` block products and ``2L`` block
applications in all: O(L w^3) work for dense blocks, O(L w) for diagonal ones, the same
order as the sequential loop. The method of choice on CPUs and for wider blocks.
"""

from __future__ import annotations

from typing import Any

from ..backends import get_backend
from ..blocks import Structure
from .pcr import fold_x0

__all__ = ["solve_cr", "solve_cr_generic"]

_BASE = 2  # lengths at or below this are finished directly


def _reduce(A: Any, b: Any, structure: Structure, xp: Any) -> Any:
    L = b.shape[-2]
    if L <= _BASE:
        if L == 2:
            second = structure.apply(structure.take(A, slice(1, 2)), b[..., :1, :], xp)
            return xp.concat([b[..., :1, :], second + b[..., 1:, :]], axis=-2)
        return b
    half = L // 2
    A_even = structure.take(A, slice(0, 2 * half, 2))
    A_odd = structure.take(A, slice(1, 2 * half, 2))
    b_even = b[..., 0 : 2 * half : 2, :]
    b_odd = b[..., 1 : 2 * half : 2, :]
    # x_odd = (A_odd A_even) x_{prev odd} + (A_odd b_even + b_odd)
    x_odd = _reduce(
        structure.compose(A_odd, A_even, xp),
        structure.apply(A_odd, b_even, xp) + b_odd,
        structure,
        xp,
    )
    # x_{2i} = A_{2i} x_{2i-1} + b_{2i} for 2i >= 2 (x_0 is already b_0)
    n_even = (L + 1) // 2
    rest = structure.apply(
        structure.take(A, slice(2, L, 2)), x_odd[..., : n_even - 1, :], xp
    ) + b[..., 2:L:2, :]
    x_even = xp.concat([b[..., :1, :], rest], axis=-2)
    if L % 2:
        pad = xp.zeros_like(x_even[..., :1, :])
        x_odd = xp.concat([x_odd, pad], axis=-2)
    both = xp.stack([x_even, x_odd], axis=-2)  # (..., n_even, 2, w)
    both = xp.reshape(both, (*both.shape[:-3], 2 * n_even, both.shape[-1]))
    return both[..., :L, :]


def solve_cr(A: Any, b: Any, x0: Any, structure: Structure, xp: Any) -> Any:
    """Solve a forward system by cyclic (odd-even) reduction.

    The backend may run the reduction in its own way
    (:meth:`~pcrsolve.backends.Backend.cyclic_reduction`: on NumPy, preallocated buffers
    and in-place ufuncs); otherwise :func:`solve_cr_generic` runs it on the Array API.

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
    lean = get_backend(xp).cyclic_reduction(A, b, x0, structure)
    if lean is not None:
        return lean
    return solve_cr_generic(A, b, x0, structure, xp)


def solve_cr_generic(A: Any, b: Any, x0: Any, structure: Structure, xp: Any) -> Any:
    """Cyclic reduction written against the Array API only (the reference of every backend's
    :meth:`~pcrsolve.backends.Backend.cyclic_reduction`).

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
    return _reduce(A, fold_x0(A, b, x0, structure, xp), structure, xp)

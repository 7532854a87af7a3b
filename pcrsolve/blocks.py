"""Block algebra for the three structures of the coefficient blocks ``A_l``.

A structure knows the shape of one block and how to apply, compose, transpose and
slice blocks along the step axis:

============  =====================  ==================  =====================
structure     ``A`` shape            apply ``A_l x``     compose ``A_2 A_1``
============  =====================  ==================  =====================
``dense``     ``(..., L, w, w)``     matrix-vector        matrix-matrix, O(w^3)
``diagonal``  ``(..., L, w)``        elementwise, O(w)    elementwise, O(w)
``scalar``    ``(..., L)``           broadcast, O(w)      elementwise, O(1)
============  =====================  ==================  =====================
"""

from __future__ import annotations

from typing import Any

from .namespace import device_of

__all__ = ["DENSE", "DIAGONAL", "SCALAR", "STRUCTURES", "Structure", "fits"]


def fits(shape: tuple[int, ...], tail: tuple[int, ...], batch: tuple[int, ...]) -> bool:
    """Whether ``shape`` is ``(*head, *tail)`` with ``head`` broadcasting to ``batch``.

    Parameters
    ----------
    shape : tuple of int
        The shape to test.
    tail : tuple of int
        The trailing dims it must end with (e.g. ``(L, w, w)``).
    batch : tuple of int
        The batch shape its leading dims must broadcast to.
    """
    n = len(tail)
    if len(shape) < n or tuple(shape[len(shape) - n:]) != tuple(tail):
        return False
    head = shape[: len(shape) - n]
    return len(head) <= len(batch) and all(
        a in (1, b) for a, b in zip(head[::-1], batch[::-1], strict=False))


class Structure:
    """Operations on coefficient blocks of one structure, written against the Array API.

    Parameters
    ----------
    name : {"dense", "diagonal", "scalar"}
    block_ndim : int
        Number of trailing axes of one block (2, 1 or 0); the step axis precedes them.
    """

    def __init__(self, name: str, block_ndim: int) -> None:
        self.name = name
        self.block_ndim = block_ndim

    def __repr__(self) -> str:
        return f"Structure({self.name!r})"

    @property
    def step_axis(self) -> int:
        """The (negative) axis of ``A`` that runs over steps."""
        return -1 - self.block_ndim

    def block_shape(self, w: int) -> tuple[int, ...]:
        """The shape of one block for state width ``w``."""
        return (w, w)[: self.block_ndim] if self.block_ndim else ()

    def batch_shape(self, A: Any) -> tuple[int, ...]:
        """The leading batch shape of ``A``."""
        return tuple(A.shape[: A.ndim + self.step_axis])

    def take(self, A: Any, index: slice | int) -> Any:
        """``A`` indexed along the step axis (``index`` a slice or an integer)."""
        return A[(..., index) + (slice(None),) * self.block_ndim]

    def apply(self, A: Any, x: Any, xp: Any) -> Any:
        """``A_l x_l`` for every step at once; ``x`` has shape ``(..., n, w)``."""
        if self.block_ndim == 2:
            return xp.matmul(A, x[..., None])[..., 0]
        if self.block_ndim == 1:
            return A * x
        return A[..., None] * x

    def compose(self, A2: Any, A1: Any, xp: Any) -> Any:
        """The block product ``A2 @ A1`` step by step."""
        if self.block_ndim == 2:
            return xp.matmul(A2, A1)
        return A2 * A1

    def transpose(self, A: Any, xp: Any) -> Any:
        """Every block transposed (a no-op for diagonal and scalar blocks)."""
        if self.block_ndim == 2:
            return xp.matrix_transpose(A)
        return A

    def flip(self, A: Any, xp: Any) -> Any:
        """``A`` reversed along the step axis."""
        return xp.flip(A, axis=self.step_axis)

    def concat(self, parts: list[Any], xp: Any) -> Any:
        """Concatenate blocks along the step axis."""
        return xp.concat(parts, axis=self.step_axis)

    def zeros(self, batch: tuple[int, ...], n: int, w: int, like: Any, xp: Any) -> Any:
        """``n`` zero blocks with the dtype and device of ``like``."""
        shape = (*batch, n, *self.block_shape(w))
        return xp.zeros(shape, dtype=like.dtype, device=device_of(like))

    def to_dense(self, A: Any, w: int, xp: Any) -> Any:
        """The blocks as dense ``(..., L, w, w)`` matrices."""
        if self.block_ndim == 2:
            return A
        eye = xp.eye(w, dtype=A.dtype, device=device_of(A))
        if self.block_ndim == 1:
            return A[..., None] * eye
        return A[..., None, None] * eye


DENSE = Structure("dense", 2)
DIAGONAL = Structure("diagonal", 1)
SCALAR = Structure("scalar", 0)
STRUCTURES = {s.name: s for s in (DENSE, DIAGONAL, SCALAR)}

"""Random block-bidiagonal problems and an independent NumPy float64 reference loop."""

from __future__ import annotations

import numpy as np

STRUCTURES = ("dense", "diagonal", "scalar")


def random_system(
    rng: np.random.Generator,
    structure: str,
    L: int,
    w: int,
    batch: tuple[int, ...] = (),
    a_batch: tuple[int, ...] | None = None,
    scale: float = 0.9,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, b, x0)`` with contracting-on-average blocks; ``A`` may have its own batch."""
    a_batch = batch if a_batch is None else a_batch
    if structure == "dense":
        A = scale * rng.standard_normal((*a_batch, L, w, w)) / np.sqrt(w)
    elif structure == "diagonal":
        A = rng.uniform(-scale, scale, (*a_batch, L, w))
    else:
        A = rng.uniform(-scale, scale, (*a_batch, L))
    b = rng.standard_normal((*batch, L, w))
    x0 = rng.standard_normal((*batch, w))
    return A, b, x0


def reference_solve(
    A: np.ndarray, b: np.ndarray, x0: np.ndarray | None, structure: str, reverse: bool = False
) -> np.ndarray:
    """The recurrence run step by step in float64, written independently of pcrsolve."""
    A = np.asarray(A, np.float64)
    b = np.asarray(b, np.float64)
    L, w = b.shape[-2:]
    if structure == "diagonal":
        A = A[..., None] * np.eye(w)
    elif structure == "scalar":
        A = A[..., None, None] * np.eye(w)
    batch = np.broadcast_shapes(A.shape[:-3], b.shape[:-2],
                                () if x0 is None else np.shape(x0)[:-1])
    x = np.zeros((*batch, w)) if x0 is None else np.broadcast_to(np.asarray(x0, np.float64),
                                                                  (*batch, w))
    out = np.zeros((*batch, L, w))
    order = range(L - 1, -1, -1) if reverse else range(L)
    for l in order:
        x = np.einsum("...ij,...j->...i", A[..., l, :, :], x) + b[..., l, :]
        out[..., l, :] = x
    return out


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """``max|x - ref| / max(1, max|ref|)``."""
    assert x.shape == ref.shape, (x.shape, ref.shape)
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))

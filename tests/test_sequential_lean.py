"""The lean sequential loop (Backend.sequential_linear) against an independent loop.

The NumPy backend runs ``method="sequential"`` on Python floats for a few width-1 chains
and with in-place ufuncs into a preallocated output otherwise; both must give the
recurrence's answer, for every structure, batch shape, direction and dtype, and must not
be slower than the plain loop a user writes.
"""

from __future__ import annotations

import numpy as np
import pytest
from pcrsolve.backends import get_backend

import pcrsolve
from pcrsolve.blocks import STRUCTURES


def reference_loop(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                   reverse: bool) -> np.ndarray:
    """``x_l = A_l x_{l-1} + b_l`` in float64, one chain and one step at a time."""
    A, b, x0 = (np.asarray(a, dtype=np.float64) for a in (A, b, x0))
    batch = np.broadcast_shapes(b.shape[:-2], x0.shape[:-1],
                                A.shape[:A.ndim - {"dense": 3, "diagonal": 2,
                                                   "scalar": 1}[structure]])
    L, w = b.shape[-2], b.shape[-1]
    nblock = {"dense": 2, "diagonal": 1, "scalar": 0}[structure]
    A = np.broadcast_to(A, (*batch, L, *A.shape[A.ndim - nblock:]))
    b = np.broadcast_to(b, (*batch, L, w))
    x0 = np.broadcast_to(x0, (*batch, w))
    out = np.zeros((*batch, L, w))
    order = range(L - 1, -1, -1) if reverse else range(L)
    for i in np.ndindex(*batch):
        x = x0[i].copy()
        for l in order:
            Al = A[i][l]
            if structure == "dense":
                x = np.array([sum(Al[r, c] * x[c] for c in range(w)) for r in range(w)])
            else:
                x = Al * x
            x = x + b[i][l]
            out[i][l] = x
    return out


def make(structure: str, batch: tuple[int, ...], L: int, w: int, seed: int,
         a_batch: tuple[int, ...] | None = None):
    rng = np.random.default_rng(seed)
    a_batch = batch if a_batch is None else a_batch
    if structure == "dense":
        A = rng.standard_normal((*a_batch, L, w, w)) / np.sqrt(2 * w)
    elif structure == "diagonal":
        A = rng.uniform(-0.95, 0.95, (*a_batch, L, w))
    else:
        A = rng.uniform(-0.95, 0.95, (*a_batch, L))
    return A, rng.standard_normal((*batch, L, w)), rng.standard_normal((*batch, w))


def tolerance(dtype: str, L: int) -> float:
    # contracting blocks: rounding errors do not grow with L beyond a modest factor
    return 50 * float(np.finfo(dtype).eps) * (1 + np.log2(L))


CASES = [
    # (structure, batch, w): width-1 chains (float loop), wide states and batches (ufuncs)
    ("scalar", (), 1), ("scalar", (3,), 1), ("scalar", (2, 3), 1), ("scalar", (5,), 2),
    ("diagonal", (), 1), ("diagonal", (2,), 4), ("diagonal", (), 3),
    ("dense", (), 1), ("dense", (2,), 3), ("dense", (), 2), ("dense", (2, 2), 4),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("structure", "batch", "w"), CASES)
def test_lean_sequential_matches_reference_loop(structure, batch, w, reverse, dtype):
    L = 97
    A, b, x0 = make(structure, batch, L, w, seed=len(batch) * 10 + w)
    system = pcrsolve.BidiagonalSystem(A.astype(dtype), b.astype(dtype), x0.astype(dtype),
                                       structure=structure, reverse=reverse)
    x = pcrsolve.solve_linear(system, method="sequential")
    assert x.dtype == np.dtype(dtype) and x.shape == (*batch, L, w)
    ref = reference_loop(A.astype(dtype), b.astype(dtype), x0.astype(dtype), structure,
                         reverse)
    err = np.max(np.abs(x - ref)) / np.max(np.abs(ref))
    assert err <= tolerance(dtype, L), err


@pytest.mark.parametrize(("structure", "batch", "w"), CASES)
def test_numpy_backend_hook_is_used_and_agrees(structure, batch, w):
    # the hook itself (not only through solve_linear), on forward arrays
    A, b, x0 = make(structure, batch, 33, w, seed=3)
    hook = get_backend(np).sequential_linear(A, b, x0, STRUCTURES[structure])
    assert hook is not None
    np.testing.assert_allclose(hook, reference_loop(A, b, x0, structure, False),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_broadcast_blocks_shared_across_the_batch(structure):
    # A without batch dimensions, b and x0 with them (A broadcasts)
    A, b, x0 = make(structure, (3,), 50, 2, seed=5, a_batch=())
    system = pcrsolve.BidiagonalSystem(A, b, x0, structure=structure)
    x = pcrsolve.solve_linear(system, method="sequential")
    np.testing.assert_allclose(x, reference_loop(A, b, x0, structure, False), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_generic_array_api_loop_matches_reference(structure):
    xps = pytest.importorskip("array_api_strict")
    A, b, x0 = make(structure, (2,), 40, 3 if structure != "scalar" else 1, seed=7)
    system = pcrsolve.BidiagonalSystem(xps.asarray(A), xps.asarray(b), xps.asarray(x0),
                                       structure=structure, reverse=True)
    x = np.asarray(pcrsolve.solve_linear(system, method="sequential"))
    np.testing.assert_allclose(x, reference_loop(A, b, x0, structure, True), rtol=1e-12,
                               atol=1e-12)


def test_empty_system():
    system = pcrsolve.BidiagonalSystem(np.zeros((0,)), np.zeros((0, 1)), structure="scalar")
    assert pcrsolve.solve_linear(system, method="sequential").shape == (0, 1)


def test_non_finite_values_propagate():
    A = np.full(10, 1e200)
    system = pcrsolve.BidiagonalSystem(A, np.ones((10, 1)), structure="scalar")
    with np.errstate(over="ignore", invalid="ignore"):
        x = pcrsolve.solve_linear(system, method="sequential")
    assert np.isinf(x[-1, 0]) or np.isnan(x[-1, 0])


class _CountingNumpy:
    """Stands for ``numpy`` inside the NumPy backend and counts the calls made through it."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


@pytest.mark.parametrize(("structure", "w", "per_step"),
                         [("scalar", 1, 0), ("diagonal", 1, 0), ("diagonal", 4, 2),
                          ("dense", 4, 2), ("scalar", 3, 2)])
def test_sequential_loop_is_lean(monkeypatch, structure, w, per_step):
    # the reference of every speed-up must be lean (the old generic loop was ~15x slower
    # than a plain float loop): width-1 chains run on Python floats (no NumPy call per
    # step), wider states make one multiply/vecdot and one in-place add per step
    from pcrsolve.backends import numpy_backend

    counter = _CountingNumpy()
    monkeypatch.setattr(numpy_backend, "np", counter)
    L = 4096
    A, b, x0 = make(structure, (2,), L, w, seed=11)
    system = pcrsolve.BidiagonalSystem(A, b, x0, structure=structure)
    x = pcrsolve.solve_linear(system, method="sequential")
    assert counter.calls > 0  # the backend's loop ran, not the generic one
    assert counter.calls <= per_step * L + 40, counter.calls
    np.testing.assert_allclose(x, reference_loop(A, b, x0, structure, False), rtol=1e-12,
                               atol=1e-12)

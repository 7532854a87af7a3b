"""The NumPy backend's lean cyclic reduction against the generic Array-API one and the loop.

:meth:`NumpyBackend.cyclic_reduction` runs the algorithm of
:func:`pcrsolve.linear.cr.solve_cr_generic` on reused buffers with in-place ufuncs (the path
``method="cr"`` takes on NumPy, with or without numba); a fast path is never a different
answer, so every case here is compared with the generic reduction and the float64 loop.
"""

from __future__ import annotations

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from conftest import tolerance
from linear_problems import STRUCTURES, random_system, reference_solve, rel_err
from pcrsolve.backends.numpy_backend import NumpyBackend, cyclic_reduction

import pcrsolve
from pcrsolve.blocks import STRUCTURES as BLOCKS
from pcrsolve.linear.cr import solve_cr_generic

LENGTHS = (1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 64, 97)
NDIM = {"dense": 2, "diagonal": 1, "scalar": 0}


@pytest.mark.parametrize("a_batch", [(2,), (1,), ()], ids=["A-batched", "A-1", "A-shared"])
@pytest.mark.parametrize("w", [1, 3])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_lean_reduction_matches_generic_and_loop(rng, structure, w, a_batch):
    for L in LENGTHS:
        A, b, x0 = random_system(rng, structure, L, w, batch=(2,), a_batch=a_batch, scale=1.2)
        before = [a.copy() for a in (A, b, x0)]
        x = cyclic_reduction(A, b, x0, NDIM[structure])
        assert x.shape == (2, L, w)
        ref = reference_solve(A, b, x0, structure)
        assert rel_err(x, ref) <= tolerance("float64", L), L
        generic = solve_cr_generic(A, b, x0, BLOCKS[structure], xnp)
        assert rel_err(x, np.asarray(generic)) <= tolerance("float64", L), L
        for a, a0 in zip((A, b, x0), before, strict=True):  # inputs untouched
            np.testing.assert_array_equal(a, a0)
        assert not any(np.shares_memory(x, a) for a in (A, b, x0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_lean_reduction_keeps_the_dtype(rng, structure, dtype):
    A, b, x0 = random_system(rng, structure, 37, 2, batch=(3,))
    A, b, x0 = (a.astype(dtype) for a in (A, b, x0))
    x = cyclic_reduction(A, b, x0, NDIM[structure])
    assert x.dtype == dtype
    assert rel_err(x, reference_solve(A, b, x0, structure)) <= tolerance(dtype, 37)


@pytest.mark.parametrize("structure", ["scalar", "diagonal"])
@pytest.mark.parametrize("scale", [0.0, 1e-3, 1.0, 1.5], ids=["zero", "tiny", "one", "growth"])
def test_lean_reduction_extreme_coefficients(rng, structure, scale):
    L, w = 200, 3
    A, b, x0 = random_system(rng, structure, L, w, batch=(2,))
    A = np.sign(A) * scale if scale in (0.0, 1.0) else A / 0.9 * scale
    if scale == 1.5:  # growth: |a| in [1, 1.5], still finite after 200 steps in float64
        A = np.sign(A) * (1.0 + np.abs(A) / 3.0)
    x = cyclic_reduction(A, b, x0, NDIM[structure])
    ref = reference_solve(A, b, x0, structure)
    assert np.all(np.isfinite(x))
    assert rel_err(x, ref) <= tolerance("float64", L, factor=500)


def test_lean_reduction_propagates_nan_like_the_generic_one(rng):
    L, w = 33, 2
    A, b, x0 = random_system(rng, "diagonal", L, w, batch=(2,))
    b[0, 10, 1] = np.nan
    A[1, 20, 0] = np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        x = cyclic_reduction(A, b, x0, 1)
        generic = np.asarray(solve_cr_generic(A, b, x0, BLOCKS["diagonal"], xnp))
    np.testing.assert_array_equal(np.isfinite(x), np.isfinite(generic))
    assert np.all(np.isfinite(x[0, :10])) and np.all(np.isfinite(x[1, :20]))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lean_reduction_on_views(rng, structure):
    # broadcast b, reversed (negative-stride) A and b, a Fortran-ordered x0
    L, w = 29, 3
    A, b, x0 = random_system(rng, structure, L, w, batch=(2,))
    b1 = np.broadcast_to(b[:1], b.shape)
    Ar = A[:, ::-1]
    br = b1[:, ::-1]
    x0f = np.asfortranarray(x0)
    x = cyclic_reduction(Ar, br, x0f, NDIM[structure])
    ref = reference_solve(np.ascontiguousarray(Ar), np.ascontiguousarray(br), x0, structure)
    assert rel_err(x, ref) <= tolerance("float64", L)


def test_solve_linear_cr_takes_the_lean_reduction_on_numpy(rng, monkeypatch):
    calls = []
    original = NumpyBackend.cyclic_reduction

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(NumpyBackend, "cyclic_reduction", counting)
    A, b, x0 = random_system(rng, "scalar", 50, 2, batch=(2,))
    system = pcrsolve.BidiagonalSystem(A, b, x0, structure="scalar", reverse=True)
    x = pcrsolve.solve_linear(system, method="cr")
    assert calls
    assert rel_err(x, reference_solve(A, b, x0, "scalar", reverse=True)) <= tolerance("float64", 50)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_lean_reduction_in_segments(rng, monkeypatch, structure):
    # tiny segments: many of them, odd tails, a segment of one step at the end
    from pcrsolve.backends import numpy_backend

    for seg_bytes in (1, 16, 24 * 8, 7 * 24 * 8):
        monkeypatch.setattr(numpy_backend, "SEGMENT_BYTES", seg_bytes)
        for L in (1, 2, 3, 29, 64, 97):
            A, b, x0 = random_system(rng, structure, L, 3, batch=(2, 4), a_batch=(1, 4),
                                     scale=1.2)
            x = cyclic_reduction(A, b, x0, NDIM[structure])
            ref = reference_solve(A, b, x0, structure)
            assert rel_err(x, ref) <= tolerance("float64", L), (seg_bytes, L)

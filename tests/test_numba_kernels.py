"""The compiled CPU kernels (numba) against the float64 reference loop, and the fallback.

``method="kernel"`` on NumPy runs :mod:`pcrsolve.backends.numba_kernels`; every structure,
widths 1-5, 16 and 64, batches (broadcast ``A`` and ``x0``), both directions, odd and prime
lengths, L = 1 and 2, float32/float64, both thread strategies (batch ``prange`` and the
chunked scan across threads), blocks near ``|a| = 1`` and growing ones. Without numba the
same systems go through the generic Array-API path (checked in a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tolerance
from linear_problems import random_system, reference_solve, rel_err

import pcrsolve

pytest.importorskip("numba")
from pcrsolve.backends import numba_kernels

NDIM = {"dense": 2, "diagonal": 1, "scalar": 0}


def _solve(A, b, x0, structure, reverse, batch, dtype, chunk):
    return numba_kernels.solve(A.astype(dtype), b.astype(dtype), x0.astype(dtype),
                               NDIM[structure], reverse, batch, np.dtype(dtype), chunk)


@pytest.mark.parametrize("chunk", [False, True], ids=["batch", "chunked"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("w", [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_kernels_match_reference(rng, structure, w, reverse, dtype, chunk):
    for L in (1, 2, 37, 101):
        A, b, x0 = random_system(rng, structure, L, w, batch=(3,), a_batch=(1,))
        x = _solve(A, b, x0, structure, reverse, (3,), dtype, chunk)
        assert x.shape == (3, L, w) and x.dtype == np.dtype(dtype)
        ref = reference_solve(A.astype(dtype), b.astype(dtype), x0.astype(dtype), structure,
                              reverse)
        assert rel_err(x.astype(np.float64), ref) <= tolerance(dtype, L), L


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
@pytest.mark.parametrize("w", [1, 3])
def test_one_thread_and_parallel_batch_kernels_agree(rng, monkeypatch, structure, w):
    # small work runs on the calling thread (no parallel region); force both ways
    A, b, x0 = random_system(rng, structure, 41, w, batch=(3,), a_batch=(1,))
    ref = reference_solve(A, b, x0, structure)
    for min_work in (0, 1 << 62):
        monkeypatch.setattr(numba_kernels, "PARALLEL_MIN_WORK", min_work)
        x = _solve(A, b, x0, structure, False, (3,), "float64", False)
        assert rel_err(x, ref) <= tolerance("float64", 41)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("chunk", [False, True], ids=["batch", "chunked"])
@pytest.mark.parametrize("case", ["near_one", "growth", "contracting"])
def test_long_width_one_chains_split_scan(rng, case, chunk, reverse):
    # long enough that the 4-way transfer of a piece realigns its streams, plus tails
    L = 8 * (512 + numba_kernels.SUB_ALIGN) * 4 + 13  # odd
    if case == "near_one":  # running products do not decay: a naive fix-up goes wrong
        A = np.where(rng.random((1, L)) < 0.5, -1.0, 1.0) * (1 - 1e-9)
    elif case == "growth":  # |a| > 1 over short stretches, bounded overall
        A = rng.uniform(0.9, 1.1, (1, L)) * np.where(np.arange(L) % 64 < 32, 1.02, 1 / 1.02)
    else:
        A = rng.uniform(-0.9, 0.9, (1, L))
    b = rng.standard_normal((1, L, 1))
    x0 = rng.standard_normal((1, 1))
    for structure, a in (("scalar", A), ("diagonal", A[..., None])):
        x = _solve(a, b, x0, structure, reverse, (1,), "float64", chunk)
        ref = reference_solve(a, b, x0, structure, reverse)
        assert rel_err(x, ref) <= tolerance("float64", L), structure


@pytest.mark.parametrize("w", [64])
def test_wide_dense_and_broadcasts(rng, w):
    L = 23  # prime
    A, b, x0 = random_system(rng, "dense", L, w, batch=(2, 3), a_batch=(3,))
    x0 = x0[:1]  # (1, 3, w) broadcasts against (2, 3)
    for reverse in (False, True):
        system = pcrsolve.BidiagonalSystem(A, b, x0, reverse=reverse)
        x = pcrsolve.solve_linear(system, method="kernel")
        assert rel_err(x, reference_solve(A, b, x0, "dense", reverse)) \
            <= tolerance("float64", L)


def test_kernel_through_solve_linear_keeps_dtype_and_default_x0(rng):
    A, b, _ = random_system(rng, "diagonal", 50, 3, batch=(2,))
    system = pcrsolve.BidiagonalSystem(A.astype(np.float16), b.astype(np.float16),
                                       structure="diagonal")
    x = pcrsolve.solve_linear(system, method="kernel")
    assert x.dtype == np.float16 and x.shape == (2, 50, 3)
    system = pcrsolve.BidiagonalSystem(A, b, structure="diagonal")
    np.testing.assert_allclose(pcrsolve.solve_linear(system, method="kernel"),
                               reference_solve(A, b, None, "diagonal"), rtol=1e-12, atol=1e-12)
    empty = pcrsolve.BidiagonalSystem(A[:, :0], b[:, :0], structure="diagonal")
    assert pcrsolve.solve_linear(empty, method="kernel").shape == (2, 0, 3)


def _run(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_numba_the_generic_path_answers():
    code = """
import sys
sys.modules["numba"] = None  # as if numba were not installed
import numpy as np, pcrsolve
from pcrsolve.backends import get_backend
rng = np.random.default_rng(0)
A = rng.uniform(-0.9, 0.9, (2, 4099)); b = rng.standard_normal((2, 4099, 1))
s = pcrsolve.BidiagonalSystem(A, b, structure="scalar", reverse=True)
assert get_backend(s.xp).fast_linear(s) is None
assert pcrsolve.choose_method(s) != "kernel"
x = pcrsolve.solve_linear(s)
y = pcrsolve.solve_linear(s, method="sequential")
assert np.max(np.abs(x - y)) < 1e-12
try:
    pcrsolve.solve_linear(s, method="kernel")
except pcrsolve.InputError as e:
    assert "numba" in str(e)
else:
    raise AssertionError("kernel without numba")
print("ok")
"""
    assert _run(code).strip() == "ok"


def test_linear_suite_passes_without_numba():
    # the reference tests of every method, auto included, on the generic path
    here = os.path.dirname(__file__)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         os.path.join(here, "test_linear.py"), "-k", "numpy and not property"],
        capture_output=True, text=True, env={**os.environ, "PCRSOLVE_NO_NUMBA": "1"},
        timeout=600, cwd=here)
    assert done.returncode == 0, done.stdout[-3000:]


def test_numba_is_imported_only_when_a_kernel_runs():
    code = """
import sys, numpy as np, pcrsolve
s = pcrsolve.BidiagonalSystem(np.full(8, 0.5), np.ones((8, 1)), structure="scalar")
pcrsolve.solve_linear(s)  # short: the loop, no kernel
assert "numba" not in sys.modules, "numba imported for a short solve"
pcrsolve.solve_linear(s, method="kernel")
assert "numba" in sys.modules
print("ok")
"""
    assert _run(code).strip() == "ok"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("structure,w", [("scalar", 1), ("diagonal", 1), ("diagonal", 3),
                                         ("scalar", 3)])
@pytest.mark.parametrize("case", ["decaying", "flat"])
def test_scan_decay_then_prefix_rescan_is_the_loop(rng, structure, w, reverse, case):
    # the first pass of a distributed solve on a rank that does not know its entering state
    L = 3000
    shape = (2, L) if structure == "scalar" else (2, L, w)
    if case == "decaying":  # mean log|a| = log(0.95) - 1: the product is < 2^-960 in ~650
        A = rng.uniform(-0.95, 0.95, shape)
    else:  # |a| = 1: the entering state matters to the end
        A = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    b = rng.standard_normal((2, L, w))
    z = rng.standard_normal((2, w))
    nd = NDIM[structure]
    x, A_seg, b_seg, K = numba_kernels.scan_decay(A, b, nd, reverse, (2,), np.dtype("float64"))
    ref = reference_solve(A, b, z, structure, reverse)
    # the map of the whole segment
    last = ref[:, 0] if reverse else ref[:, -1]
    gain = A_seg if structure == "diagonal" else A_seg[:, None]
    assert rel_err(gain * z + b_seg, last) <= tolerance("float64", L)
    if case == "decaying":
        assert 300 <= K <= 1000 and np.all(A_seg == 0.0), K  # only the prefix is redone
    else:
        assert K == L
    steps = slice(L - K, L) if reverse else slice(0, K)
    x[:, steps] = numba_kernels.solve(A[:, steps], b[:, steps], z, nd, reverse, (2,),
                                      np.dtype("float64"))
    assert rel_err(x, ref) <= tolerance("float64", L)

"""Which compiled kernel ``numba_kernels.solve`` dispatches to, and that its answer is the loop's.

Kills host-code mutants of ``scripts/mutation.py`` in ``backends/numba_kernels.py`` that
every answer test misses because all the kernels are exact: the documented dispatch
(``chunk_threads``: by default the chunked scan across threads runs when the batch has
fewer elements than threads and chains are at least ``CHUNK_MIN_STEPS`` long for width-1
chains, ``CHUNK_MIN_STEPS_WIDE`` for wider elementwise ones, never for dense blocks, more
than one thread) is observed by wrapping the kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from linear_problems import reference_solve

pytest.importorskip("numba")
from pcrsolve.backends import numba_kernels

NDIM = {"dense": 2, "diagonal": 1, "scalar": 0}
KERNELS = tuple(n for n in ("w1_batch", "w1_serial", "w1_chunked", "ew_batch", "ew_serial",
                            "ew_chunked", "dense_batch", "dense_serial")
                if hasattr(numba_kernels, n))


def expected(family: str, chunk: bool) -> set[str]:
    """The kernels that may run: the chunked scan, or one chain per thread / the caller's."""
    if chunk:
        return {f"{family}_chunked"}
    return {f"{family}_batch", f"{family}_serial"}


@pytest.fixture
def calls(monkeypatch):
    """Names of the kernels ``solve`` calls, in order (each still runs)."""
    seen: list[str] = []
    for name in KERNELS:
        real = getattr(numba_kernels, name)

        def spy(*args, _real=real, _name=name):
            seen.append(_name)
            return _real(*args)

        monkeypatch.setattr(numba_kernels, name, spy)
    return seen


def system(rng, structure, batch, L, w):
    shape = {"dense": (*batch, L, w, w), "diagonal": (*batch, L, w),
             "scalar": (*batch, L)}[structure]
    A = rng.uniform(-0.9, 0.9, shape) / (np.sqrt(w) if structure == "dense" else 1.0)
    return A, rng.standard_normal((*batch, L, w)), rng.standard_normal((*batch, w))


CASES = [("scalar", 1, "w1"), ("diagonal", 1, "w1"), ("diagonal", 3, "ew"),
         ("scalar", 3, "ew"), ("dense", 2, "dense")]


@pytest.mark.parametrize("structure,w,family", CASES)
def test_default_dispatch_chunks_only_long_chains_of_a_small_batch(rng, calls, monkeypatch,
                                                                    structure, w, family):
    T = numba_kernels.num_threads()
    L = 40
    monkeypatch.setattr(numba_kernels, "CHUNK_MIN_STEPS", L)  # this length is long enough
    monkeypatch.setattr(numba_kernels, "CHUNK_MIN_STEPS_WIDE", L)
    for batch, L_run in (((1,), L), ((1,), L - 1), ((max(T, 1),), L)):
        calls.clear()
        A, b, x0 = system(rng, structure, batch, L_run, w)
        x = numba_kernels.solve(A, b, x0, NDIM[structure], False, batch, np.dtype("float64"))
        ref = reference_solve(A, b, x0, structure)
        np.testing.assert_allclose(x, ref, rtol=1e-12, atol=1e-12)
        chunk = (family != "dense" and T > 1 and batch[0] < T and L_run >= L)
        assert len(calls) == 1 and calls[0] in expected(family, chunk), (batch, L_run, T)


@pytest.mark.parametrize("structure,w,family", CASES)
@pytest.mark.parametrize("force", [True, False])
def test_forced_dispatch(rng, calls, structure, w, family, force):
    T = numba_kernels.num_threads()
    A, b, x0 = system(rng, structure, (2,), 30, w)
    x = numba_kernels.solve(A, b, x0, NDIM[structure], True, (2,), np.dtype("float64"),
                            chunk_threads=force)
    ref = reference_solve(A, b, x0, structure, reverse=True)
    np.testing.assert_allclose(x, ref, rtol=1e-12, atol=1e-12)
    chunk = force and family != "dense" and T > 1
    assert len(calls) == 1 and calls[0] in expected(family, chunk), calls


@pytest.mark.parametrize("structure,w,family", CASES)
def test_shipped_thresholds(rng, calls, structure, w, family):
    # width-1 chains split from CHUNK_MIN_STEPS steps; wider ones and dense blocks never
    T = numba_kernels.num_threads()
    L = numba_kernels.CHUNK_MIN_STEPS
    assert numba_kernels.CHUNK_MIN_STEPS_WIDE > 1 << 40  # measured: never pays here
    for L_run in (L - 1, L):
        calls.clear()
        A, b, x0 = system(rng, structure, (1,), L_run, w)
        x = numba_kernels.solve(A, b, x0, NDIM[structure], False, (1,), np.dtype("float64"))
        np.testing.assert_allclose(x, reference_solve(A, b, x0, structure), rtol=1e-10,
                                   atol=1e-10)
        chunk = family == "w1" and T > 1 and L_run >= L
        assert len(calls) == 1 and calls[0] in expected(family, chunk), (L_run, calls)

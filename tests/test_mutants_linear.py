"""Tests that kill the surviving mutants of ``scripts/mutation.py`` in ``pcrsolve/linear/``.

Each compares with an independent reference (a float64 loop written here, NumPy slicing,
or the documented formula) on seeded random inputs.
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from conftest import tolerance
from linear_problems import reference_solve

import pcrsolve
from pcrsolve.linear.chunked import default_chunk_size
from pcrsolve.linear.sequential import _unstack, solve_sequential


def numpy_without_unstack() -> types.SimpleNamespace:
    """NumPy's namespace minus ``unstack`` (as on NumPy < 2.1): the slicing fallback runs."""
    names = {n: getattr(np, n) for n in ("stack", "vecdot", "concat", "asarray", "zeros",
                                         "float64", "float32")
             if hasattr(np, n)}
    if "concat" not in names:
        names["concat"] = np.concatenate
    return types.SimpleNamespace(**names)


@pytest.mark.parametrize("axis", [-1, -2, -3])
def test_unstack_fallback_slices_like_numpy(rng, axis):
    x = rng.standard_normal((2, 3, 4, 5))
    got = _unstack(x, axis, numpy_without_unstack())
    want = [np.take(x, i, axis=axis) for i in range(x.shape[axis])]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_generic_loop_without_unstack_matches_float64_loop(rng, structure, monkeypatch):
    L, w = 9, 3
    shape = {"dense": (2, L, w, w), "diagonal": (2, L, w), "scalar": (2, L)}[structure]
    A = 0.5 * rng.standard_normal(shape)
    b, x0 = rng.standard_normal((2, L, w)), rng.standard_normal((2, w))
    s = pcrsolve.BidiagonalSystem(A, b, x0, structure=structure)
    # the generic loop (no lean loop from the backend) on a namespace without unstack
    from pcrsolve.backends import get_backend

    monkeypatch.setattr(type(get_backend(np)), "sequential_linear",
                        lambda self, *a, **k: None)
    X = solve_sequential(A, b, x0, s.structure, numpy_without_unstack())
    ref = reference_solve(A, b, x0, structure)
    assert np.max(np.abs(X - ref)) <= tolerance("float64", L) * np.max(np.abs(ref))


def test_default_chunk_size_is_ceil_sqrt_L():
    # "ceil(sqrt(L))" (the docstring), exactly, also at perfect squares and their neighbours
    for L in [*range(1, 300), 1023, 1024, 1025, 10**6 - 1, 10**6, 10**6 + 1]:
        want = math.isqrt(L) + (math.isqrt(L) ** 2 < L)
        assert default_chunk_size(L) == want, L
    assert default_chunk_size(0) == 1

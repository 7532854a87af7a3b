"""The finiteness check of system inputs (``check_finite``) on every backend.

The check is one sum per array (NaN and Inf poison a sum); only a non-finite sum runs the
exact elementwise test, so finite values whose sum overflows must pass, and the messages
(naming the argument, counting the bad entries) stay those of the exact test.
"""

from __future__ import annotations

import numpy as np
import pytest

import pcrsolve
from pcrsolve.namespace import check_finite

BAD = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


def _arrays(L=9, w=3):
    """A diagonal system with a batch of 2 in ``b`` (NumPy float64)."""
    return {"A": np.full((L, w), 0.5), "b": np.ones((2, L, w)), "x0": np.zeros((w,))}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("name", ["A", "b", "x0"])
def test_nan_and_inf_raise_naming_the_argument(backend, name, bad, dtype):
    raw = _arrays()
    raw[name] = raw[name].copy()
    flat = raw[name].reshape(-1)
    flat[[1, -1]] = BAD[bad]  # two bad entries, one of them the last
    args = {k: backend(v, dtype) for k, v in raw.items()}
    with pytest.raises(pcrsolve.NonFiniteError) as info:
        pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"], structure="diagonal")
    shape = tuple(raw[name].shape)
    assert str(info.value) == (
        f"`{name}` holds 2 NaN or Inf value(s) (shape {shape}); all inputs must be finite. "
        "Pass check_finite=False to skip this check.")
    # skipping the check builds the system
    pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"], structure="diagonal",
                              check_finite=False)


def test_first_bad_argument_is_named(backend):
    raw = _arrays()
    raw["A"][0, 0] = np.nan
    raw["b"][0, 0, 0] = np.inf
    args = {k: backend(v) for k, v in raw.items()}
    with pytest.raises(pcrsolve.NonFiniteError, match=r"^`A` holds 1 NaN or Inf"):
        pcrsolve.BidiagonalSystem(args["A"], args["b"], args["x0"], structure="diagonal")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_finite_values_whose_sum_overflows_pass(backend, dtype):
    big = float(np.finfo(dtype).max) / 2
    L, w = 8, 2
    A = np.full((L, w), big)  # sums to +inf
    b = np.full((L, w), -big)  # sums to -inf
    b[::2] = big  # ... and with both signs: pairwise partial sums overflow either way
    x0 = np.full((w,), big)
    args = [backend(a, dtype) for a in (A, b, x0)]
    xp = pcrsolve.namespace.infer_namespace({"A": args[0]})
    assert not pcrsolve.namespace._sum_is_finite(args[0], xp)  # the fast test alone fails
    system = pcrsolve.BidiagonalSystem(*args, structure="diagonal")
    assert system.length == L
    check_finite({"A": args[0], "b": args[1], "x0": args[2]}, xp)


def test_empty_and_none_arrays_are_skipped(backend):
    xp = pcrsolve.namespace.infer_namespace({"b": backend(np.ones((1, 1)))})
    check_finite({"A": backend(np.ones((0, 2))), "x0": None}, xp)


def test_half_precision_sums_in_float32():
    torch = pytest.importorskip("torch")
    xp = pcrsolve.namespace.infer_namespace({"b": torch.ones(1)})
    for dtype in (torch.float16, torch.bfloat16):
        # 10^5 ones sum to more than float16's largest value (65504): no overflow in float32
        ones = torch.ones(100_000, dtype=dtype)
        assert pcrsolve.namespace._sum_is_finite(ones, xp)
        bad = ones.clone()
        bad[7] = float("nan")
        with pytest.raises(pcrsolve.NonFiniteError, match=r"`b` holds 1 NaN or Inf"):
            check_finite({"b": bad}, xp)
    half = np.ones(100_000, dtype=np.float16)
    xp = pcrsolve.namespace.infer_namespace({"b": half})
    assert pcrsolve.namespace._sum_is_finite(half, xp)

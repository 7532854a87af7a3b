"""``pcrsolve.default_tolerance``: the documented values, and that ``solve`` uses them.

The docstring promises ``max(50 eps, 1e-2 sqrt(eps))``: 1.4901161193847657e-10 in float64
(the doctest's value), about 6e-6 in float32; the stopping rule's default ``atol`` is the
dtype's smallest normal number.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import pcrsolve
from pcrsolve.stopping import StoppingRule


def namespaces():
    out = [pytest.param(np, id="numpy")]
    import array_api_strict

    out.append(pytest.param(array_api_strict, id="array_api_strict"))
    if importlib.util.find_spec("torch") is not None:
        import array_api_compat.torch as xt

        out.append(pytest.param(xt, id="torch"))
    return out


def documented(eps: float) -> float:
    return max(50.0 * eps, 1e-2 * math.sqrt(eps))


@pytest.mark.parametrize("xp", namespaces())
def test_documented_values(xp):
    f64 = pcrsolve.default_tolerance(xp.float64, xp)
    f32 = pcrsolve.default_tolerance(xp.float32, xp)
    assert isinstance(f64, float) and isinstance(f32, float)
    assert f64 == 1.4901161193847657e-10  # the doctest
    assert f64 == pytest.approx(documented(2.0**-52), rel=1e-15)  # the sqrt term wins
    assert f32 == pytest.approx(documented(2.0**-23), rel=1e-15)
    assert f32 == pytest.approx(50 * 2.0**-23, rel=1e-15)  # the 50 eps term wins
    assert f64 == pytest.approx(1.5e-10, rel=0.01)  # "1.5e-10 in float64"
    assert f32 == pytest.approx(6e-6, rel=0.01)  # "6e-6 in float32"


def test_documented_formula_for_every_float_dtype():
    for dt in (np.float16, np.float32, np.float64):
        eps = float(np.finfo(dt).eps)
        assert pcrsolve.default_tolerance(dt, np) == pytest.approx(documented(eps), rel=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stopping_rule_defaults(dtype):
    rule = StoppingRule(pcrsolve.default_tolerance(np.dtype(dtype), np), None, 10,
                        np.dtype(dtype), np)
    assert rule.atol == float(np.finfo(dtype).smallest_normal)
    assert rule.rtol == pcrsolve.default_tolerance(np.dtype(dtype), np)
    X = np.full((1, 3, 2), 4.0, dtype=dtype)
    assert float(rule.tolerance(X, -2 * X)[0]) == pytest.approx(rule.atol + rule.rtol * 8.0)


def _contraction(rng, dtype, w: int = 3):
    """A contracting map ``x -> 0.6 tanh(W x) + c`` per step (rate <= 0.6)."""
    W = rng.standard_normal((w, w))
    W /= np.linalg.norm(W, 2)
    c = rng.standard_normal(w)
    Wd, cd = W.astype(dtype), c.astype(dtype)

    def step(x, l):
        return (0.6 * np.tanh(x @ Wd.T) + cd).astype(x.dtype)

    def loop(x0, L):
        out, x = [], np.asarray(x0, np.float64)
        for _ in range(L):
            x = 0.6 * np.tanh(x @ W.T) + c
            out.append(x)
        return np.stack(out, axis=-2)

    return step, loop


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_solve_uses_the_default_when_tol_is_none(rng, dtype):
    step, loop = _contraction(rng, dtype)
    x0 = rng.standard_normal(3).astype(dtype)
    L = 60
    tol = pcrsolve.default_tolerance(np.dtype(dtype), np)
    kw = dict(mode="jacobi", max_iter=L - 1)  # a linearly converging iteration: tol matters
    by_default = pcrsolve.solve(step, x0, L, **kw)
    explicit = pcrsolve.solve(step, x0, L, tol=tol, **kw)
    assert by_default.iterations == explicit.iterations
    np.testing.assert_array_equal(by_default.states, explicit.states)
    looser = pcrsolve.solve(step, x0, L, tol=1e4 * tol, **kw)
    tighter = pcrsolve.solve(step, x0, L, tol=1e-3 * tol, throw=False, **kw)
    assert looser.iterations < by_default.iterations < tighter.iterations
    # what the default promises: the answer is within it, relative to the states' size
    ref = loop(x0, L)
    err = np.max(np.abs(by_default.states.astype(np.float64) - ref))
    assert err <= 10 * tol * np.max(np.abs(ref)) + 10 * np.finfo(dtype).eps

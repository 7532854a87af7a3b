"""Tests that kill surviving mutants of ``scripts/mutation.py`` in ``pcrsolve/newton.py``.

Divergence of the undamped iteration is declared at the first iteration whose residual
exceeds ``1e12 max(1, r_0)`` (the documented limit), not later: an expanding map
``x -> 4 x + 1`` under the Jacobi iteration (no globalisation) has residuals ``4^k``
exactly, so the first one past the limit is ``4^20 = 1.1e12``.
"""

from __future__ import annotations

import numpy as np
import pytest

import pcrsolve
from pcrsolve import Status


def test_divergence_is_declared_at_the_first_residual_past_1e12():
    L = 40
    sol = pcrsolve.solve(lambda x, l: 4.0 * x + 1.0, np.zeros(2), L, mode="jacobi",
                         throw=False)
    assert sol.status is Status.DIVERGED
    r = np.asarray(sol.residuals)
    np.testing.assert_allclose(r, 4.0 ** np.arange(len(r)), rtol=1e-12)
    limit = 1e12 * max(1.0, r[0])
    first = int(np.argmax(r > limit))
    assert r[first] > limit and (r[:first] <= limit).all()
    assert sol.iterations == first == 20


def test_divergence_limit_is_relative_to_a_large_initial_residual():
    # r_0 = 1e3: the limit is 1e15, crossed at 1e3 * 4^k > 1e15, k = 20 (1.1e15)
    sol = pcrsolve.solve(lambda x, l: 4.0 * x + 1e3, np.zeros(1), 40, mode="jacobi",
                         throw=False)
    r = np.asarray(sol.residuals)
    assert r[0] == 1e3
    assert sol.status is Status.DIVERGED and sol.iterations == 20
    assert r[20] > 1e15 >= r[19]


def test_memory_estimate_grows_with_batch_length_and_width(monkeypatch):
    # solve refuses a problem too large for memory from an estimate taken before any
    # allocation: a handful of (..., L, w) arrays and, for newton, (..., L, w, w) Jacobian
    # blocks. Its inputs: the batch, L and w of x0 (w is the last axis, the batch the rest)
    import pcrsolve.newton as newton_module

    seen: list[int] = []
    real = newton_module.check_memory

    def spy(name, nbytes, device, what):
        seen.append(nbytes)
        return real(name, nbytes, device, what)

    monkeypatch.setattr(newton_module, "check_memory", spy)

    def estimate(batch, L, w, mode="newton"):
        seen.clear()
        pcrsolve.solve(lambda x, l: 0.5 * x, np.ones((*batch, w)), L, mode=mode,
                       throw=False)
        assert len(seen) == 1
        return seen[0]

    base = estimate((2,), 8, 3)
    assert estimate((4,), 8, 3) == 2 * base  # linear in the batch
    assert estimate((2, 2), 8, 3) == 2 * base
    assert estimate((2,), 16, 3) == 2 * base  # linear in L
    # newton holds w x w blocks: more than linear in w; quasi only (..., L, w) arrays
    assert estimate((2,), 8, 6) > 2.5 * base
    q = estimate((2,), 8, 3, mode="quasi")
    assert estimate((2,), 8, 6, mode="quasi") == 2 * q
    assert estimate((5,), 8, 3, mode="quasi") == 5 * q // 2


def test_first_k_states_are_the_loops_bit_for_bit(rng):
    # "the exact prefix and the state after it take f(X_prev): one more exact state per
    # iteration, bit for bit, whatever D is": an elementwise step (its value does not depend
    # on how many steps are evaluated at once) against the loop, with array_equal
    L, w = 12, 4
    a = rng.uniform(0.5, 1.5, (L, w))
    c = rng.standard_normal((L, w))

    def step(x, l):
        return np.tanh(a[l] * x + c[l])

    def jac(x, l):
        return (1.0 - np.tanh(a[l] * x + c[l]) ** 2) * a[l]

    x0 = rng.standard_normal(w)
    ref, x = [], x0
    for l in range(L):
        x = step(x[None, :], np.array([l]))[0]
        ref.append(x)
    ref = np.stack(ref)
    for glob in ("none", "trust-region"):
        for k in (1, 2, 3, 5):
            sol = pcrsolve.solve(step, x0, L, jacobian=jac, jacobian_structure="diagonal",
                                 globalisation=glob, max_iter=k, tol=0.0, atol=0.0,
                                 throw=False)
            np.testing.assert_array_equal(sol.states[:k], ref[:k], err_msg=f"{glob} k={k}")


def test_divergence_needs_a_residual_strictly_past_the_limit():
    # x -> 10 x + 1: residuals 10^k exactly; 1e12 itself is not past the limit
    sol = pcrsolve.solve(lambda x, l: 10.0 * x + 1.0, np.zeros(2), 40, mode="jacobi",
                         throw=False)
    assert sol.residuals[12] == 1e12
    assert sol.status is Status.DIVERGED and sol.iterations == 13


def test_an_overflowing_residual_with_a_finite_update_is_nonfinite():
    # r0 = 1e190 (limit 1e202); the first iterate is finite (1e190) but f of it overflows
    sol = pcrsolve.solve(lambda x, l: 1e200 * x + 1e190, np.zeros(2), 10, mode="jacobi",
                         throw=False)
    assert np.isfinite(sol.updates[-1]) and not np.isfinite(sol.residuals[-1])
    assert sol.status is Status.NONFINITE


def test_lyapunov_exponent_only_for_jacobian_modes(rng):
    W = 0.1 * rng.standard_normal((2, 2))

    def step(x, l):
        return x + 0.1 * np.tanh(x @ W.T)

    for mode in ("picard", "jacobi"):
        assert pcrsolve.solve(step, np.ones(2), 10, mode=mode).lyapunov_exponent is None
    for mode in ("newton", "quasi"):
        assert pcrsolve.solve(step, np.ones(2), 10, mode=mode).lyapunov_exponent is not None


def test_failure_message_of_a_non_chaotic_recurrence_has_no_chaos_note():
    with pytest.raises(pcrsolve.ConvergenceError) as info:
        pcrsolve.solve(lambda x, l: 0.5 * np.tanh(x) + 1, np.ones(2), 30, mode="jacobi",
                       max_iter=2)
    text = str(info.value)
    assert text.rstrip().endswith(".") and "None" not in text and "chaotic" not in text

"""The stopping rule (``pcrsolve/stopping.py``) against its documented formulas, per element.

Kills the mutants of ``scripts/mutation.py`` that the Newton tests cannot see (they change
when a trajectory stops only at boundaries: ``q = 1`` exactly, updates at the noise
floor, zero residuals). The expected values are computed here from the module docstring:
``τ = atol + rtol · S``, ``q = max(r_k / r_{k-1}, u_k / u_{k-1})``,
``err = u q / (1 - q)`` (``inf`` for ``q >= 1``), ``0/0 = 0``, ``x/0 = inf``, updates
and residuals below ``16 eps S`` are rounding noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pcrsolve.stopping import StoppingRule, _batch_max, _ratio

EPS = float(np.finfo(np.float64).eps)


def rule(rtol=1e-6, atol=None, length=100):
    return StoppingRule(rtol, atol, length, np.float64, np)


def arr(*v):
    return np.asarray(v, dtype=np.float64)


def test_ratio_conventions():
    got = _ratio(arr(0.0, 3.0, 3.0, 0.0), arr(0.0, 0.0, 2.0, 5.0), np)
    np.testing.assert_array_equal(got, arr(0.0, math.inf, 1.5, 0.0))


def test_batch_max_over_steps_and_features():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 30.0  # most negative first
    np.testing.assert_array_equal(_batch_max(x, np), np.abs(x).reshape(2, -1).max(axis=1))


def test_scale_and_tolerance_per_batch_element():
    r = rule(rtol=1e-3, atol=0.5)
    X = np.zeros((3, 4, 2))
    F = np.zeros((3, 4, 2))
    X[0, 1, 1] = -7.0
    F[0, 2, 0] = 3.0
    F[1, 0, 0] = -4.0
    X[2, 3, 1] = np.inf  # an overflowing iterate has no scale
    np.testing.assert_array_equal(r.scale(X, F), arr(7.0, 4.0, 0.0))
    np.testing.assert_allclose(r.tolerance(X, F), 0.5 + 1e-3 * arr(7.0, 4.0, 0.0), rtol=1e-15)


def test_default_atol_is_the_smallest_normal_number():
    assert rule().atol == float(np.finfo(np.float64).smallest_normal)
    assert rule(atol=0.25).atol == 0.25
    assert rule().noise == 16 * EPS


def test_error_estimate_uses_the_larger_ratio_and_inf_from_q_one():
    r = rule()
    r.start(arr(1.0, 1.0, 1.0, 1.0))
    scale = arr(1.0, 1.0, 1.0, 1.0)
    # first iteration: only the residual ratio is known
    upd, rn = arr(0.1, 0.1, 0.1, 0.1), arr(0.5, 1.0, 2.0, 0.25)
    q = rn / 1.0
    want = np.where(q < 1, upd * q / np.where(q < 1, 1 - q, 1.0), np.inf)
    np.testing.assert_allclose(r.error_estimate(upd, rn, scale), want, rtol=1e-15)
    assert r.error_estimate(upd, rn, scale)[1] == np.inf  # q = 1 exactly: not contracting
    r.record(upd, rn)
    # second: the update ratio is larger for element 0, the residual ratio for element 3
    upd2, rn2 = arr(0.08, 0.01, 0.01, 0.001), arr(0.05, 0.5, 1.0, 0.2)
    q0 = max(0.05 / 0.5, 0.08 / 0.1)
    q3 = max(0.2 / 0.25, 0.001 / 0.1)
    est = r.error_estimate(upd2, rn2, scale)
    assert est[0] == pytest.approx(0.08 * q0 / (1 - q0), rel=1e-14)
    assert est[3] == pytest.approx(0.001 * q3 / (1 - q3), rel=1e-14)
    assert est[1] == pytest.approx(0.01 * 0.5 / 0.5, rel=1e-14)
    assert est[2] == pytest.approx(0.01 * 0.5 / 0.5, rel=1e-14)  # 1.0 / 2.0


def test_error_estimate_at_the_noise_floor():
    r = rule()
    r.start(arr(1.0, 1.0, 1.0))
    scale = arr(1.0, 1.0, 1.0)
    floor = 16 * EPS
    # residual at the floor: its ratio says nothing (q from it is 0)
    upd, rn = arr(1e-3, 1e-3, 1e-3), arr(floor, 2 * floor, 0.0)
    est = r.error_estimate(upd, rn, scale)
    assert est[0] == 0.0 and est[2] == 0.0
    q1 = 2 * floor
    assert est[1] == pytest.approx(1e-3 * q1 / (1 - q1), rel=1e-12)
    # an update at the floor is the estimate itself, even where q >= 1
    r.start(arr(1.0, 1.0))
    est = r.error_estimate(arr(floor, 2 * floor), arr(3.0, 3.0), arr(1.0, 1.0))
    assert est[0] == floor and est[1] == np.inf


def test_converged_needs_all_three_within_tau():
    r = rule(rtol=1e-3, atol=1e-6, length=10)
    r.start(arr(1.0, 1.0, 1.0, 1.0, 1.0))
    scale = arr(1.0, 1.0, 1.0, 1.0, 1.0)
    tau = 1e-6 + 1e-3
    upd = arr(0.5 * tau, tau, 2 * tau, 0.5 * tau, 0.5 * tau)
    rn = arr(0.5 * tau, tau, 0.5 * tau, 2 * tau, 0.99)  # last: q = 0.99, est >> tau
    got = r.converged(upd, rn, scale, iterations=1)
    np.testing.assert_array_equal(got, [True, True, False, False, False])
    # tau scales with the solution: a larger scale converges the third
    got = r.converged(upd, rn, arr(1.0, 1.0, 3.0, 1.0, 1.0), iterations=1)
    assert got[2]


def test_converged_after_length_iterations_unless_nan():
    r = rule(length=4)
    r.start(arr(1.0, 1.0, 1.0))
    got = r.converged(arr(5.0, 5.0, 5.0), arr(7.0, np.inf, np.nan), arr(1.0, 1.0, 1.0), 4)
    np.testing.assert_array_equal(got, [True, True, False])
    got = r.converged(arr(5.0, 5.0, 5.0), arr(7.0, 7.0, 7.0), arr(1.0, 1.0, 1.0), 3)
    assert not got.any()

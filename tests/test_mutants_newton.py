"""Tests that kill surviving mutants of ``scripts/mutation.py`` in ``pcrsolve/newton.py``.

Divergence of the undamped iteration is declared at the first iteration whose residual
exceeds ``1e12 max(1, r_0)`` (the documented limit), not later: an expanding map
``x -> 4 x + 1`` under the Jacobi iteration (no globalisation) has residuals ``4^k``
exactly, so the first one past the limit is ``4^20 = 1.1e12``.
"""

from __future__ import annotations

import numpy as np

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

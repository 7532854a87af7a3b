"""Finite-difference Jacobians: accuracy at any state scale, against analytic Jacobians."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import pcrsolve
from pcrsolve.jacobians import finite_difference_jvp, jacobian_provider

SCALES = [1.0, 1e-2, 1e-4, 1e-6, 1e-8]


def _scaled_tanh(rng, L, w, s):
    """``f_l(x) = s * tanh(W_l x / s + b_l)``: the same recurrence at state scale ``s``.

    ``s`` may be a vector (one scale per component). Returns the step and its Jacobian
    ``diag(s (1 - t^2)) W_l diag(1 / s)``.
    """
    W = rng.standard_normal((L, w, w)) / w**0.5 * 1.2
    b = 0.3 * rng.standard_normal((L, w))
    s = np.asarray(s, dtype=np.float64)

    def step(x, l):
        return s * np.tanh(np.einsum("nij,...nj->...ni", W[l], x / s) + b[l])

    def jac(x, l):
        t = np.tanh(np.einsum("nij,...nj->...ni", W[l], x / s) + b[l])
        return (s * (1 - t**2))[..., None] * W[l] / s

    return step, jac


def _fd_jacobian(step, x, l, dtype="float64", backend=None):
    xb = x.astype(dtype) if backend is None else backend(x, dtype)
    xp = array_api_compat.array_namespace(xb)
    lb = np.asarray(l) if backend is None else backend(np.asarray(l), "int64")
    J = jacobian_provider(finite_difference_jvp(step, xp), "dense", xp)(xb, lb)
    return np.asarray(J, dtype=np.float64) if backend is None else backend.back(J)


def _rel_err(got, ref):
    return np.max(np.abs(got - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("s", SCALES)
def test_fd_jacobian_matches_analytic_at_every_state_scale(rng, s):
    L, w = 16, 4
    step, jac = _scaled_tanh(rng, L, w, s)
    x = s * rng.standard_normal((3, L, w))
    l = np.arange(L)
    eps = np.finfo(np.float64).eps
    # central differences: truncation ~h^2 and rounding ~eps/h balance at eps^(2/3)
    assert _rel_err(_fd_jacobian(step, x, l), jac(x, l)) < 20 * eps ** (2 / 3)


def test_fd_jacobian_float32(rng):
    L, w = 16, 4
    step, jac = _scaled_tanh(rng, L, w, 1e-6)
    x = 1e-6 * rng.standard_normal((2, L, w))
    l = np.arange(L)
    eps = float(np.finfo(np.float32).eps)
    step32 = lambda z, l: step(z.astype(np.float64), l).astype(np.float32)  # noqa: E731
    got = _fd_jacobian(step32, x, l, dtype="float32")
    assert _rel_err(got, jac(x.astype(np.float32).astype(np.float64), l)) < 20 * eps ** (2 / 3)


def test_fd_jacobian_components_of_different_scales(rng):
    # each component gets its own step: a fixed scale would step far outside the small one
    L, w = 8, 3
    s = np.array([1.0, 1e-4, 1e2])  # within eps^(-1/3) of each other (see the docstring)
    step, jac = _scaled_tanh(rng, L, w, s)
    x = s * rng.standard_normal((2, L, w))
    l = np.arange(L)
    got, ref = _fd_jacobian(step, x, l), jac(x, l)
    # compare in the unscaled coordinates, where every entry is O(1)
    unscale = lambda J: J * s[:, None] ** -1 * s  # noqa: E731  diag(1/s) J diag(s)
    assert np.max(np.abs(unscale(got) - unscale(ref))) < 1e-7


def test_fd_jacobian_zero_states_take_the_scale_of_the_others(rng):
    # x_0 = 0 (the default initial state) sits in the block next to states of size 1e-6
    L, w = 8, 2
    step, jac = _scaled_tanh(rng, L, w, 1e-6)
    x = 1e-6 * rng.standard_normal((L, w))
    x[0] = 0.0
    l = np.arange(L)
    got = _fd_jacobian(step, x, l)
    assert np.all(np.isfinite(got))
    assert _rel_err(got, jac(x, l)) < 20 * np.finfo(np.float64).eps ** (2 / 3)
    # all states zero: no scale to go by, the step falls back to eps^(1/3)
    zero = np.zeros((L, w))
    assert _rel_err(_fd_jacobian(step, zero, l), jac(zero, l)) < 1e-3


def test_fd_jacobian_on_every_backend(backend, rng):
    L, w = 6, 3
    W = rng.standard_normal((L, w, w)) / w**0.5
    x = 1e-7 * rng.standard_normal((2, L, w))

    def step(z, l):
        xp = array_api_compat.array_namespace(z)
        Wl = xp.take(backend(W), l, axis=0)
        return 1e-7 * xp.tanh(xp.sum(Wl * (z / 1e-7)[..., None, :], axis=-1))

    t = np.tanh(np.einsum("nij,...nj->...ni", W, x / 1e-7))
    ref = (1 - t**2)[..., None] * W
    got = _fd_jacobian(step, x, np.arange(L), backend=backend)
    assert _rel_err(got, ref) < 20 * np.finfo(np.float64).eps ** (2 / 3)


def test_newton_iterations_do_not_grow_as_states_shrink(rng):
    # finite-difference Newton on one recurrence written at state scales 1 .. 1e-8: the
    # Jacobians are the same, so the iteration counts must be (a fixed-size FD step took
    # 11 iterations at scale 1 and 63 at 1e-8)
    L, w = 64, 4
    W = rng.standard_normal((L, w, w)) / w**0.5 * 1.2
    b = 0.3 * rng.standard_normal((L, w))
    x0 = rng.standard_normal(w)
    iterations = []
    for s in SCALES:
        def step(x, l, s=s):
            return s * np.tanh(np.einsum("nij,...nj->...ni", W[l], x / s) + b[l])

        sol = pcrsolve.solve(step, s * x0, L, mode="newton")
        ref, x = [], s * x0
        for l in range(L):
            x = step(x[None, :], np.array([l]))[0]
            ref.append(x)
        assert sol.converged
        np.testing.assert_allclose(sol.states / s, np.array(ref) / s, rtol=0, atol=1e-10)
        iterations.append(sol.iterations)
    assert max(iterations) <= iterations[0] + 1, iterations

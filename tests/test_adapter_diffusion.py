"""DDPM/DDIM samplers as recurrences: coefficients, parallel vs sequential, bad input."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest
from conftest import tolerance

import pcrsolve
from pcrsolve.adapters.diffusion import (
    NoiseSchedule,
    make_step,
    plan_sampler,
    sample,
    sample_sequential,
)

D = 4


def make_denoiser(rng: np.random.Generator, T: int, convert, d: int = D):
    """``eps(x, t) = tanh(W x + c_t)`` with a table ``c`` of shape (T + 1, D); Array-API generic."""
    W = convert(rng.standard_normal((d, d)) / math.sqrt(d))
    c = convert(0.5 * rng.standard_normal((T + 1, d)))

    def eps(x, t):
        xp = array_api_compat.array_namespace(x)
        return xp.tanh(xp.matmul(x, xp.permute_dims(W, (1, 0))) + xp.take(c, t, axis=0))

    def eps_np(x, t):  # NumPy float64 reference of the same function
        return np.tanh(x @ np.asarray(W, np.float64).T + np.asarray(c, np.float64)[t])

    return eps, eps_np


def reference_ddpm(eps_np, x_T, z, schedule, posterior=False):
    """Ho et al. (2020), Algorithm 2, written from the paper: a plain NumPy loop.

    ``posterior=True`` takes the paper's other variance, sigma_t^2 = beta~_t =
    (1 - abar_{t-1}) / (1 - abar_t) beta_t (Ho et al., sec. 3.2).
    """
    beta = np.asarray(schedule.betas)
    alpha = 1 - beta
    abar = np.cumprod(alpha)
    x, out = np.asarray(x_T, np.float64), []
    for l, t in enumerate(range(schedule.T, 0, -1)):
        e = eps_np(x[..., None, :], np.array([t]))[..., 0, :]
        if t == 1:
            sigma = 0.0
        elif posterior:
            sigma = math.sqrt((1 - abar[t - 2]) / (1 - abar[t - 1]) * beta[t - 1])
        else:
            sigma = math.sqrt(beta[t - 1])
        x = (x - beta[t - 1] / math.sqrt(1 - abar[t - 1]) * e) / math.sqrt(alpha[t - 1]) \
            + sigma * z[..., l, :]
        out.append(x)
    return np.stack(out, axis=-2)


def reference_ddim(eps_np, x_T, schedule, taus, eta=0.0, z=None):
    """Song et al. (2021), eq. 12, via the predicted x_0; sigma from eq. 16 scaled by eta."""
    abar = np.concatenate([[1.0], np.cumprod(1 - np.asarray(schedule.betas))])
    x, out = np.asarray(x_T, np.float64), []
    seq = [0, *taus]
    for l, i in enumerate(range(len(taus), 0, -1)):
        t, s = seq[i], seq[i - 1]
        e = eps_np(x[..., None, :], np.array([t]))[..., 0, :]
        x0 = (x - math.sqrt(1 - abar[t]) * e) / math.sqrt(abar[t])
        sigma = eta * math.sqrt((1 - abar[s]) / (1 - abar[t]) * (1 - abar[t] / abar[s]))
        x = math.sqrt(abar[s]) * x0 + math.sqrt(1 - abar[s] - sigma**2) * e
        if sigma:
            x = x + sigma * z[..., l, :]
        out.append(x)
    return np.stack(out, axis=-2)


# -- schedule and coefficients ------------------------------------------------------------

def test_linear_schedule() -> None:
    s = NoiseSchedule.linear(1000)
    assert s.T == 1000
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)),
                               rtol=1e-12)
    assert s.alpha_bar(0) == 1.0
    assert s.subsequence(10) == (100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
    assert NoiseSchedule.linear(1).T == 1


def test_ddpm_plan_matches_paper(rng: np.random.Generator) -> None:
    T = 50
    s = NoiseSchedule.linear(T)
    eps, eps_np = make_denoiser(rng, T, lambda a: a)
    x_T, z = rng.standard_normal((3, D)), rng.standard_normal((3, T, D))
    plan = plan_sampler(s, "ddpm")
    assert plan.timesteps == tuple(range(T, 0, -1))
    assert plan.prev_timesteps == tuple(range(T - 1, -1, -1))
    assert plan.noise_coef[-1] == 0.0 and plan.stochastic
    np.testing.assert_allclose(sample_sequential(eps, x_T, s, noise=z),
                               reference_ddpm(eps_np, x_T, z, s), rtol=1e-12, atol=1e-12)


def test_ddim_plan_matches_paper(rng: np.random.Generator) -> None:
    T = 60
    s = NoiseSchedule.linear(T)
    eps, eps_np = make_denoiser(rng, T, lambda a: a)
    x_T = rng.standard_normal((2, D))
    for taus in (tuple(range(1, T + 1)), s.subsequence(7), (3, 17, 40)):
        plan = plan_sampler(s, "ddim", timesteps=None if len(taus) == T else taus)
        assert plan.timesteps == taus[::-1] and plan.prev_timesteps[-1] == 0
        assert not plan.stochastic
        got = sample_sequential(eps, x_T, s, sampler="ddim",
                                timesteps=None if len(taus) == T else taus)
        np.testing.assert_allclose(got, reference_ddim(eps_np, x_T, s, taus),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_matches_paper(rng: np.random.Generator, eta: float) -> None:
    T = 50
    s = NoiseSchedule.linear(T, beta_end=0.05)
    eps, eps_np = make_denoiser(rng, T, lambda a: a)
    taus = s.subsequence(10)
    x_T, z = rng.standard_normal((2, D)), rng.standard_normal((2, len(taus), D))
    ref = reference_ddim(eps_np, x_T, s, taus, eta=eta, z=z)
    got = sample_sequential(eps, x_T, s, sampler="ddim", timesteps=taus, eta=eta, noise=z)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    sol = sample(eps, x_T, s, sampler="ddim", timesteps=taus, eta=eta, noise=z, tol=1e-12)
    assert sol.converged
    np.testing.assert_allclose(sol.states, ref, rtol=1e-9, atol=1e-9)


def test_ddpm_posterior_variance_matches_paper(rng: np.random.Generator) -> None:
    T = 40
    s = NoiseSchedule.linear(T, beta_end=0.05)
    eps, eps_np = make_denoiser(rng, T, lambda a: a)
    x_T, z = rng.standard_normal((2, D)), rng.standard_normal((2, T, D))
    ref = reference_ddpm(eps_np, x_T, z, s, posterior=True)
    got = sample_sequential(eps, x_T, s, noise=z, variance="posterior")
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    sol = sample(eps, x_T, s, noise=z, variance="posterior", tol=1e-12)
    assert sol.converged
    np.testing.assert_allclose(sol.states, ref, rtol=1e-9, atol=1e-9)


def test_ddim_eta_one_is_ddpm_with_posterior_variance() -> None:
    s = NoiseSchedule.linear(40)
    a = plan_sampler(s, "ddim", eta=1.0)
    b = plan_sampler(s, "ddpm", variance="posterior")
    for field in ("timesteps", "scale", "eps_coef", "noise_coef"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-10, atol=1e-14)


# -- parallel vs sequential -----------------------------------------------------------------

@pytest.mark.parametrize("jacobian", ["gaussian", "scheduler", "diagonal", "full"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_parallel_matches_sequential_float64(backend, rng, sampler: str, jacobian: str) -> None:
    T = 64
    s = NoiseSchedule.linear(T, beta_end=0.05)
    eps, _ = make_denoiser(rng, T, backend)
    x_T = backend(rng.standard_normal((2, D)))
    kw = {"noise": backend(rng.standard_normal((2, T, D)))} if sampler == "ddpm" else {}
    sol = sample(eps, x_T, s, sampler=sampler, jacobian=jacobian, tol=1e-12, **kw)
    ref = backend.back(sample_sequential(eps, x_T, s, sampler=sampler, **kw))
    assert sol.converged and sol.iterations < T
    assert tuple(sol.states.shape) == (2, T, D)
    np.testing.assert_allclose(backend.back(sol.states), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("jacobian", ["gaussian", "full"])
def test_ddim_subsequence_parallel(backend, rng, jacobian: str) -> None:
    T = 200
    s = NoiseSchedule.linear(T)
    eps, _ = make_denoiser(rng, T, backend)
    x_T = backend(rng.standard_normal((3, D)))
    taus = s.subsequence(25)
    sol = sample(eps, x_T, s, sampler="ddim", timesteps=taus, jacobian=jacobian, tol=1e-12)
    ref = sample_sequential(eps, x_T, s, sampler="ddim", timesteps=taus)
    assert tuple(sol.states.shape) == (3, 25, D)
    np.testing.assert_allclose(backend.back(sol.states), backend.back(ref), rtol=0, atol=1e-10)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_parallel_matches_sequential_float32(rng, lib: str) -> None:
    T = 100
    if lib == "torch":
        torch = pytest.importorskip("torch")
        convert = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    else:
        convert = lambda a: np.asarray(a, np.float32)  # noqa: E731
    s = NoiseSchedule.linear(T)
    eps, _ = make_denoiser(rng, T, convert)
    x_T, z = convert(rng.standard_normal((4, D))), convert(rng.standard_normal((4, T, D)))
    sol = sample(eps, x_T, s, noise=z)
    ref = sample_sequential(eps, x_T, s, noise=z)
    assert sol.states.dtype == x_T.dtype and sol.converged
    scale = float(np.max(np.abs(np.asarray(ref))))
    err = float(np.max(np.abs(np.asarray(sol.states) - np.asarray(ref))))
    assert err <= tolerance("float32", T, factor=200.0) * max(1.0, scale)


def test_user_denoiser_jvp_gives_newton(rng: np.random.Generator) -> None:
    T = 100
    s = NoiseSchedule.linear(T)
    W = rng.standard_normal((D, D)) / 2
    c = rng.standard_normal((T + 1, D))
    eps = lambda x, t: np.tanh(x @ W.T + c[t])  # noqa: E731
    calls = []

    def eps_jvp(x, t, v):
        calls.append(1)
        return (1 - eps(x, t) ** 2) * (v @ W.T)

    x_T, z = rng.standard_normal(D), rng.standard_normal((T, D))
    sol = sample(eps, x_T, s, noise=z, jacobian="full", denoiser_jvp=eps_jvp, tol=1e-13)
    ref = sample_sequential(eps, x_T, s, noise=z)
    assert calls and sol.mode == "newton" and sol.iterations <= 10
    np.testing.assert_allclose(sol.states, ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("jacobian", ["gaussian", "scheduler"])
def test_scalar_jacobians_need_no_derivative(rng: np.random.Generator, jacobian: str) -> None:
    """The free options evaluate the denoiser only on (..., L, D) batches of states."""
    T = 30
    s = NoiseSchedule.linear(T)
    eps0, _ = make_denoiser(rng, T, lambda a: a)
    shapes = set()

    def eps(x, t):
        shapes.add(x.shape)
        return eps0(x, t)

    sol = sample(eps, rng.standard_normal(D), s, noise=rng.standard_normal((T, D)),
                 jacobian=jacobian)
    assert sol.mode == "quasi" and shapes == {(T, D)}


def test_gradients_through_sampler_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    T = 40
    s = NoiseSchedule.linear(T)
    lin = torch.nn.Linear(D, D).double()
    eps = lambda x, t: torch.tanh(lin(x)) * (t[:, None] / T)  # noqa: E731
    x_T = torch.tensor(rng.standard_normal((2, D)), requires_grad=True)
    z = torch.as_tensor(rng.standard_normal((2, T, D)))
    sol = sample(eps, x_T, s, noise=z, params=lin, tol=1e-12)
    sol.states[..., -1, :].square().sum().backward()
    g_par = [x_T.grad.clone(), lin.weight.grad.clone()]
    x_T.grad = None
    lin.zero_grad()
    sample_sequential(eps, x_T, s, noise=z)[..., -1, :].square().sum().backward()
    for a, b in zip(g_par, [x_T.grad, lin.weight.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_make_step_is_the_recurrence(rng: np.random.Generator) -> None:
    T = 20
    s = NoiseSchedule.linear(T)
    eps, eps_np = make_denoiser(rng, T, lambda a: a)
    x_T, z = rng.standard_normal((2, D)), rng.standard_normal((2, T, D))
    step = make_step(eps, plan_sampler(s), x_T, z)
    sol = pcrsolve.solve(step, x_T, T, mode="sequential")
    np.testing.assert_allclose(sol.states, reference_ddpm(eps_np, x_T, z, s), rtol=1e-12,
                               atol=1e-12)


# -- bad input ------------------------------------------------------------------------------

def test_bad_schedule() -> None:
    with pytest.raises(pcrsolve.InputError, match=r"`T`.*got 0"):
        NoiseSchedule.linear(0)
    with pytest.raises(pcrsolve.InputError, match="T = 0"):
        NoiseSchedule(())
    with pytest.raises(pcrsolve.InputError, match=r"`betas`.*t = 2"):
        NoiseSchedule((0.1, 1.5))
    with pytest.raises(pcrsolve.InputError, match="`steps`"):
        NoiseSchedule.linear(10).subsequence(11)


def test_bad_input(rng: np.random.Generator) -> None:
    T = 10
    s = NoiseSchedule.linear(T)
    eps, _ = make_denoiser(rng, T, lambda a: a)
    x_T, z = rng.standard_normal((2, D)), rng.standard_normal((2, T, D))
    err = pcrsolve.InputError
    with pytest.raises(err, match=r"`noise` must have shape \(2, 10, 4\).*got \(10, 4\)"):
        sample(eps, x_T, s, noise=z[0])
    with pytest.raises(err, match=r"`noise` must have shape"):
        sample(eps, x_T, s, noise=z[:, :5])
    with pytest.raises(err, match="`noise` is required"):
        sample(eps, x_T, s)
    with pytest.raises(err, match="`noise` must be None"):
        sample(eps, x_T, s, sampler="ddim", noise=z)
    with pytest.raises(err, match="`noise` must have the dtype"):
        sample(eps, x_T, s, noise=z.astype(np.float32))
    with pytest.raises(err, match="`x_T` must have shape"):
        sample(eps, np.float64(1.0), s, noise=z)
    with pytest.raises(err, match="`x_T` must have a real floating dtype"):
        sample(eps, np.ones((2, D), dtype=np.int64), s, noise=z)
    with pytest.raises(err, match="`jacobian` must be one of"):
        sample(eps, x_T, s, noise=z, jacobian="dense")
    with pytest.raises(err, match="`data_std`"):
        sample(eps, x_T, s, noise=z, data_std=0.0)
    with pytest.raises(err, match="`mode`"):
        sample(eps, x_T, s, noise=z, mode="newton")
    with pytest.raises(err, match="`sampler`"):
        sample(eps, x_T, s, noise=z, sampler="euler")
    with pytest.raises(err, match="`schedule`"):
        sample(eps, x_T, [0.1] * T, noise=z)
    with pytest.raises(err, match="`timesteps` must be strictly increasing"):
        sample(eps, x_T, s, sampler="ddim", timesteps=[5, 3])
    with pytest.raises(err, match=r"`timesteps` must lie in 1..T"):
        sample(eps, x_T, s, sampler="ddim", timesteps=[0, 3])
    with pytest.raises(err, match=r"`timesteps`.*ddim"):
        sample(eps, x_T, s, noise=z, timesteps=[1, 2])
    with pytest.raises(err, match="`denoiser` must be callable"):
        sample(None, x_T, s, noise=z)
    with pytest.raises(pcrsolve.StepFunctionError, match="`denoiser` must return"):
        sample(lambda x, t: x[..., :2], x_T, s, noise=z)
    with pytest.raises(pcrsolve.StepFunctionError, match="`denoiser` must return"):
        sample_sequential(lambda x, t: x[..., 0, :], x_T, s, noise=z)

"""Fixed-iteration Newton (no host syncs) and its CUDA-graph capture (eager on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
from linear_problems import rel_err
from nonlinear_problems import CONTRACTING, tanh_mlp

import pcrsolve


@pytest.mark.parametrize("mode", ["newton", "quasi", "picard", "jacobi"])
def test_iterate_exactness_and_agreement_with_solve(backend, rng, mode):
    prob = CONTRACTING["residual" if mode == "picard" else "tanh_mlp"](rng, L=16)
    step = prob.step_for(backend)
    x0 = rng.standard_normal((2, prob.w))
    ref = prob.reference(x0)
    for k in (1, 5):
        X = backend.back(pcrsolve.iterate(step, backend(x0), prob.L, k, mode=mode))
        np.testing.assert_allclose(X[:, :k], ref[:, :k], rtol=1e-12, atol=1e-12)
    X = pcrsolve.iterate(step, backend(x0), prob.L, prob.L, mode=mode)
    assert rel_err(backend.back(X), ref) <= 1e-12
    assert float(np.max(np.abs(backend.back(pcrsolve.residual(step, backend(x0), X))))) < 1e-12


def test_iterate_bad_input(rng):
    prob = tanh_mlp(rng, L=8, w=3)
    step = prob.step_for(lambda a: a)
    with pytest.raises(pcrsolve.InputError, match="`iterations`"):
        pcrsolve.iterate(step, np.ones(3), 8, -1)
    with pytest.raises(pcrsolve.InputError, match="`mode`"):
        pcrsolve.iterate(step, np.ones(3), 8, 2, mode="sequential")
    with pytest.raises(pcrsolve.InputError, match="`states`"):
        pcrsolve.residual(step, np.ones(3), np.ones((8, 2)))


def test_captured_newton_runs_eagerly_off_gpu_and_checks_inputs(rng):
    torch = pytest.importorskip("torch")
    from pcrsolve.backends.torch_graphs import CapturedNewton

    prob = tanh_mlp(rng, L=32, w=4)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    step = prob.step_for(lambda a: torch.as_tensor(a, device=device))
    x0 = torch.randn(3, 4, dtype=torch.float64, device=device)
    solver = CapturedNewton(step, x0, 32, iterations=12)

    def reference_residual(x0, got):
        """max_l |x_l - f_l(x_{l-1})| per chain, with the problem's own NumPy step."""
        prev = np.concatenate([x0.cpu().numpy()[:, None, :], got[:, :-1, :]], axis=1)
        r = np.stack([got[:, l] - prob.ref_step(prob.params, prev[:, l], l) for l in range(32)],
                     axis=1)
        return np.abs(r).max(axis=(-2, -1))

    for _ in range(2):  # new inputs through the same capture
        x0 = torch.randn(3, 4, dtype=torch.float64, device=device)
        got = solver(x0).cpu().numpy()
        assert rel_err(got, prob.reference(x0.cpu().numpy())) <= 1e-10
        assert solver.residual.shape == (3,)
        np.testing.assert_allclose(solver.residual.cpu().numpy(), reference_residual(x0, got),
                                   rtol=0, atol=1e-14)
        assert solver.converged(1e-10)
    # too few iterations for a chain of 32 steps: the residual says so, and it is the residual
    short = CapturedNewton(step, x0, 32, iterations=1)
    got = short(x0).cpu().numpy()
    want = reference_residual(x0, got)
    assert want.min() > 1e-3
    np.testing.assert_allclose(short.residual.cpu().numpy(), want, rtol=1e-12)
    assert not short.converged(1e-6)
    with pytest.raises(pcrsolve.InputError, match="check=True"):
        CapturedNewton(step, x0, 32, iterations=2, check=False).converged(1.0)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_captured_newton_half_precision_checks_in_float32(rng, half):
    # the step sees float32 states (the working dtype); the residual is measured there, so it
    # says whether the iteration converged, not how coarse the half-precision output is
    torch = pytest.importorskip("torch")
    from pcrsolve.backends.torch_graphs import CapturedNewton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    W = torch.as_tensor(rng.standard_normal((24, 4, 4)) / 4, dtype=torch.float32,
                        device=device)
    step = lambda x, l: torch.tanh((W[l] @ x.unsqueeze(-1)).squeeze(-1))  # noqa: E731
    x0 = torch.as_tensor(rng.standard_normal((3, 4)), device=device).to(getattr(torch, half))
    solver = CapturedNewton(step, x0, 24, iterations=24)
    X = solver(x0)
    assert X.dtype == x0.dtype and solver.residual.dtype == torch.float32
    assert solver.converged(1e-5)
    ref = pcrsolve.solve(step, x0.float(), 24, mode="sequential").states
    eps = float(torch.finfo(x0.dtype).eps)
    assert float((X.float() - ref).abs().max()) <= 2 * eps
    with pytest.raises(pcrsolve.InputError, match="must match the captured example"):
        solver(torch.randn(2, 4, dtype=torch.float64, device=device))

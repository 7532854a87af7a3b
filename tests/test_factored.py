"""Factored Jacobians ``diag(s_l) W_l + c I``: same answers as dense blocks, on every path."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tolerance

import pcrsolve
from pcrsolve.errors import StepFunctionError
from pcrsolve.factored import Factored


def _mlp(rng, L, w, residual=False):
    """Weights and the float64 reference loop of ``x_l = tanh(W_l x + b_l) (+ x)``."""
    W = rng.standard_normal((L, w, w)) / np.sqrt(w) * (0.3 if residual else 1.0)
    bias = 0.5 * rng.standard_normal((L, w))

    def loop(x0):
        out, x = [], x0
        for l in range(L):
            y = np.tanh(x @ W[l].T + bias[l])
            x = x + y if residual else y
            out.append(x)
        return np.stack(out, axis=-2)

    return W, bias, loop


def _functions(backend, W, bias, residual, dtype="float64"):
    import array_api_compat

    Wb, bb = backend(W, dtype), backend(bias, dtype)
    xp = array_api_compat.array_namespace(Wb)

    def step(x, l):
        y = xp.tanh(xp.matmul(xp.take(Wb, l, axis=0), x[..., None])[..., 0]
                    + xp.take(bb, l, axis=0))
        return x + y if residual else y

    def factored(x, l):
        y = xp.tanh(xp.matmul(xp.take(Wb, l, axis=0), x[..., None])[..., 0]
                    + xp.take(bb, l, axis=0))
        return Factored(1.0 - y**2, xp.take(Wb, l, axis=0), 1.0 if residual else 0.0)

    return step, factored, xp


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("mode", ["newton", "quasi"])
def test_solve_with_factored_jacobian_matches_loop(backend, rng, mode, residual):
    L, w, B = int(rng.integers(20, 60)), int(rng.integers(2, 6)), 3
    W, bias, loop = _mlp(rng, L, w, residual)
    x0 = rng.standard_normal((B, w))
    step, factored, xp = _functions(backend, W, bias, residual)
    tol = tolerance("float64", L, 10.0)
    sol = pcrsolve.solve(step, backend(x0), L, jacobian=factored, mode=mode, tol=tol,
                         throw=True)
    ref = loop(x0)
    err = np.max(np.abs(backend.back(sol.states) - ref)) / np.max(np.abs(ref))
    assert err < 1e3 * tol
    if mode == "newton":  # quadratic convergence: as few iterations as the dense Jacobian
        dense = pcrsolve.solve(step, backend(x0), L, tol=tol,
                               jacobian=lambda x, l: factored(x, l).dense(xp))
        assert sol.iterations == dense.iterations


def test_iterate_with_factored_jacobian(backend, rng):
    L, w = 40, 3
    W, bias, loop = _mlp(rng, L, w)
    x0 = rng.standard_normal((2, w))
    step, factored, _ = _functions(backend, W, bias, False)
    X = pcrsolve.iterate(step, backend(x0), L, L, jacobian=factored)
    ref = loop(x0)
    assert np.max(np.abs(backend.back(X) - ref)) < tolerance("float64", L, 1e3)


def test_dense_and_diagonal_of_factored(rng):
    s, W = rng.standard_normal((2, 5, 3)), rng.standard_normal((5, 3, 3))
    J = Factored(s, W, identity=0.5)
    want = s[..., :, None] * W + 0.5 * np.eye(3)
    np.testing.assert_allclose(J.dense(np), want, rtol=1e-15)
    np.testing.assert_allclose(J.diagonal(np), np.diagonal(want, axis1=-2, axis2=-1),
                               rtol=1e-15)
    assert J.shape == (2, 5, 3, 3) and J.ndim == 4 and J.dtype == np.float64


def test_factored_jacobian_errors():
    W = np.zeros((10, 2, 2))

    def run(jac, **kw):
        pcrsolve.solve(lambda x, l: np.tanh(x), np.ones((3, 2)), 10, jacobian=jac, **kw)

    with pytest.raises(StepFunctionError, match="scale shape"):
        run(lambda x, l: Factored(np.ones((3, 9, 2)), W))
    with pytest.raises(StepFunctionError, match="weight shape"):
        run(lambda x, l: Factored(np.ones((3, 10, 2)), np.zeros((10, 2, 3))))
    with pytest.raises(StepFunctionError, match="weight dtype"):
        run(lambda x, l: Factored(np.ones((3, 10, 2)), W.astype(np.float32)))
    with pytest.raises(StepFunctionError, match="stand for dense"):
        run(lambda x, l: Factored(np.ones((3, 10, 2)), W), jacobian_structure="diagonal")
    with pytest.raises(StepFunctionError, match="dtype"):
        run(lambda x, l: Factored(np.ones((3, 10, 2), np.float32), W.astype(np.float32)))
    with pytest.raises(StepFunctionError, match="weight shape"):  # quasi checks too
        run(lambda x, l: Factored(np.ones((3, 10, 2)), np.zeros((10, 3, 3))), mode="quasi")


# -- the fused Triton kernel (interpreted on a CPU) -------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture
def triton_device():
    pytest.importorskip("triton")
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("identity", [0.0, 1.0, 0.1])
def test_fused_factored_kernel_matches_dense_solve(rng, triton_device, dtype, identity):
    from pcrsolve.backends.triton_dense import dense_scan

    L, w = int(rng.choice([1, 7, 37])), int(rng.choice([1, 3, 4, 16]))
    s = rng.uniform(0.0, 1.0, (2, L, w))
    W = 0.6 * rng.standard_normal((L, w, w)) / np.sqrt(w) - (0.5 * identity) * np.eye(w)
    b, x0 = rng.standard_normal((2, L, w)), rng.standard_normal((2, w))
    A = s[..., None] * W + identity * np.eye(w)
    ref = np.empty_like(b)
    x = x0
    for l in range(L):
        x = A[:, l] @ x[..., None]
        x = x[..., 0] + b[:, l]
        ref[:, l] = x

    def t(a):
        return torch.as_tensor(a, device=triton_device).to(getattr(torch, dtype))

    got = dense_scan(t(W), t(b), t(x0), scale=t(s), identity=identity, chunk=4)
    err = np.max(np.abs(got.double().cpu().numpy() - ref)) / max(np.max(np.abs(ref)), 1.0)
    assert err < tolerance(dtype, L, 100.0)


def test_solve_takes_fused_kernel_for_factored_jacobians(rng, triton_device):
    L, w = 30, 4
    W, bias, loop = _mlp(rng, L, w)
    x0 = rng.standard_normal((3, w))
    case = lambda a, dt="float64": torch.as_tensor(a.astype(dt), device=triton_device)  # noqa
    backend = type("B", (), {"__call__": staticmethod(case)})()
    step, factored, _ = _functions(backend, W, bias, False)
    sol = pcrsolve.solve(step, case(x0), L, jacobian=factored, linear_method="kernel")
    assert sol.linear_method == "kernel"
    err = np.max(np.abs(sol.states.cpu().numpy() - loop(x0)))
    assert err < tolerance("float64", L, 1e3)


# -- the compiled CPU kernel (numba) ----------------------------------------------------------
@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("identity", [0.0, 1.0])
def test_compiled_factored_kernel_matches_dense_solve(rng, lib, dtype, identity):
    """numba_kernels.solve_factored against a float64 loop over the dense blocks, for
    shared and batched weights, batch broadcasting, widths 1-16 and short/odd lengths."""
    pytest.importorskip("numba")
    from linear_problems import reference_solve
    from pcrsolve.backends import get_backend
    from pcrsolve.backends.numpy_backend import numba_available

    if not numba_available():
        pytest.skip("numba switched off")
    torch = pytest.importorskip("torch") if lib == "torch" else None
    for L, w, sb, wb in ((1, 3, (2,), ()), (2, 1, (2,), ()), (37, 5, (3,), (1,)),
                         (41, 16, (2,), ()), (23, 4, (1,), (2,))):
        B = max(sb[0], wb[0] if wb else 1)
        s = rng.uniform(0.0, 1.0, (*sb, L, w))
        W = rng.standard_normal((*wb, L, w, w)) / np.sqrt(w) * 0.6
        b = rng.standard_normal((B, L, w))
        J = s[..., None] * W + identity * np.eye(w)
        ref = reference_solve(np.broadcast_to(J, (B, L, w, w)), b, np.zeros((B, w)), "dense")
        if torch is None:
            arrays = [a.astype(dtype) for a in (s, W, b)]
            backend = get_backend(np)
        else:
            arrays = [torch.tensor(a, dtype=getattr(torch, dtype)) for a in (s, W, b)]
            import array_api_compat

            backend = get_backend(array_api_compat.array_namespace(arrays[0]))
        run = backend.compiled_factored(Factored(arrays[0], arrays[1], identity), arrays[2])
        assert run is not None
        x = run()
        x = x.numpy() if torch is not None else x
        assert x.shape == (B, L, w) and x.dtype == np.dtype(dtype)
        err = np.max(np.abs(x - ref)) / max(1.0, np.max(np.abs(ref)))
        assert err <= tolerance(dtype, L), (L, w, err)


def test_auto_takes_the_compiled_factored_kernel_on_cpu(rng, monkeypatch):
    """pcrsolve.solve with a Factored jacobian on NumPy: the linear method is "kernel"
    (no dense blocks), and the states are the loop's; without numba, the dense path."""
    pytest.importorskip("numba")
    from pcrsolve.backends.numpy_backend import numba_available

    if not numba_available():
        pytest.skip("numba switched off")
    L, w = 40, 6
    W, bias, loop = _mlp(rng, L, w, residual=True)

    def step(x, l):
        return x + np.tanh(np.einsum("nij,...nj->...ni", W[l], x) + bias[l])

    def jacobian(x, l):
        y = np.tanh(np.einsum("nij,...nj->...ni", W[l], x) + bias[l])
        return Factored(1.0 - y * y, W[l], identity=1.0)

    x0 = rng.standard_normal((3, w))
    ref = loop(x0)
    for no_numba, method in (("0", "kernel"), ("1", None)):
        monkeypatch.setenv("PCRSOLVE_NO_NUMBA", no_numba)
        sol = pcrsolve.solve(step, x0, L, jacobian=jacobian, globalisation="none")
        np.testing.assert_allclose(sol.states, ref, rtol=1e-10, atol=1e-10)
        if method is not None:
            assert sol.linear_method == method
        else:
            assert sol.linear_method != "kernel"

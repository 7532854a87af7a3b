"""Gradients through the solution (torch): adjoint solve vs autograd through the loop."""

from __future__ import annotations

import numpy as np
import pytest

import pcrsolve

torch = pytest.importorskip("torch")


def _mlp(L, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(L, w, w, generator=g, dtype=dtype) / w**0.5
    b = 0.5 * torch.randn(L, w, generator=g, dtype=dtype)
    return W, b


def _step(W, b):
    def step(x, l):
        return torch.tanh(torch.einsum("nij,...nj->...ni", W[l], x) + b[l])
    return step


def _loop(W, b, x0):
    xs, x = [], x0
    for l in range(W.shape[0]):
        x = torch.tanh(x @ W[l].T + b[l])
        xs.append(x)
    return torch.stack(xs, -2)


@pytest.mark.parametrize("mode", ["newton", "quasi", "jacobi"])
def test_gradcheck_x0_and_params(mode):
    W, b = _mlp(10, 3)
    x0 = torch.randn(2, 3, dtype=torch.float64)

    def f(x0_, W_, b_):
        return pcrsolve.solve(_step(W_, b_), x0_, 10, params=[W_, b_], mode=mode,
                              tol=1e-14).states

    inputs = tuple(t.clone().requires_grad_() for t in (x0, W, b))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("jac_source", ["autodiff", "jacobian", "jvp"])
def test_adjoint_matches_autograd_through_loop(jac_source):
    L, w = 40, 4
    W, b = _mlp(L, w, seed=1)
    W.requires_grad_()
    b.requires_grad_()
    x0 = torch.randn(3, w, dtype=torch.float64, requires_grad=True)
    step = _step(W, b)
    kw = {}
    if jac_source == "jacobian":
        kw["jacobian"] = lambda x, l: (1 - step(x, l) ** 2)[..., None] * W[l]
    elif jac_source == "jvp":
        kw["jvp"] = lambda x, l, v: (1 - step(x, l) ** 2) * torch.einsum("nij,...nj->...ni",
                                                                         W[l], v)
    weight = torch.randn(3, L, w, dtype=torch.float64)
    sol = pcrsolve.solve(step, x0, L, params=[W, b], **kw)
    (sol.states * weight).sum().backward()
    got = [t.grad.clone() for t in (x0, W, b)]
    for t in (x0, W, b):
        t.grad = None
    (_loop(W, b, x0) * weight).sum().backward()
    for g, t in zip(got, (x0, W, b), strict=True):
        torch.testing.assert_close(g, t.grad, rtol=1e-9, atol=1e-11)


def test_module_params_and_float32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    x0 = torch.randn(5, 4)

    def step(x, l):
        return torch.tanh(lin(x))

    sol = pcrsolve.solve(step, x0, 30, params=lin)
    sol.states.pow(2).mean().backward()
    got = lin.weight.grad.clone()
    lin.weight.grad = None
    xs, x = [], x0
    for _ in range(30):
        x = torch.tanh(lin(x))
        xs.append(x)
    torch.stack(xs, -2).pow(2).mean().backward()
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got, lin.weight.grad, rtol=200 * eps, atol=200 * eps)


def test_broadcast_x0_gradient_is_summed():
    W, b = _mlp(12, 2)
    x0 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    init = torch.zeros(3, 12, 2, dtype=torch.float64)
    x0b = x0.expand(3, 2)
    sol = pcrsolve.solve(_step(W, b), x0b, 12, init=init)
    sol.states.sum().backward()
    ref_x0 = x0.detach().clone().requires_grad_()
    _loop(W, b, ref_x0.expand(3, 2)).sum().backward()
    torch.testing.assert_close(x0.grad, ref_x0.grad, rtol=1e-10, atol=1e-12)


def test_hidden_parameters_are_refused():
    W, b = _mlp(6, 2)
    W.requires_grad_()
    with pytest.raises(pcrsolve.InputError, match=r"pass them as params="):
        pcrsolve.solve(_step(W, b), torch.zeros(2, dtype=torch.float64), 6)
    with torch.no_grad():  # explicitly no gradients wanted: fine
        sol = pcrsolve.solve(_step(W, b), torch.zeros(2, dtype=torch.float64), 6)
    assert sol.converged


def test_params_on_numpy_is_an_error():
    with pytest.raises(pcrsolve.InputError, match="autodiff"):
        pcrsolve.solve(lambda x, l: np.tanh(x), np.zeros(2), 4, params=[np.ones(2)])


def test_autodiff_jacobian_vmap_and_fallback_paths_agree(monkeypatch):
    # autodiff Jacobians map a JVP over the basis with vmap; where vmap fails, they fall back
    # to one call on a w-fold batch. Both must equal the analytic Jacobian.
    import array_api_compat
    from pcrsolve.backends import get_backend

    W, b = _mlp(20, 3)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    l = torch.arange(20)

    def step(z, l):
        return torch.tanh(torch.einsum("nij,...nj->...ni", W[l], z) + b[l])

    backend = get_backend(array_api_compat.array_namespace(x))
    expect = (1 - step(x, l) ** 2)[..., None] * W[l]
    torch.testing.assert_close(backend.jacobian(step, "dense")(x, l), expect)
    torch.testing.assert_close(backend.jacobian(step, "diagonal")(x, l),
                               torch.diagonal(expect, dim1=-2, dim2=-1))

    def no_vmap(*args, **kwargs):
        raise RuntimeError("vmap: unsupported operation")

    monkeypatch.setattr(torch.func, "vmap", no_vmap)
    torch.testing.assert_close(backend.jacobian(step, "dense")(x, l), expect)


def test_tensors_missing_from_params_are_refused():
    W, b = _mlp(8, 3)
    W.requires_grad_()
    b.requires_grad_()
    x0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(pcrsolve.InputError, match=r"shape \(8, 3\).*not among the 1"):
        pcrsolve.solve(_step(W, b), x0, 8, params=[W])  # b forgotten
    with pytest.raises(pcrsolve.InputError, match="`params` was not given"):
        pcrsolve.solve(_step(W, b), x0, 8)  # x0 needs grad, W and b not declared
    # a non-leaf parameter (computed from a leaf) stops the walk: no false alarm
    W2 = W * 1.0
    sol = pcrsolve.solve(_step(W2, b), x0, 8, params=[W2, b])
    sol.states.sum().backward()
    assert W.grad is not None and b.grad is not None


def test_half_precision_states_get_gradients():
    W, b = _mlp(10, 3, dtype=torch.float32)
    W.requires_grad_()
    x0 = torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True)
    sol = pcrsolve.solve(_step(W, b), x0, 10, params=[W])
    assert sol.states.dtype == torch.bfloat16
    sol.states.float().sum().backward()
    ref_x0 = x0.detach().float().requires_grad_()
    W_ref = W.detach().clone().requires_grad_()
    _loop(W_ref, b, ref_x0).sum().backward()
    eps = float(torch.finfo(torch.bfloat16).eps)
    torch.testing.assert_close(W.grad, W_ref.grad, rtol=20 * eps, atol=20 * eps)
    torch.testing.assert_close(x0.grad.float(), ref_x0.grad, rtol=20 * eps, atol=20 * eps)


# -- second-order gradients: the adjoint's backward is itself differentiable ---------------
def _small_step(W_, b_):
    return lambda x, l: torch.tanh(torch.einsum("nij,...nj->...ni", W_[l], x) + b_[l])


@pytest.mark.parametrize("mode", ["newton", "quasi", "jacobi"])
def test_gradgradcheck_x0_and_params(mode):
    W, b = _mlp(5, 2, seed=3)
    x0 = torch.randn(2, 2, dtype=torch.float64)

    def f(x0_, W_, b_):
        return pcrsolve.solve(_small_step(W_, b_), x0_, 5, params=[W_, b_], mode=mode,
                              tol=1e-14).states

    inputs = tuple(t.clone().requires_grad_() for t in (x0, W, b))
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("jac_source", ["jacobian", "jvp"])
def test_gradgradcheck_with_user_jacobians_that_are_not_differentiable(jac_source):
    # the first-order backward uses the user's Jacobian; the second-order one must not rely
    # on it being differentiable (here it is detached: constant as far as autograd knows)
    W, b = _mlp(5, 2, seed=4)
    x0 = torch.randn(2, dtype=torch.float64)

    def f(x0_, W_, b_):
        step = _small_step(W_, b_)
        kw = {}
        if jac_source == "jacobian":
            kw["jacobian"] = lambda x, l: ((1 - step(x, l) ** 2)[..., None] * W_[l]).detach()
        else:
            kw["jvp"] = lambda x, l, v: ((1 - step(x, l) ** 2) * torch.einsum(
                "nij,...nj->...ni", W_[l], v)).detach()
        return pcrsolve.solve(step, x0_, 5, params=[W_, b_], tol=1e-14, **kw).states

    inputs = tuple(t.clone().requires_grad_() for t in (x0, W, b))
    assert torch.autograd.gradgradcheck(f, inputs)


def _penalty_and_hvp(states_of, x0, params, weight, v):
    """Gradient of ``loss + |dloss/dx0|^2`` and the Hessian-vector product ``H_x0 v``."""
    loss = (states_of(x0).pow(2) * weight).sum()
    g = torch.autograd.grad(loss, x0, create_graph=True)[0]
    assert g.grad_fn is not None  # the first-order gradient is differentiable
    penalty = torch.autograd.grad(loss + g.pow(2).sum(), [x0, *params], retain_graph=True)
    hvp = torch.autograd.grad((g * v).sum(), [x0, *params])
    return [*penalty, *hvp]


def test_gradient_penalty_and_hvp_match_autograd_through_loop():
    L, w = 30, 4
    W, b = _mlp(L, w, seed=5)
    W.requires_grad_()
    b.requires_grad_()
    x0 = torch.randn(3, w, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, L, w, dtype=torch.float64)
    v = torch.randn(3, w, dtype=torch.float64)
    got = _penalty_and_hvp(
        lambda z: pcrsolve.solve(_step(W, b), z, L, params=[W, b], tol=1e-14).states,
        x0, [W, b], weight, v)
    ref = _penalty_and_hvp(lambda z: _loop(W, b, z), x0, [W, b], weight, v)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)


def test_third_derivative_matches_loop():
    # derivatives of every order see the states as functions of x0 and the parameters
    L = 12
    W, b = _mlp(L, 1, seed=6)
    W.requires_grad_()

    def third(states_of):
        x0 = torch.full((1,), 0.3, dtype=torch.float64, requires_grad=True)
        y = states_of(x0)[..., -1, :].sum()
        d1 = torch.autograd.grad(y, x0, create_graph=True)[0]
        d2 = torch.autograd.grad(d1.sum(), x0, create_graph=True)[0]
        return torch.autograd.grad(d2.sum(), [x0, W])

    got = third(lambda z: pcrsolve.solve(_step(W, b), z, L, params=[W, b], tol=1e-14).states)
    ref = third(lambda z: _loop(W, b, z))
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-11)


class _OnceTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y**2)


def test_step_that_is_once_differentiable_refuses_double_backward():
    # a step whose own backward cannot be differentiated: first-order gradients are right,
    # a second-order one raises instead of silently dropping terms
    L, w = 8, 3
    W, b = _mlp(L, w, seed=7)
    W.requires_grad_()
    x0 = torch.randn(w, dtype=torch.float64, requires_grad=True)

    def step(x, l):
        return _OnceTanh.apply(torch.einsum("nij,...nj->...ni", W[l], x) + b[l])

    jac = lambda x, l: (1 - step(x, l) ** 2)[..., None] * W[l]  # noqa: E731
    sol = pcrsolve.solve(step, x0, L, params=[W], jacobian=jac, tol=1e-14)
    loss = sol.states.pow(2).sum()
    g = torch.autograd.grad(loss, x0, create_graph=True)[0]
    ref = torch.autograd.grad(_loop(W, b, x0).pow(2).sum(), x0)[0]
    torch.testing.assert_close(g.detach(), ref, rtol=1e-9, atol=1e-11)
    with pytest.raises(RuntimeError, match=r"second-order gradient.*once_differentiable"):
        torch.autograd.grad(loss + g.pow(2).sum(), W, retain_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        (loss + g.pow(2).sum()).backward()


def test_first_order_backward_builds_no_graph():
    # without create_graph the backward runs tape-free (no cost for second order)
    W, b = _mlp(10, 3, seed=8)
    W.requires_grad_()
    x0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    sol = pcrsolve.solve(_step(W, b), x0, 10, params=[W, b])
    gx, gW = torch.autograd.grad(sol.states.sum(), [x0, W])
    assert gx.grad_fn is None and gW.grad_fn is None and not gW.requires_grad


def _parallel_sequential_layers(kind, L=6, w=3):
    from torch import nn

    from pcrsolve.adapters.torch import Residual

    torch.manual_seed(0)

    class Block(nn.Module):  # no analytic Jacobian: the autodiff path
        def __init__(self):
            super().__init__()
            self.lin, self.norm = nn.Linear(w, w), nn.LayerNorm(w)

        def forward(self, x):
            return x + 0.3 * torch.tanh(self.lin(self.norm(x)))

    if kind == "block":
        return [Block().double() for _ in range(L)]
    layers = [nn.Sequential(nn.Linear(w, w), nn.Tanh()).double() for _ in range(L)]
    return [Residual(m) for m in layers] if kind == "residual" else layers


@pytest.mark.parametrize("kind", ["tanh", "residual", "block"])
def test_parallel_sequential_second_order_matches_nn_sequential(kind):
    from torch import nn

    from pcrsolve.adapters.torch import ParallelSequential

    layers = _parallel_sequential_layers(kind)
    seq, par = nn.Sequential(*layers), ParallelSequential(layers, tol=1e-14)
    params = list(par.parameters())
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, dtype=torch.float64)
    v = torch.randn(2, 3, dtype=torch.float64)
    got = _penalty_and_hvp(lambda z: par(z)[..., None, :], x, params, weight, v)
    ref = _penalty_and_hvp(lambda z: seq(z)[..., None, :], x, params, weight, v)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)


def test_parallel_sequential_gradgradcheck():
    from pcrsolve.adapters.torch import ParallelSequential

    par = ParallelSequential(_parallel_sequential_layers("tanh", L=4, w=2), tol=1e-14)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    # the layers' own parameters are inputs: gradgradcheck perturbs them in place
    assert torch.autograd.gradgradcheck(lambda x_, *ps: par(x_), (x, *par.parameters()))

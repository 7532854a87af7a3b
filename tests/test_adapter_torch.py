"""Layer stacks and ParallelSequential against nn.Sequential: outputs, gradients, training."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pcrsolve  # noqa: E402
from pcrsolve.adapters.torch import LayerStack, ParallelSequential, Residual  # noqa: E402

ACTIVATIONS = [nn.Tanh, nn.Sigmoid, nn.ReLU, nn.Identity, nn.LeakyReLU, nn.ELU, nn.SiLU,
               nn.GELU]


def _layers(act, L, w, residual=False, dtype=torch.float64, seed=0, gain=1.0):
    torch.manual_seed(seed)
    out = []
    for _ in range(L):
        lin = nn.Linear(w, w).to(dtype)
        with torch.no_grad():
            lin.weight.mul_(gain)
        body = nn.Sequential(lin, act())
        out.append(Residual(body) if residual else body)
    return out


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
def test_fast_path_matches_sequential_forward_and_backward(act, residual):
    layers = _layers(act, 24, 5, residual, gain=0.3 if residual else 1.0)
    seq = nn.Sequential(*layers)
    par = ParallelSequential(layers, tol=1e-13)
    assert par.stack.analytic
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, dtype=torch.float64)
    (par(x) * weight).sum().backward()
    got, gx = _grads(par), x.grad.clone()
    for p in par.parameters():
        p.grad = None
    x.grad = None
    (seq(x) * weight).sum().backward()
    torch.testing.assert_close(par(x), seq(x), rtol=1e-10, atol=1e-12)
    for a, b in zip(got, _grads(seq), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gx, x.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
def test_analytic_jacobian_matches_autodiff(act):
    layers = _layers(act, 6, 4)
    stack = LayerStack(layers)
    fns = stack.functions(stack.parameters())
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    l = torch.arange(6)
    J = fns["jacobian"](x, l).dense(torch)  # factored: diag(act') W (+ I)
    for i in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[i] = 1.0
        col = torch.func.jvp(lambda z: fns["step"](z, l), (x,), (e.expand_as(x),))[1]
        torch.testing.assert_close(J[..., :, i], col, rtol=1e-10, atol=1e-12)


class _Block(nn.Module):
    """A layer the fast path does not know: two linears and a LayerNorm."""

    def __init__(self, w):
        super().__init__()
        self.a, self.b, self.norm = nn.Linear(w, w), nn.Linear(w, w), nn.LayerNorm(w)

    def forward(self, x):
        return x + 0.3 * torch.tanh(self.b(torch.relu(self.a(self.norm(x)))))


def test_general_layers_use_autodiff_and_match():
    torch.manual_seed(1)
    layers = [_Block(4).double() for _ in range(12)]
    seq, par = nn.Sequential(*layers), ParallelSequential(layers, tol=1e-13)
    assert not par.stack.analytic
    x = torch.randn(5, 4, dtype=torch.float64)
    par(x).pow(2).sum().backward()
    got = _grads(par)
    for p in par.parameters():
        p.grad = None
    seq(x).pow(2).sum().backward()
    torch.testing.assert_close(par(x), seq(x), rtol=1e-10, atol=1e-12)
    for a, b in zip(got, _grads(seq), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mode", ["newton", "quasi"])
def test_three_training_steps_match_sequential_training(mode):
    layers = _layers(nn.Tanh, 32, 6, residual=True, gain=0.5)
    seq = nn.Sequential(*copy.deepcopy(layers))
    par = ParallelSequential(copy.deepcopy(layers), mode=mode, tol=1e-13)
    head_s, head_p = nn.Linear(6, 2).double(), None
    head_p = copy.deepcopy(head_s)
    opt_s = torch.optim.SGD([*seq.parameters(), *head_s.parameters()], lr=0.1)
    opt_p = torch.optim.SGD([*par.parameters(), *head_p.parameters()], lr=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(16, 6, dtype=torch.float64, generator=g)
        y = torch.randint(0, 2, (16,), generator=g)
        for net, head, opt in ((seq, head_s, opt_s), (par, head_p, opt_p)):
            opt.zero_grad()
            nn.functional.cross_entropy(head(net(x)), y).backward()
            opt.step()
    for a, b in zip(par.parameters(), seq.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert par.last_solution.converged


def test_warm_start_and_return_all():
    layers = _layers(nn.Tanh, 64, 4, seed=3)
    par = ParallelSequential(layers, return_all=True, warm_start=True)
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        states = par(x)
        cold = par.last_solution.iterations
        for layer in layers:
            layer[0].weight.add_(1e-5 * torch.randn_like(layer[0].weight))
        par(x)
        warm = par.last_solution.iterations
    assert states.shape == (2, 64, 4)
    assert warm < cold
    torch.testing.assert_close(par(x).detach(), torch.stack(_loop(layers, x), -2).detach(),
                               rtol=1e-9, atol=1e-11)


def _loop(layers, x):
    out = []
    for layer in layers:
        x = layer(x)
        out.append(x)
    return out


def test_float32_matches_within_dtype_tolerance():
    layers = _layers(nn.Tanh, 128, 8, dtype=torch.float32)
    seq, par = nn.Sequential(*layers), ParallelSequential(layers)
    x = torch.randn(4, 8)
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(par(x), seq(x), rtol=100 * eps, atol=100 * eps)


def test_bad_layers():
    with pytest.raises(pcrsolve.InputError, match="at least one layer"):
        LayerStack([])
    with pytest.raises(pcrsolve.InputError, match=r"one class.*`layers\[1\]` is Linear"):
        LayerStack([nn.Sequential(nn.Linear(2, 2), nn.Tanh()), nn.Linear(2, 2)])
    with pytest.raises(pcrsolve.InputError, match=r"width 3 to itself"):
        LayerStack([nn.Linear(3, 3), nn.Linear(3, 4)])
    with pytest.raises(pcrsolve.InputError, match="buffers"):
        LayerStack([nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)) for _ in range(2)])
    with pytest.raises(pcrsolve.InputError, match="`jacobian`"):
        LayerStack([nn.Linear(2, 2)], jacobian="magic")
    with pytest.raises(pcrsolve.InputError, match="analytic"):
        LayerStack([_Block(2), _Block(2)], jacobian="analytic")


def test_half_precision_model():
    layers = _layers(nn.Tanh, 16, 4, dtype=torch.float32)
    par = ParallelSequential(layers).to(torch.bfloat16)
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    y = par(x)
    assert y.dtype == torch.bfloat16
    ref = nn.Sequential(*[copy.deepcopy(layer).float() for layer in layers])(x.float())
    eps = float(torch.finfo(torch.bfloat16).eps)
    torch.testing.assert_close(y.float(), ref, rtol=8 * eps, atol=8 * eps)
    y.float().sum().backward()
    assert layers[0][0].weight.grad is not None


# -- the plain nn.Sequential form, and stochastic layers ------------------------------------
def _flat(pattern, L, w, seed=0):
    """``nn.Sequential(*pattern(w), *pattern(w), ...)`` in float64: the plain form."""
    torch.manual_seed(seed)
    return nn.Sequential(*[m for _ in range(L) for m in pattern(w)]).double()


def _forward_backward(net, x, weight):
    """Output, input gradient and parameter gradients of ``sum(net(x) * weight)``."""
    x = x.detach().clone().requires_grad_(True)
    for p in net.parameters():
        p.grad = None
    y = net(x)
    (y * weight).sum().backward()
    return y.detach(), x.grad.clone(), [p.grad.clone() for p in net.parameters()]


def _assert_same_as_sequential(par, seq, w):
    x = torch.randn(3, w, dtype=torch.float64)
    weight = torch.randn(3, w, dtype=torch.float64)
    y_p, gx_p, g_p = _forward_backward(par, x, weight)
    y_s, gx_s, g_s = _forward_backward(seq, x, weight)
    # float64 with tol=1e-13: forward to ~1e-12, gradients (one adjoint solve) to ~1e-10
    torch.testing.assert_close(y_p, y_s, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx_p, gx_s, rtol=1e-8, atol=1e-10)
    assert len(g_p) == len(g_s)
    for a, b in zip(g_p, g_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("act", [nn.Tanh, nn.ReLU, nn.GELU], ids=lambda a: a.__name__)
def test_plain_alternating_sequential_is_grouped_onto_the_fast_path(act):
    seq = _flat(lambda w: (nn.Linear(w, w), act()), 16, 6)
    par = ParallelSequential(seq, tol=1e-13)
    assert par.stack.analytic and par.stack.group_size == 2 and par.stack.length == 16
    # the layers are the caller's own, in the caller's order (parameters line up)
    assert [id(p) for p in par.parameters()] == [id(p) for p in seq.parameters()]
    _assert_same_as_sequential(par, seq, 6)


def test_longer_repeating_pattern_is_grouped_onto_the_general_path():
    seq = _flat(lambda w: (nn.LayerNorm(w), nn.Linear(w, w), nn.Tanh()), 10, 4, seed=1)
    par = ParallelSequential(seq, tol=1e-13)
    assert not par.stack.analytic and par.stack.group_size == 3 and par.stack.length == 10
    _assert_same_as_sequential(par, seq, 4)


def test_ungroupable_list_says_exactly_how_to_group_it():
    seq = _flat(lambda w: (nn.Linear(w, w), nn.Tanh()), 6, 4, seed=2)
    layers = [*seq, nn.Linear(4, 4).double()]  # a trailing Linear breaks the pattern
    with pytest.raises(pcrsolve.InputError,
                       match=r"`layers\[1\]` is Tanh.*the 13 layers \(Linear, Tanh, .*\.\.\.\) "
                       r"do not repeat.*first 12 layers repeat \(Linear, Tanh\).*"
                       r"nn\.Sequential\(ParallelSequential\(\[nn\.Sequential\(\*layers\[i:i \+ 2"
                       r"\]\) for i in range\(0, 12, 2\)\]\), \*layers\[12:\]\)"):
        ParallelSequential(layers)
    # the advice, followed literally, builds a network equal to the original
    advised = nn.Sequential(ParallelSequential(
        [nn.Sequential(*layers[i:i + 2]) for i in range(0, 12, 2)], tol=1e-13), *layers[12:])
    _assert_same_as_sequential(advised, nn.Sequential(*layers), 4)


def _with_dropout(w):
    return (nn.Linear(w, w), nn.Tanh(), nn.Dropout(0.2))


def test_dropout_in_training_mode_is_refused_naming_the_layer():
    seq = _flat(_with_dropout, 8, 4)
    par = ParallelSequential(seq)
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(pcrsolve.InputError,
                       match=r"`layers\[2\]` is Dropout\(p=0\.2.*training mode: stochastic "
                       r"layers are not supported.*\.eval\(\)"):
        par(x)
    # a Dropout nested inside a block is named by its path
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).double() for _ in range(3)]
    with pytest.raises(pcrsolve.InputError, match=r"`layers\[0\]` \(its submodule `1`\)"):
        ParallelSequential(blocks)(x)


def test_dropout_in_eval_mode_matches_sequential_and_train_mode_refuses_again():
    seq = _flat(_with_dropout, 8, 4)
    par = ParallelSequential(seq, tol=1e-13)
    assert par.stack.group_size == 3
    par.train()  # built in training mode: switching afterwards must reach the stacked copy
    par.eval()
    _assert_same_as_sequential(par, seq.eval(), 4)
    par.train()
    with pytest.raises(pcrsolve.InputError, match="Dropout"):
        par(torch.randn(2, 4, dtype=torch.float64))


class _Noisy(nn.Module):
    """A custom layer that draws random numbers: not recognisable by its class."""

    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(w, w)

    def forward(self, x):
        return torch.tanh(self.lin(x)) + 1e-3 * torch.randn_like(x)


def test_custom_random_layer_is_explained():
    par = ParallelSequential([_Noisy(4).double() for _ in range(4)])
    with pytest.raises(pcrsolve.InputError,
                       match=r"\(_Noisy\) called a random operation: stochastic layers") as info:
        par(torch.randn(2, 4, dtype=torch.float64))
    assert "random" in str(info.value.__cause__)

"""pcrsolve.adapters.rnn: RNN/GRU/LSTM cells over time vs torch's own modules and loops."""

from __future__ import annotations

import pytest

import pcrsolve

torch = pytest.importorskip("torch")

from conftest import tolerance  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from pcrsolve.adapters.rnn import RNNSolution, cell_recurrence, run_cell  # noqa: E402

KINDS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


def _make(kind, input_size, hidden, dtype, gen, bias=True):
    """A cell of ``kind`` with fresh random weights, and the matching multi-step module."""
    if kind == "gru":
        cell, ref = nn.GRUCell, nn.GRU
        kw = {}
    elif kind == "lstm":
        cell, ref = nn.LSTMCell, nn.LSTM
        kw = {}
    else:
        cell, ref = nn.RNNCell, nn.RNN
        kw = {"nonlinearity": kind.split("_")[1]}
    c = cell(input_size, hidden, bias=bias, dtype=dtype, **kw)
    with torch.no_grad():
        for p in c.parameters():
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * 2 - 1)
                     / hidden**0.5)
    return c, ref(input_size, hidden, bias=bias, batch_first=True, dtype=dtype, **kw)


def _reference(cell, ref, u, h0, c0=None):
    """``nn.RNN``/``nn.GRU``/``nn.LSTM`` run on the *cell's* parameter tensors
    (``functional_call``), so that gradients reach the cell's parameters."""
    params = {f"{k}_l0": v for k, v in cell.named_parameters()}
    if c0 is None:
        out, hn = functional_call(ref, params, (u, h0[None]))
        return out, hn[0], None
    out, (hn, cn) = functional_call(ref, params, (u, (h0[None], c0[None])))
    return out, hn[0], cn[0]


def _loss(out, hn, cn, weight):
    loss = (out * weight).sum() + (hn**2).sum()
    return loss if cn is None else loss + (cn**2).sum()


def _max_rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.fixture
def gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_and_gradients_match_torch(kind, dtype, rng, gen):
    dt = getattr(torch, dtype)
    B, I, H = 3, 3, int(rng.integers(3, 7))
    T = int(rng.integers(64, 201))
    cell, ref = _make(kind, I, H, dt, gen)
    u = torch.randn(B, T, I, generator=gen, dtype=torch.float64).to(dt).requires_grad_()
    h0 = (0.5 * torch.randn(B, H, generator=gen, dtype=torch.float64)).to(dt).requires_grad_()
    c0 = None
    if kind == "lstm":
        c0 = (0.5 * torch.randn(B, H, generator=gen, dtype=torch.float64)).to(dt)
        c0.requires_grad_()
    weight = torch.randn(B, T, H, generator=gen, dtype=torch.float64).to(dt)
    leaves = [u, h0, *([c0] if c0 is not None else []), *cell.parameters()]

    sol = run_cell(cell, u, h0 if c0 is None else (h0, c0))
    assert isinstance(sol, RNNSolution) and sol.converged
    assert sol.outputs.shape == (B, T, H) and sol.outputs.dtype == dt
    out, hn, cn = _reference(cell, ref, u, h0, c0)
    got = torch.autograd.grad(_loss(sol.outputs, sol.h_n, sol.c_n, weight), leaves)
    want = torch.autograd.grad(_loss(out, hn, cn, weight), leaves)

    tol = 1e-12 if dtype == "float64" else tolerance(dtype, T)
    assert _max_rel(sol.outputs, out) <= tol
    assert _max_rel(sol.h_n, hn) <= tol
    if cn is not None:
        assert _max_rel(sol.c_n, cn) <= tol
        assert sol.cell_states.shape == (B, T, H)
        torch.testing.assert_close(sol.cell_states[:, -1], sol.c_n)
    # gradients: the adjoint solve vs backpropagation through time; rounding of both
    # grows with the length of the dependence chain
    gtol = 1e-10 if dtype == "float64" else 10 * tolerance(dtype, T)
    for g, r in zip(got, want, strict=True):
        assert _max_rel(g, r) <= gtol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("structure", ["dense", "diagonal"])
def test_analytic_jacobian_matches_autodiff(kind, structure, gen):
    H = 4
    cell, _ = _make(kind, 2, H, torch.float64, gen)
    u = torch.randn(3, 7, 2, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        rec = cell_recurrence(cell, u, structure=structure)
    w = rec.x0.shape[-1]
    x = torch.randn(2, 3, 7, w, generator=gen, dtype=torch.float64)  # extra leading axis
    idx = torch.tensor([6, 0, 3, 3, 1, 2, 5])
    J = rec.jacobian(x, idx)
    # reference: column j of every block is the forward-mode JVP with the basis vector e_j
    eye = torch.eye(w, dtype=torch.float64)
    cols = [torch.func.jvp(lambda v: rec.step(v, idx), (x,), (eye[j].expand_as(x),))[1]
            for j in range(w)]
    ref = torch.stack(cols, dim=-1)
    if structure == "diagonal":
        ref = torch.diagonal(ref, dim1=-2, dim2=-1)
    torch.testing.assert_close(J, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_modes_and_jacobian_sources_agree(kind, gen):
    cell, _ = _make(kind, 3, 4, torch.float64, gen)
    u = torch.randn(2, 96, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want = run_cell(cell, u, mode="sequential").outputs
        for opts in ({"jacobian": "autodiff"}, {"mode": "quasi"},
                     {"mode": "quasi", "jacobian": "autodiff"}, {"linear_method": "pcr"}):
            sol = run_cell(cell, u, **opts)
            assert sol.converged, opts
            torch.testing.assert_close(sol.outputs, want, rtol=1e-9, atol=1e-9)


def test_loop_of_the_cell_without_bias_and_sequence_first(gen):
    cell, _ = _make("gru", 3, 5, torch.float64, gen, bias=False)
    T, B = 80, 2
    u = torch.randn(T, B, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    sol = run_cell(cell, u, h0, batch_first=False)
    assert sol.outputs.shape == (T, B, 5) and sol.states.shape == (B, T, 5)
    hs, h = [], h0
    for t in range(T):
        h = cell(u[t], h)
        hs.append(h)
    loop = torch.stack(hs)
    torch.testing.assert_close(sol.outputs, loop, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sol.h_n, h, rtol=1e-12, atol=1e-12)
    leaves = [u, h0, cell.weight_ih, cell.weight_hh]
    got = torch.autograd.grad(sol.outputs.sin().sum(), leaves)
    want = torch.autograd.grad(loop.sin().sum(), leaves)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_unbatched_inputs_and_broadcast_h0(gen):
    cell, _ = _make("lstm", 2, 3, torch.float64, gen)
    u = torch.randn(64, 2, generator=gen, dtype=torch.float64)       # (T, I): unbatched
    with torch.no_grad():
        sol = run_cell(cell, u)
    assert sol.outputs.shape == (64, 3) and sol.h_n.shape == (3,) and sol.c_n.shape == (3,)
    h, c = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for t in range(64):
            h, c = cell(u[t], (h, c))
    torch.testing.assert_close(sol.h_n, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sol.c_n, c, rtol=1e-12, atol=1e-12)

    # one h0 shared by the batch: its gradient is the sum over the batch
    ub = torch.randn(4, 64, 2, generator=gen, dtype=torch.float64)
    h0 = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    sol = run_cell(cell, ub, (h0, c0))
    (g_h0, g_c0) = torch.autograd.grad(sol.outputs.sum() + sol.c_n.sum(), [h0, c0])
    out, _, cn = _reference(cell, nn.LSTM(2, 3, batch_first=True, dtype=torch.float64), ub,
                            h0.expand(4, 3), c0.expand(4, 3))
    r_h0, r_c0 = torch.autograd.grad(out.sum() + cn.sum(), [h0, c0])
    torch.testing.assert_close(g_h0, r_h0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_c0, r_c0, rtol=1e-10, atol=1e-12)


def test_no_grad_and_parameters_only(gen):
    cell, ref = _make("rnn_tanh", 3, 4, torch.float64, gen)
    u = torch.randn(2, 70, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        assert cell_recurrence(cell, u).params is None
        assert not run_cell(cell, u).outputs.requires_grad
    # inputs without grad, parameters with: only the parameters get gradients
    sol = run_cell(cell, u)
    assert sol.outputs.requires_grad
    got = torch.autograd.grad(sol.outputs.sum(), list(cell.parameters()))
    out, _, _ = _reference(cell, ref, u, torch.zeros(2, 4, dtype=torch.float64))
    want = torch.autograd.grad(out.sum(), list(cell.parameters()))
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_half_precision_cell_is_computed_in_float32(gen):
    cell, _ = _make("gru", 3, 4, torch.float32, gen)
    u = torch.randn(2, 64, 3, generator=gen)
    half = nn.GRUCell(3, 4, dtype=torch.bfloat16)
    half.load_state_dict(cell.state_dict())
    with torch.no_grad():
        sol = run_cell(half, u.to(torch.bfloat16))
        cell.load_state_dict(half.state_dict())  # the bfloat16-rounded weights
        want = run_cell(cell, u.to(torch.bfloat16).float(), mode="sequential").outputs
    assert sol.outputs.dtype == torch.bfloat16 and sol.states.dtype == torch.float32
    torch.testing.assert_close(sol.states, want, rtol=1e-5, atol=1e-5)


class _CustomGRU(nn.GRUCell):
    def forward(self, input, hx=None):
        return 2 * super().forward(input, hx)


def test_bad_arguments_are_named():
    cell = nn.GRUCell(3, 4, dtype=torch.float64)
    u = torch.zeros(2, 10, 3, dtype=torch.float64)
    cases = [
        (lambda: run_cell(nn.Linear(3, 4), u), r"`cell` must be one of"),
        (lambda: run_cell(nn.GRU(3, 4), u), r"`cell` must be one of.*got GRU"),
        (lambda: run_cell(_CustomGRU(3, 4, dtype=torch.float64), u),
         r"`cell` of type _CustomGRU overrides GRUCell.forward"),
        (lambda: run_cell(cell, u, jvp=lambda x, l, v: v), r"`jvp` is set by run_cell"),
        (lambda: run_cell(cell, torch.zeros(2, 10, 5, dtype=torch.float64)),
         r"`inputs` .*input_size = 3.*\(2, 10, 5\)"),
        (lambda: run_cell(cell, torch.zeros(2, 0, 3, dtype=torch.float64)),
         r"`inputs` must hold at least one time step"),
        (lambda: run_cell(cell, torch.zeros(0, 2, 3, dtype=torch.float64), batch_first=False),
         r"`inputs` must hold at least one time step"),
        (lambda: run_cell(cell, torch.zeros(3, dtype=torch.float64)), r"`inputs` .*2 dims"),
        (lambda: run_cell(cell, [[0.0] * 3]), r"`inputs` must be a torch.Tensor"),
        (lambda: run_cell(cell, u.float()), r"`inputs` must have the cell's dtype"),
        (lambda: run_cell(cell, u, torch.zeros(2, 5, dtype=torch.float64)),
         r"`h0` must have shape \(\.\.\., 4\)"),
        (lambda: run_cell(cell, u, torch.zeros(3, 4, dtype=torch.float64)),
         r"`h0` batch dims"),
        (lambda: run_cell(cell, u, torch.zeros(5, 2, 4, dtype=torch.float64)),
         r"`h0` batch dims .* must broadcast to"),
        (lambda: run_cell(nn.LSTMCell(3, 4, dtype=torch.float64), u,
                          torch.zeros(2, 4, dtype=torch.float64)), r"`h0` .*pair \(h0, c0\)"),
        (lambda: run_cell(nn.LSTMCell(3, 4, dtype=torch.float64), u,
                          (None, torch.zeros(2, 3, dtype=torch.float64))), r"`h0\[1\] \(c0\)`"),
        (lambda: run_cell(cell, u, jacobian="numeric"), r"`jacobian` must be one of"),
        (lambda: run_cell(cell, u, params=[cell.weight_hh]), r"`params` is set by run_cell"),
        (lambda: run_cell(cell, u, mode="fast"), r"`mode` must be one of"),
    ]
    for fn, match in cases:
        with pytest.raises(pcrsolve.InputError, match=match):
            fn()

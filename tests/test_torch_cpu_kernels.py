"""The compiled CPU kernels (numba) behind torch CPU tensors.

``TorchBackend.fast_linear`` hands CPU tensors that the autograd tape would not record to
:mod:`pcrsolve.backends.numba_kernels` (as NumPy views) and wraps the result back. Checked
against the float64 loop and a dense solve: every structure, batches (broadcast ``A`` and
``x0``), both directions, odd and prime lengths, L = 0, 1, 2, float32/float64 (half
precision through float32), non-contiguous inputs; inputs that require grad refuse the
kernel and ``auto`` falls back to the differentiable path; ``TRITON_INTERPRET=1`` keeps the
Triton kernels (the tests in test_kernels.py) where they apply.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

import numpy as np
import pytest
from conftest import tolerance
from linear_problems import random_system, reference_solve, rel_err
from pcrsolve.backends import get_backend

import pcrsolve
from pcrsolve.linear import estimate_costs

torch = pytest.importorskip("torch")
pytest.importorskip("numba")
from pcrsolve.backends import numba_kernels  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: Whether Triton's kernels run under its interpreter in this session (conftest sets the
#: variable on machines without a GPU, before any kernel module is imported).
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(autouse=True)
def _numba_not_triton(monkeypatch):
    """The numba kernels, not the Triton interpreter (conftest sets TRITON_INTERPRET=1).

    Triton's modules are imported first, while the variable is still set: Triton fixes
    the interpreter mode when its kernels are decorated, and test_kernels.py needs it.
    """
    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("pcrsolve.backends.triton_scan")
        importlib.import_module("pcrsolve.backends.triton_dense")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("PCRSOLVE_NO_NUMBA", raising=False)


@pytest.fixture
def calls(monkeypatch):
    """The arguments of every call of ``numba_kernels.solve``."""
    seen = []
    solve = numba_kernels.solve

    def spy(*args, **kwargs):
        seen.append(args)
        return solve(*args, **kwargs)

    monkeypatch.setattr(numba_kernels, "solve", spy)
    return seen


def _t(a, dtype="float64"):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DTYPES.get(dtype, dtype))


def _dense_solve(A, b, x0, structure, reverse):
    """The solution by a dense (triangular) solve of the assembled float64 system."""
    system = pcrsolve.BidiagonalSystem(A, b, x0, structure=structure, reverse=reverse)
    M, r = system.to_dense()
    X = np.linalg.solve(M, r[..., None])[..., 0]
    return X.reshape(*system.batch_shape, system.length, system.width)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("w", [1, 2, 3, 5, 16])
@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_kernel_matches_loop_and_dense_solve(rng, calls, structure, w, reverse, dtype):
    for L in (1, 2, 37, 101):
        A, b, x0 = random_system(rng, structure, L, w, batch=(3,), a_batch=(1,))
        x0 = x0[:1]  # broadcast over the batch
        system = pcrsolve.BidiagonalSystem(_t(A, dtype), _t(b, dtype), _t(x0, dtype),
                                           structure=structure, reverse=reverse)
        x = pcrsolve.solve_linear(system, method="kernel")
        assert isinstance(x, torch.Tensor) and x.dtype == DTYPES[dtype]
        assert tuple(x.shape) == (3, L, w)
        Ac, bc, xc = (a.astype(dtype).astype(np.float64) for a in (A, b, x0))
        tol = tolerance(dtype, L)
        assert rel_err(x.double().numpy(), reference_solve(Ac, bc, xc, structure, reverse)) \
            <= tol, L
        if L * w <= 400:
            assert rel_err(x.double().numpy(), _dense_solve(Ac, bc, xc, structure, reverse)) \
                <= tol + 1e-12, L
    assert len(calls) == 4  # every solve went through the numba kernels


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_kernel_agrees_with_generic_solvers(rng, structure):
    A, b, x0 = random_system(rng, structure, 257, 4, batch=(2, 3), a_batch=(3,))
    for reverse in (False, True):
        system = pcrsolve.BidiagonalSystem(_t(A), _t(b), _t(x0), structure=structure,
                                           reverse=reverse)
        kernel = pcrsolve.solve_linear(system, method="kernel")
        for method in ("sequential", "cr"):
            torch.testing.assert_close(kernel, pcrsolve.solve_linear(system, method=method),
                                       rtol=1e-12, atol=1e-12)


def test_inputs_are_shared_not_copied(rng, calls):
    A, b, x0 = random_system(rng, "diagonal", 64, 3, batch=(2,))
    tA, tb, tx = _t(A), _t(b), _t(x0)
    system = pcrsolve.BidiagonalSystem(tA, tb, tx, structure="diagonal")
    pcrsolve.solve_linear(system, method="kernel")
    (args,) = calls
    for given, passed in zip((tA, tb, tx), args[:3], strict=True):
        assert np.shares_memory(given.numpy(), passed)


def test_non_contiguous_inputs(rng, calls):
    L, w = 45, 3
    A, b, x0 = random_system(rng, "dense", L, w, batch=(2,))
    # transposed blocks, every other step of a longer b, an expanded (stride 0) x0
    At = _t(np.swapaxes(A, -1, -2).copy()).transpose(-1, -2)
    bb = np.repeat(b, 2, axis=-2)
    bt = _t(bb)[:, ::2]
    xt = _t(x0[:1]).expand(2, w)
    assert not (At.is_contiguous() or bt.is_contiguous() or xt.is_contiguous())
    for reverse in (False, True):
        system = pcrsolve.BidiagonalSystem(At, bt, xt, reverse=reverse)
        x = pcrsolve.solve_linear(system, method="kernel")
        ref = reference_solve(A, bb[:, ::2], x0[:1], "dense", reverse)
        assert rel_err(x.numpy(), ref) <= tolerance("float64", L)
    # a diagonal system read from a strided slice of a dense one's storage
    Ad = _t(rng.uniform(-0.9, 0.9, (2, L, 2 * w)))[..., ::2]
    system = pcrsolve.BidiagonalSystem(Ad, bt, structure="diagonal")
    x = pcrsolve.solve_linear(system, method="kernel")
    ref = reference_solve(Ad.numpy(), bb[:, ::2], None, "diagonal")
    assert rel_err(x.numpy(), ref) <= tolerance("float64", L)
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_solved_in_float32(rng, dtype):
    A, b, x0 = random_system(rng, "scalar", 40, 2, batch=(2,))
    system = pcrsolve.BidiagonalSystem(_t(A, dtype), _t(b, dtype), _t(x0, dtype),
                                       structure="scalar")
    x = pcrsolve.solve_linear(system, method="kernel")
    assert x.dtype == dtype and tuple(x.shape) == (2, 40, 2)
    ref = pcrsolve.solve_linear(system, method="sequential")
    torch.testing.assert_close(x, ref)


def test_empty_systems(rng):
    for L, w, batch in ((0, 2, (3,)), (5, 2, (0,))):
        b = torch.zeros((*batch, L, w), dtype=torch.float64)
        system = pcrsolve.BidiagonalSystem(torch.zeros((*batch, L, w)).double(), b,
                                           structure="diagonal")
        x = pcrsolve.solve_linear(system, method="kernel")
        assert tuple(x.shape) == (*batch, L, w)


def test_auto_picks_the_kernel_where_it_wins(rng, calls):
    A, b, x0 = random_system(rng, "diagonal", 4096, 4, batch=(8,))
    system = pcrsolve.BidiagonalSystem(_t(A), _t(b), _t(x0), structure="diagonal")
    costs = estimate_costs(system)
    assert "kernel" in costs and costs["kernel"] < min(costs["cr"], costs["sequential"])
    assert pcrsolve.choose_method(system) == "kernel"
    x = pcrsolve.solve_linear(system)
    assert len(calls) == 1
    assert rel_err(x.numpy(), reference_solve(A, b, x0, "diagonal")) <= tolerance("float64")
    # two steps or fewer stay with the loop
    short = pcrsolve.BidiagonalSystem(_t(A[:, :2]), _t(b[:, :2]), structure="diagonal")
    assert pcrsolve.choose_method(short) == "sequential"


def test_requires_grad_refuses_the_kernel_and_auto_stays_differentiable(rng, calls):
    A, b, x0 = random_system(rng, "diagonal", 300, 3)
    a = _t(A).requires_grad_()
    system = pcrsolve.BidiagonalSystem(a, _t(b), _t(x0), structure="diagonal")
    assert get_backend(system.xp).fast_linear(system) is None
    assert pcrsolve.choose_method(system) != "kernel"
    with pytest.raises(pcrsolve.InputError, match="kernel"):
        pcrsolve.solve_linear(system, method="kernel")
    x = pcrsolve.solve_linear(system)
    assert x.requires_grad
    (g,) = torch.autograd.grad(x.sum(), a)
    a2 = a.detach().clone().requires_grad_()
    seq = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(a2, _t(b), _t(x0),
                                                          structure="diagonal"),
                                method="sequential")
    (g2,) = torch.autograd.grad(seq.sum(), a2)
    torch.testing.assert_close(g, g2, rtol=1e-10, atol=1e-12)
    assert not calls
    # with the tape off nothing would be recorded: the kernel runs
    with torch.no_grad():
        x = pcrsolve.solve_linear(system, method="kernel")
    assert not x.requires_grad and len(calls) == 1
    torch.testing.assert_close(x, seq.detach())


def test_no_numba_switch_turns_the_kernel_off(rng, monkeypatch):
    monkeypatch.setenv("PCRSOLVE_NO_NUMBA", "1")
    A, b, _ = random_system(rng, "scalar", 500, 1)
    system = pcrsolve.BidiagonalSystem(_t(A), _t(b), structure="scalar")
    assert get_backend(system.xp).fast_linear(system) is None
    assert "kernel" not in estimate_costs(system)
    assert pcrsolve.choose_method(system) != "kernel"
    with pytest.raises(pcrsolve.InputError, match="kernel"):
        pcrsolve.solve_linear(system, method="kernel")


def test_triton_interpreter_keeps_triton_where_it_applies(rng, monkeypatch, calls):
    pytest.importorskip("triton")
    if not INTERPRETED:
        pytest.skip("Triton's kernels were imported compiled (TRITON_INTERPRET was not 1)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    A, b, x0 = random_system(rng, "diagonal", 20, 2)
    system = pcrsolve.BidiagonalSystem(_t(A), _t(b), _t(x0), structure="diagonal")
    # the interpreter is a test vehicle: auto never prices it
    assert "kernel" not in estimate_costs(system)
    x = pcrsolve.solve_linear(system, method="kernel")
    assert not calls  # Triton ran
    assert rel_err(x.numpy(), reference_solve(A, b, x0, "diagonal")) <= tolerance("float64")
    # dense blocks wider than 16 have no Triton kernel: the numba one answers
    A, b, x0 = random_system(rng, "dense", 6, 17)
    system = pcrsolve.BidiagonalSystem(_t(A), _t(b), _t(x0))
    x = pcrsolve.solve_linear(system, method="kernel")
    assert len(calls) == 1
    assert rel_err(x.numpy(), reference_solve(A, b, x0, "dense")) <= tolerance("float64")

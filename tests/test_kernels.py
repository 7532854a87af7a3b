"""Fused Triton kernels against the float64 reference loop and the generic path.

On machines without a GPU they run under the Triton interpreter (TRITON_INTERPRET=1, set
in conftest.py), which is slow: sizes here are small.
"""

from __future__ import annotations

import numpy as np
import pytest
from linear_problems import random_system, reference_solve, rel_err

import pcrsolve

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from pcrsolve.backends.triton_scan import diagonal_scan  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float64: 1e-13, torch.float32: 2e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3}


def _t(a, dtype):
    return torch.as_tensor(a, device=DEVICE).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("structure", ["diagonal", "scalar"])
def test_kernel_matches_reference(rng, structure, reverse, dtype):
    L = int(rng.choice([1, 2, 19, 41]))
    A, b, x0 = random_system(rng, structure, L, 3, batch=(2,))
    system = pcrsolve.BidiagonalSystem(_t(A, dtype), _t(b, dtype), _t(x0, dtype),
                                       structure=structure, reverse=reverse)
    x = pcrsolve.solve_linear(system, method="kernel")
    assert x.dtype == dtype and tuple(x.shape) == (2, L, 3)
    # reference on the rounded inputs, in float64
    ref = reference_solve(*(t.double().cpu().numpy() for t in (system.A, system.b)),
                          x0=system.x0.double().cpu().numpy(), structure=structure,
                          reverse=reverse)
    assert rel_err(x.double().cpu().numpy(), ref) <= TOL[dtype]


@pytest.mark.parametrize("chunk", [2, 4, 16])
def test_kernel_recursion_over_chunks_and_broadcast_batch(rng, chunk):
    # L = 70 with chunk 2 or 4 needs the recursion over chunk maps to go two levels deep
    A, b, x0 = random_system(rng, "diagonal", 70, 5, batch=(3,), a_batch=())
    x = diagonal_scan(_t(A, torch.float64), _t(b, torch.float64), _t(x0, torch.float64),
                      scalar=False, chunk=chunk)
    assert rel_err(x.cpu().numpy(), reference_solve(A, b, x0, "diagonal")) <= 1e-13


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("structure", ["diagonal", "scalar"])
def test_one_and_two_pass_tile_scans(rng, structure, passes, dtype):
    # lengths below, at and across tile boundaries (tiles of 16-256 steps), a prime among
    # them; widths below and above one feature block; both directions
    L = int(rng.choice([1, 16, 17, 600, 1009]))
    w = int(rng.choice([1, 3, 8, 20]))
    reverse = bool(rng.integers(2))
    A, b, x0 = random_system(rng, structure, L, w, batch=(2,))
    x = diagonal_scan(_t(A, dtype), _t(b, dtype), _t(x0, dtype), scalar=structure == "scalar",
                      reverse=reverse, passes=passes)
    ref = reference_solve(*(_t(t, dtype).double().cpu().numpy() for t in (A, b)),
                          x0=_t(x0, dtype).double().cpu().numpy(), structure=structure,
                          reverse=reverse)
    assert x.dtype == dtype
    assert rel_err(x.double().cpu().numpy(), ref) <= TOL[dtype], (L, w, reverse)


def test_tile_scan_plan_fills_the_device_and_checks_arguments():
    from pcrsolve.backends.triton_scan import plan

    cpu = torch.device("cpu")  # 64 programs wanted off CUDA
    # many chains: wide feature blocks, one pass over all L steps
    bw, tile, per_chunk = plan(64, 10_000, 256, False, cpu)
    assert per_chunk >= 10_000 and bw >= 8 and tile * bw <= 2048
    # one chain of 64 features: narrow blocks, then chunks of whole tiles (two passes)
    bw, tile, per_chunk = plan(1, 1_000_003, 64, False, cpu)
    assert bw == 8 and per_chunk % tile == 0 and per_chunk < 1_000_003
    assert (1_000_003 // per_chunk + 1) * (64 // bw) >= 64
    with pytest.raises(ValueError, match="`passes`"):
        diagonal_scan(torch.ones(4), torch.ones(4, 1), None, scalar=True, passes=3)
    with pytest.raises(ValueError, match="`chunk`"):
        diagonal_scan(torch.ones(4), torch.ones(4, 1), None, scalar=True, chunk=1)


def test_kernel_agrees_with_generic_path_and_zero_length(rng):
    A, b, x0 = random_system(rng, "scalar", 33, 2)
    system = pcrsolve.BidiagonalSystem(_t(A, torch.float32), _t(b, torch.float32),
                                       structure="scalar")
    generic = pcrsolve.solve_linear(system, method="cr")
    kernel = pcrsolve.solve_linear(system, method="kernel")
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(kernel, generic, rtol=50 * eps, atol=50 * eps)
    empty = pcrsolve.BidiagonalSystem(_t(np.zeros(0), torch.float32),
                                      _t(np.zeros((0, 2)), torch.float32), structure="scalar")
    assert tuple(pcrsolve.solve_linear(empty, method="kernel").shape) == (0, 2)
    del x0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32],
                         ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("w", [1, 3, 4, 16])
def test_dense_kernel_matches_reference(rng, w, reverse, dtype):
    L = int(rng.choice([1, 7, 45]))
    A, b, x0 = random_system(rng, "dense", L, w, batch=(2,), scale=1.1)
    system = pcrsolve.BidiagonalSystem(_t(A, dtype), _t(b, dtype), _t(x0, dtype),
                                       reverse=reverse)
    x = pcrsolve.solve_linear(system, method="kernel")
    ref = reference_solve(*(t.double().cpu().numpy() for t in (system.A, system.b)),
                          x0=system.x0.double().cpu().numpy(), structure="dense",
                          reverse=reverse)
    assert rel_err(x.double().cpu().numpy(), ref) <= TOL[dtype] * 5


def test_dense_kernel_recursion_and_shared_blocks(rng):
    from pcrsolve.backends.triton_dense import dense_scan

    A, b, x0 = random_system(rng, "dense", 50, 2, batch=(3,), a_batch=())
    x = dense_scan(_t(A, torch.float64), _t(b, torch.float64), _t(x0, torch.float64), chunk=2)
    assert rel_err(x.cpu().numpy(), reference_solve(A, b, x0, "dense")) <= 1e-13


def test_kernel_refuses_what_it_cannot_do(rng, monkeypatch):
    monkeypatch.setenv("PCRSOLVE_NO_NUMBA", "1")  # NumPy's kernels are the numba ones
    A, b, _ = random_system(rng, "dense", 8, 17)
    dense = pcrsolve.BidiagonalSystem(_t(A, torch.float32), _t(b, torch.float32))
    with pytest.raises(pcrsolve.InputError, match="kernel"):
        pcrsolve.solve_linear(dense, method="kernel")
    with pytest.raises(pcrsolve.InputError, match="kernel"):
        pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(np.ones((4, 2)), np.ones((4, 2)),
                                                        structure="diagonal"), method="kernel")
    # inputs that require grad keep the differentiable generic path under method="auto"
    a = _t(np.full((5, 2), 0.5), torch.float64).requires_grad_()
    system = pcrsolve.BidiagonalSystem(a, _t(np.ones((5, 2)), torch.float64),
                                       structure="diagonal")
    assert pcrsolve.solve_linear(system).requires_grad

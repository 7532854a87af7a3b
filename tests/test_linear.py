"""Linear solvers against the float64 reference loop and a dense solve of the matrix."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from conftest import tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from linear_problems import STRUCTURES, random_system, reference_solve, rel_err

import pcrsolve

METHODS = ("sequential", "pcr", "cr", "chunked", "auto")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_methods_match_reference_loop(backend, rng, method, structure, reverse, dtype):
    L = int(rng.choice([37, 64, 100]))
    w = int(rng.integers(1, 5))
    A, b, x0 = random_system(rng, structure, L, w, batch=(2,))
    system = pcrsolve.BidiagonalSystem(backend(A, dtype), backend(b, dtype), backend(x0, dtype),
                                       structure=structure, reverse=reverse)
    x = pcrsolve.solve_linear(system, method=method)
    assert tuple(x.shape) == (2, L, w)
    assert str(x.dtype).endswith(dtype)
    ref = reference_solve(A, b, x0, structure, reverse)
    assert rel_err(backend.back(x), ref) <= tolerance(dtype, L)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", METHODS)
def test_methods_match_dense_triangular_solve(backend, rng, method, structure, reverse):
    L, w = 13, 3
    A, b, x0 = random_system(rng, structure, L, w, scale=1.3)  # not contracting: harder
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0),
                                       structure=structure, reverse=reverse)
    M, r = system.to_dense()
    M, r = backend.back(M), backend.back(r)
    ref = scipy.linalg.solve_triangular(M, r, lower=not reverse).reshape(L, w)
    x = backend.back(pcrsolve.solve_linear(system, method=method))
    assert rel_err(x, ref) <= tolerance("float64", L, factor=500)


def test_dense_matrix_is_built_independently(rng):
    # to_dense is itself checked against a matrix assembled here block by block
    L, w = 5, 2
    A, b, x0 = random_system(rng, "dense", L, w)
    M, r = pcrsolve.BidiagonalSystem(A, b, x0).to_dense()
    expect = np.eye(L * w)
    for l in range(1, L):
        expect[l * w:(l + 1) * w, (l - 1) * w:l * w] = -A[l]
    rhs = b.copy()
    rhs[0] += A[0] @ x0
    np.testing.assert_allclose(M, expect, rtol=0, atol=0)
    np.testing.assert_allclose(r, rhs.reshape(-1), rtol=1e-15)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_transpose_is_the_adjoint(backend, rng, structure, reverse):
    L, w = 11, 3
    A, b, x0 = random_system(rng, structure, L, w)
    g = rng.standard_normal((L, w))
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0),
                                       structure=structure, reverse=reverse)
    M, _ = system.to_dense()
    y = pcrsolve.solve_linear(system.transpose(backend(g)), method="cr")
    np.testing.assert_allclose(backend.back(M).T @ backend.back(y).reshape(-1), g.reshape(-1),
                               rtol=1e-10, atol=1e-10)


def _reference_residual(A, b, x0, x, structure, reverse):
    """``x_l - A_l x_{l-1} - b_l`` (``x_{l+1}`` when reverse), step by step in float64."""
    L, w = x.shape[-2:]
    if structure == "dense":
        dense = A
    else:
        dense = (A[..., None] if structure == "diagonal" else A[..., None, None]) * np.eye(w)
    out = np.empty(x.shape)
    for l in range(L):
        k = l + 1 if reverse else l - 1
        prev = x0 if k in (-1, L) else x[..., k, :]
        out[..., l, :] = x[..., l, :] - np.einsum("...ij,...j->...i", dense[..., l, :, :],
                                                  prev) - b[..., l, :]
    return out


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_residual_and_neighbours_match_reference(backend, rng, structure, reverse):
    A, b, x0 = random_system(rng, structure, 20, 2, batch=(3,))
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0), structure=structure,
                                       reverse=reverse)
    exact = reference_solve(A, b, x0, structure, reverse)
    eps = float(np.finfo(np.float64).eps)
    scale = float(np.max(np.abs(exact)))
    assert float(np.max(np.abs(backend.back(system.residual(backend(exact)))))) \
        <= 8 * eps * scale
    x = rng.standard_normal(exact.shape)  # any candidate: the residual is a plain formula
    np.testing.assert_allclose(backend.back(system.residual(backend(x))),
                               _reference_residual(A, b, x0, x, structure, reverse),
                               rtol=0, atol=64 * eps * float(np.max(np.abs(x))))
    shifted = np.concatenate([x[..., 1:, :], x0[..., None, :]], axis=-2) if reverse else \
        np.concatenate([x0[..., None, :], x[..., :-1, :]], axis=-2)
    np.testing.assert_array_equal(backend.back(system.neighbours(backend(x))), shifted)


@pytest.mark.parametrize("method", METHODS)
def test_broadcast_batch_dims(backend, rng, method):
    # A shared across a batch, x0 per element, extra leading dims
    L, w = 17, 2
    A, b, x0 = random_system(rng, "dense", L, w, batch=(4, 3), a_batch=(3,))
    x0 = x0[:, :1, :]  # (4, 1, w) broadcasts against (4, 3)
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0))
    assert system.batch_shape == (4, 3)
    x = backend.back(pcrsolve.solve_linear(system, method=method))
    assert rel_err(x, reference_solve(A, b, x0, "dense")) <= tolerance("float64", L)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("L", [0, 1, 2, 3])
def test_tiny_lengths(backend, rng, method, L):
    A, b, x0 = random_system(rng, "diagonal", L, 3)
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0), structure="diagonal")
    x = backend.back(pcrsolve.solve_linear(system, method=method))
    assert x.shape == (L, 3)
    np.testing.assert_allclose(x, reference_solve(A, b, x0, "diagonal"), rtol=1e-14, atol=1e-14)


def test_default_x0_is_zero(backend, rng):
    A, b, _ = random_system(rng, "scalar", 9, 2)
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), structure="scalar")
    x = backend.back(pcrsolve.solve_linear(system, method="pcr"))
    np.testing.assert_allclose(x, reference_solve(A, b, None, "scalar"), rtol=1e-13)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 64, 1000])
def test_chunk_sizes(backend, rng, chunk_size):
    A, b, x0 = random_system(rng, "dense", 63, 2, batch=(2,))
    system = pcrsolve.BidiagonalSystem(backend(A), backend(b), backend(x0))
    x = backend.back(pcrsolve.solve_linear(system, method="chunked", chunk_size=chunk_size))
    assert rel_err(x, reference_solve(A, b, x0, "dense")) <= tolerance("float64", 63)


def test_half_precision_is_accumulated_in_float32(rng):
    torch = pytest.importorskip("torch")
    L, w = 200, 4
    A, b, x0 = random_system(rng, "diagonal", L, w)
    system = pcrsolve.BidiagonalSystem(torch.as_tensor(A, dtype=torch.bfloat16),
                                       torch.as_tensor(b, dtype=torch.bfloat16),
                                       torch.as_tensor(x0, dtype=torch.bfloat16),
                                       structure="diagonal")
    assert system.work_dtype == torch.float32
    x = pcrsolve.solve_linear(system, method="cr")
    assert x.dtype == torch.bfloat16
    # reference: the same rounded inputs, solved in float64
    rounded = [torch.as_tensor(t, dtype=torch.bfloat16).double().numpy() for t in (A, b, x0)]
    ref = reference_solve(*rounded[:2], x0=rounded[2], structure="diagonal")
    assert rel_err(x.double().numpy(), ref) <= 2 * float(torch.finfo(torch.bfloat16).eps)
    x16 = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(
        A.astype(np.float16), b.astype(np.float16), structure="diagonal"), method="pcr")
    assert x16.dtype == np.float16


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    L=st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7, 31, 61, 127, 128, 129]),
                st.integers(0, 300)),
    w=st.integers(1, 5),
    batch=st.lists(st.integers(1, 3), max_size=3).map(tuple),
    structure=st.sampled_from(STRUCTURES),
    method=st.sampled_from(METHODS),
    reverse=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_shape(L, w, batch, structure, method, reverse, dtype, seed):
    rng = np.random.default_rng(seed)
    A, b, x0 = random_system(rng, structure, L, w, batch=batch)
    system = pcrsolve.BidiagonalSystem(A.astype(dtype), b.astype(dtype), x0.astype(dtype),
                                       structure=structure, reverse=reverse)
    x = pcrsolve.solve_linear(system, method=method)
    assert x.shape == (*batch, L, w) and x.dtype == np.dtype(dtype)
    ref = reference_solve(A.astype(dtype), b.astype(dtype), x0.astype(dtype), structure, reverse)
    assert rel_err(np.asarray(x, np.float64), ref) <= tolerance(dtype, L)


def _auto_cases():
    wide = pcrsolve.BidiagonalSystem(np.zeros((64, 256, 256)), np.zeros((64, 256)),
                                     check_finite=False)
    long = pcrsolve.BidiagonalSystem(np.zeros(1 << 16), np.zeros((1 << 16, 1)),
                                     structure="scalar", check_finite=False)
    short = pcrsolve.BidiagonalSystem(np.zeros(8), np.zeros((8, 1)), structure="scalar",
                                      check_finite=False)
    return wide, long, short


def test_auto_prefers_loop_for_wide_short_and_cr_for_long_scalar(monkeypatch):
    # the generic path (no compiled kernel): the loop where the w^3 products cost more than
    # the per-step overhead they save, cyclic reduction for long cheap chains
    monkeypatch.setenv("PCRSOLVE_NO_NUMBA", "1")
    wide, long, short = _auto_cases()
    assert pcrsolve.choose_method(wide) == "sequential"
    assert pcrsolve.choose_method(long) in ("cr", "pcr")
    assert pcrsolve.choose_method(short) == "sequential"


def test_auto_takes_the_compiled_kernel_on_numpy_beyond_a_few_dozen_steps(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.delenv("PCRSOLVE_NO_NUMBA", raising=False)
    wide, long, short = _auto_cases()
    assert pcrsolve.choose_method(wide) in ("kernel", "sequential")  # memory-bound loops
    assert pcrsolve.choose_method(long) == "kernel"
    assert pcrsolve.choose_method(short) == "kernel"  # cheaper than the loop's fixed cost
    costs = pcrsolve.linear.estimate_costs(long)
    assert min(costs, key=costs.__getitem__) == "kernel"


@pytest.mark.parametrize("bad", ["no", "False", 1, 0, None, 1.0, [True]])
def test_reverse_must_be_a_bool(bad):
    A, b = np.full((4, 2), 0.5), np.ones((4, 2))
    with pytest.raises(pcrsolve.InvalidSystemError, match="`reverse` must be a bool"):
        pcrsolve.BidiagonalSystem(A, b, structure="diagonal", reverse=bad)


@pytest.mark.parametrize("flag", [True, False, np.True_, np.False_])
def test_reverse_accepts_python_and_numpy_bools(flag):
    A, b = np.full((4, 1), 0.5), np.arange(1.0, 5.0)[:, None]
    x = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(A, b, structure="diagonal",
                                                        reverse=flag))
    # forward: x_l = 0.5 x_{l-1} + b_l from x_0 = 0; reverse: from x_5 = 0 backwards
    expect = [1.0, 2.5, 4.25, 6.125] if not flag else [3.25, 4.5, 5.0, 4.0]
    np.testing.assert_allclose(x[:, 0], expect, rtol=1e-15)

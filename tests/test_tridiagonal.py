"""Block-tridiagonal systems: every solver against a dense float64 solve of the matrix.

The reference matrices are assembled here, block by block in NumPy, independently of
``TridiagonalSystem.to_dense`` and of ``TridiagonalSystem.normal_equations``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tolerance
from linear_problems import STRUCTURES, rel_err

import pcrsolve
from pcrsolve.tridiagonal import (
    TRIDIAGONAL_METHODS,
    TridiagonalSystem,
    _solve_cr,
    _solve_pcr,
    choose_tridiagonal_method,
    solve_tridiagonal,
)

METHODS = ("sequential", "pcr", "cr", "auto")
LENGTHS = (1, 2, 3, 7, 8, 33)


# ----------------------------------------------------------------------------------------
# Independent NumPy float64 references

def dense_blocks(A: np.ndarray, structure: str, w: int) -> np.ndarray:
    """Blocks ``(..., L, <block>)`` as dense ``(..., L, w, w)`` matrices."""
    A = np.asarray(A, np.float64)
    if structure == "diagonal":
        return A[..., None] * np.eye(w)
    if structure == "scalar":
        return A[..., None, None] * np.eye(w)
    return A


def assemble(lower, diag, upper, structure: str, w: int) -> np.ndarray:
    """The ``(..., L*w, L*w)`` block-tridiagonal matrix, ignoring ``lower_1`` and ``upper_L``."""
    lo, di, up = (dense_blocks(a, structure, w) for a in (lower, diag, upper))
    batch = np.broadcast_shapes(lo.shape[:-3], di.shape[:-3], up.shape[:-3])
    L = di.shape[-3]
    M = np.zeros((*batch, L * w, L * w))
    for l in range(L):
        rows = slice(l * w, (l + 1) * w)
        M[..., rows, rows] = di[..., l, :, :]
        if l > 0:
            M[..., rows, (l - 1) * w:l * w] = lo[..., l, :, :]
        if l < L - 1:
            M[..., rows, (l + 1) * w:(l + 2) * w] = up[..., l, :, :]
    return M


def dense_solve(M: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, float]:
    """Float64 solution ``(..., L, w)`` of ``M x = rhs`` and the worst 2-norm condition."""
    L, w = rhs.shape[-2:]
    batch = np.broadcast_shapes(M.shape[:-2], rhs.shape[:-2])
    M = np.broadcast_to(M, (*batch, L * w, L * w))
    r = np.broadcast_to(rhs, (*batch, L, w)).reshape(*batch, L * w, 1)
    x = np.linalg.solve(M, r)[..., 0].reshape(*batch, L, w)
    return x, float(np.max(np.linalg.cond(M)))


def dense_normal_equations(J, r, lam, D, structure, scaling_structure):
    """``G^T G + λ D`` and ``-G^T r`` with ``G = I - (J_l below the diagonal)``, densely."""
    r = np.asarray(r, np.float64)
    L, w = r.shape[-2:]
    Jd = dense_blocks(J, structure, w)
    batch = np.broadcast_shapes(Jd.shape[:-3], r.shape[:-2], np.shape(lam))
    G = np.broadcast_to(np.eye(L * w), (*batch, L * w, L * w)).copy()
    for l in range(1, L):
        G[..., l * w:(l + 1) * w, (l - 1) * w:l * w] = -Jd[..., l, :, :]
    Gt = np.swapaxes(G, -1, -2)
    if D is None:
        Dd = np.eye(L * w)
    else:
        blocks = dense_blocks(D, scaling_structure, w)
        Dd = np.zeros((*blocks.shape[:-3], L * w, L * w))
        for l in range(L):
            Dd[..., l * w:(l + 1) * w, l * w:(l + 1) * w] = blocks[..., l, :, :]
    lam = np.asarray(lam, np.float64)[..., None, None]
    M = Gt @ G + lam * Dd
    rhs = -(Gt @ np.broadcast_to(r, (*batch, L, w)).reshape(*batch, L * w, 1))[..., 0]
    return M, rhs.reshape(*batch, L, w)


# ----------------------------------------------------------------------------------------
# Random problems

def random_jacobians(rng, structure: str, L: int, w: int, batch=(), scale=0.6) -> np.ndarray:
    if structure == "dense":
        return scale * rng.standard_normal((*batch, L, w, w)) / np.sqrt(w)
    if structure == "diagonal":
        return rng.uniform(-scale - 0.3, scale + 0.3, (*batch, L, w))
    return rng.uniform(-scale - 0.3, scale + 0.3, (*batch, L))


def random_dominant(rng, structure: str, L: int, w: int, batch=()):
    """A non-symmetric, block diagonally dominant system (NumPy float64)."""
    shape = {"dense": (L, w, w), "diagonal": (L, w), "scalar": (L,)}[structure]
    lower = rng.standard_normal((*batch, *shape)) / np.sqrt(w if structure == "dense" else 1)
    upper = rng.standard_normal((*batch, *shape)) / np.sqrt(w if structure == "dense" else 1)

    def size(A):  # an upper bound of each block's 2-norm, per step
        return np.abs(A).sum(axis=(-1, -2)) if structure == "dense" else (
            np.abs(A).max(axis=-1) if structure == "diagonal" else np.abs(A))

    margin = size(lower) + size(upper) + rng.uniform(0.5, 1.5, size(lower).shape)
    sign = rng.choice([-1.0, 1.0], margin.shape)  # dominant, but not definite
    if structure == "dense":
        diag = ((sign * margin)[..., None, None] * np.eye(w)
                + 0.1 * rng.standard_normal((*batch, L, w, w)) / w)
    elif structure == "diagonal":
        diag = (sign * margin)[..., None] * (1 + rng.uniform(0, 0.5, (*batch, L, w)))
    else:
        diag = sign * margin
    rhs = rng.standard_normal((*batch, L, w))
    return lower, diag, upper, rhs


def make_problem(rng, backend, kind, structure, L, w, batch, dtype):
    """``(system, reference solution, condition number)`` for one random problem."""
    if kind == "normal":
        J = random_jacobians(rng, structure, L, w, batch)
        r = rng.standard_normal((*batch, L, w))
        lam = rng.uniform(0.0, 1.0)
        Jc, rc = J.astype(dtype), r.astype(dtype)
        system = TridiagonalSystem.normal_equations(backend(Jc, dtype), backend(rc, dtype),
                                                    damping=lam, structure=structure)
        M, rhs = dense_normal_equations(Jc, rc, lam, None, structure, "diagonal")
    else:
        lo, di, up, rhs = (a.astype(dtype) for a in random_dominant(rng, structure, L, w,
                                                                     batch))
        system = TridiagonalSystem(*(backend(a, dtype) for a in (lo, di, up, rhs)),
                                   structure=structure)
        M = assemble(lo, di, up, structure, w)
    x, cond = dense_solve(M, np.asarray(rhs, np.float64))
    return system, x, cond


def solver_tolerance(dtype: str, L: int, cond: float) -> float:
    """Relative error bound: ``c * eps * cond(M)``, growing slowly with ``L``."""
    return tolerance(dtype, L, factor=20.0 * max(1.0, cond))


# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "dominant"])
@pytest.mark.parametrize("batch", [(), (2,)], ids=["nobatch", "batch"])
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_methods_match_dense_solve(backend, rng, dtype, method, structure, batch, kind):
    w = int(rng.integers(1, 5))
    for L in LENGTHS:
        system, ref, cond = make_problem(rng, backend, kind, structure, L, w, batch, dtype)
        x = solve_tridiagonal(system, method=method)
        assert tuple(x.shape) == (*batch, L, w)
        assert str(x.dtype).endswith(dtype)
        err = rel_err(backend.back(x), ref)
        assert err <= solver_tolerance(dtype, L, cond), (L, w, err, cond)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_longer_systems_and_methods_agree(backend, rng, method, structure):
    # lengths around powers of two, against the sequential (block Thomas) solve
    for L in (15, 16, 17, 100):
        system, ref, cond = make_problem(rng, backend, "normal", structure, L, 3, (2,), "float64")
        x = backend.back(solve_tridiagonal(system, method=method))
        assert rel_err(x, ref) <= solver_tolerance("float64", L, cond)


@pytest.mark.parametrize("method", ("sequential", "pcr", "cr"))
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ill_conditioned_normal_equations(backend, rng, dtype, structure, method):
    # expanding Jacobians and almost no damping: cond(G^T G) up to ~1e6; the error stays
    # within eps * cond (no pivoting is needed: every reduced system is SPD)
    for L in (7, 13, 33):
        J = random_jacobians(rng, structure, L, 3, (2,), scale=1.3).astype(dtype)
        r = rng.standard_normal((2, L, 3)).astype(dtype)
        system = TridiagonalSystem.normal_equations(backend(J, dtype), backend(r, dtype),
                                                    damping=1e-6, structure=structure)
        ref, cond = dense_solve(*dense_normal_equations(J, r, 1e-6, None, structure, ""))
        x = backend.back(solve_tridiagonal(system, method=method))
        assert rel_err(x, ref) <= solver_tolerance(dtype, L, cond), (L, cond)


@pytest.mark.parametrize("damping", ["zero", "float", "array"])
@pytest.mark.parametrize("scaling", [None, "scalar", "diagonal", "dense"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_normal_equations_match_dense_GtG(backend, rng, structure, scaling, damping):
    L, w, batch = 6, 3, (2,)
    J = random_jacobians(rng, structure, L, w, batch, scale=1.5)
    r = rng.standard_normal((*batch, L, w))
    lam = {"zero": 0.0, "float": 0.7, "array": rng.uniform(0.1, 2.0, batch)}[damping]
    D = None
    if scaling == "dense":
        S = rng.standard_normal((L, w, w))
        D = S @ np.swapaxes(S, -1, -2) + np.eye(w)
    elif scaling == "diagonal":
        D = rng.uniform(0.5, 2.0, (L, w))
    elif scaling == "scalar":
        D = rng.uniform(0.5, 2.0, (L,))
    system = TridiagonalSystem.normal_equations(
        backend(J), backend(r),
        damping=backend(lam) if damping == "array" else lam,
        scaling=None if D is None else backend(D),
        structure=structure, scaling_structure=scaling or "diagonal")
    order = {"scalar": 0, "diagonal": 1, "dense": 2}
    expect = max([structure, scaling or "scalar"], key=order.__getitem__)
    assert system.structure.name == expect
    M, rhs = (backend.back(a) for a in system.to_dense())
    M_ref, rhs_ref = dense_normal_equations(J, r, lam, D, structure, scaling or "diagonal")
    np.testing.assert_allclose(M, M_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(rhs, rhs_ref.reshape(*batch, L * w), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(M, np.swapaxes(M, -1, -2), rtol=0, atol=1e-13)  # symmetric
    assert np.all(np.linalg.eigvalsh(M) > 0)  # positive definite
    # the blocks themselves, against the formulas in the docstring
    Jd = dense_blocks(J, structure, w)
    upper = dense_blocks(backend.back(system.upper), expect, w)
    lower = dense_blocks(backend.back(system.lower), expect, w)
    np.testing.assert_allclose(upper[..., :-1, :, :], -np.swapaxes(Jd[..., 1:, :, :], -1, -2),
                               rtol=1e-15, atol=0)
    np.testing.assert_allclose(lower[..., 1:, :, :], -Jd[..., 1:, :, :], rtol=1e-15, atol=0)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_zero_damping_gives_the_newton_step(backend, rng, structure):
    # (G^T G) d = -G^T r  <=>  G d = -r: the bidiagonal recurrence d_l = J_l d_{l-1} - r_l
    L, w = 21, 3
    J = random_jacobians(rng, structure, L, w, (2,))
    r = rng.standard_normal((2, L, w))
    system = TridiagonalSystem.normal_equations(backend(J), backend(r), structure=structure)
    newton = pcrsolve.BidiagonalSystem(backend(J), backend(-r), structure=structure)
    expect = backend.back(pcrsolve.solve_linear(newton, method="sequential"))
    for method in ("sequential", "pcr", "cr"):
        d = backend.back(solve_tridiagonal(system, method=method))
        np.testing.assert_allclose(d, expect, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_to_dense_matches_assembly_and_ignores_the_unused_ends(backend, rng, structure):
    L, w = 5, 2
    lo, di, up, rhs = random_dominant(rng, structure, L, w, (3,))
    lo[:, 0] = np.nan  # lower_1 and upper_L multiply nothing: never read
    up[:, L - 1] = np.inf
    system = TridiagonalSystem(*(backend(a) for a in (lo, di, up, rhs)), structure=structure)
    M, r = (backend.back(a) for a in system.to_dense())
    with np.errstate(invalid="ignore"):  # the NaN/Inf end blocks times the identity
        expect = assemble(lo, di, up, structure, w)
    np.testing.assert_array_equal(M, expect)
    np.testing.assert_array_equal(r, rhs.reshape(3, L * w))
    for method in ("sequential", "pcr", "cr"):
        x = backend.back(solve_tridiagonal(system, method=method))
        assert np.all(np.isfinite(x))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_residual_vanishes_at_solution(backend, rng, structure):
    lo, di, up, rhs = random_dominant(rng, structure, 20, 2, (3,))
    system = TridiagonalSystem(*(backend(a) for a in (lo, di, up, rhs)), structure=structure)
    x = solve_tridiagonal(system, method="cr")
    res = backend.back(system.residual(x))
    assert res.shape == (3, 20, 2)
    assert float(np.max(np.abs(res))) < 1e-12
    M = assemble(lo, di, up, structure, 2)
    wrong = backend.back(x) + rng.standard_normal((3, 20, 2)) * 1e-3
    expect = (M @ wrong.reshape(3, 40, 1))[..., 0].reshape(3, 20, 2) - rhs
    np.testing.assert_allclose(backend.back(system.residual(backend(wrong))), expect,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_broadcast_batch_dims(backend, rng, method):
    # blocks shared across one batch dim, each block array with its own batch shape
    L, w = 13, 2
    lo, di, up, _ = random_dominant(rng, "dense", L, w, (3,))
    lo = lo[:1]  # (1, L, w, w): broadcasts against (3,)
    rhs = rng.standard_normal((4, 3, L, w))
    system = TridiagonalSystem(*(backend(a) for a in (lo, di, up, rhs)))
    assert system.batch_shape == (4, 3) and system.block_batch_shape == (3,)
    x = backend.back(solve_tridiagonal(system, method=method))
    ref, cond = dense_solve(assemble(lo, di, up, "dense", w), rhs)
    assert x.shape == (4, 3, L, w)
    assert rel_err(x, ref) <= solver_tolerance("float64", L, cond)


@pytest.mark.parametrize("method", METHODS)
def test_length_zero(backend, method):
    system = TridiagonalSystem(*(backend(np.zeros(s)) for s in
                                 ((0, 2), (0, 2), (0, 2), (0, 2))), structure="diagonal")
    assert tuple(solve_tridiagonal(system, method=method).shape) == (0, 2)


def test_half_precision_is_accumulated_in_float32(rng):
    torch = pytest.importorskip("torch")
    lo, di, up, rhs = random_dominant(rng, "dense", 33, 3)
    args = [torch.as_tensor(a, dtype=torch.bfloat16) for a in (lo, di, up, rhs)]
    system = TridiagonalSystem(*args)
    assert system.work_dtype == torch.float32
    ref, _ = dense_solve(assemble(*(a.double().numpy() for a in args[:3]), "dense", 3),
                            args[3].double().numpy())
    for method in ("sequential", "pcr", "cr"):
        x = solve_tridiagonal(system, method=method)
        assert x.dtype == torch.bfloat16
        # the float32 work is exact to ~eps32 * cond; the result is then rounded to bf16
        assert rel_err(x.double().numpy(), ref) <= float(torch.finfo(torch.bfloat16).eps)
    x16 = solve_tridiagonal(TridiagonalSystem(*(a.astype(np.float16) for a in
                                                (lo, di, up, rhs))), method="pcr")
    assert x16.dtype == np.float16


class _CountingNamespace:
    """Wraps an Array-API namespace and counts ``linalg.solve`` calls."""

    def __init__(self, xp):
        self._xp = xp
        self.solves = 0
        outer = self

        class _Linalg:
            def __getattr__(self, name):
                return getattr(xp.linalg, name)

            def solve(self, a, b):
                outer.solves += 1
                return xp.linalg.solve(a, b)

        self.linalg = _Linalg()

    def __getattr__(self, name):
        return getattr(self._xp, name)


@pytest.mark.parametrize("L", [2, 3, 7, 8, 9, 33, 64])
def test_number_of_levels(rng, L):
    # PCR: ceil(log2 L) levels and one final solve; CR: one solve per halving
    # (floor(log2 L) of them) and one at the base -- a batched block solve per level
    system, _, _ = make_problem(rng, lambda a, dt="float64": a.astype(dt), "normal", "dense",
                                L, 3, (2,), "float64")
    for solver, expect in ((_solve_pcr, math.ceil(math.log2(L)) + 1),
                           (_solve_cr, math.floor(math.log2(L)) + 1)):
        xp = _CountingNamespace(system.xp)
        solver(*system.arrays(), system.structure, xp)
        assert xp.solves == expect, solver.__name__


def test_auto_choice():
    def scalar_system(L):
        z = np.zeros(L)
        return TridiagonalSystem(z, z + 1, z, np.zeros((L, 1)), structure="scalar")

    assert choose_tridiagonal_method(scalar_system(2)) == "sequential"
    assert choose_tridiagonal_method(scalar_system(1 << 14)) in ("cr", "pcr")
    wide = TridiagonalSystem(*(np.zeros((8, 256, 256)),) * 3, np.zeros((8, 256)),
                             check_finite=False)
    assert choose_tridiagonal_method(wide) == "sequential"
    assert set(TRIDIAGONAL_METHODS) == {"sequential", "pcr", "cr"}


# ----------------------------------------------------------------------------------------
# Bad input names the argument

def _ok(L=4, w=3):
    return [np.zeros((L, w, w)), np.ones((L, w, w)), np.zeros((L, w, w)), np.zeros((L, w))]


@pytest.mark.parametrize("index,name", [(0, "lower"), (1, "diag"), (2, "upper")])
def test_wrong_block_shape_names_it_and_suggests_structure(index, name):
    args = _ok()
    args[index] = np.zeros((4, 3))
    with pytest.raises(pcrsolve.InvalidSystemError,
                       match=rf"`{name}`.*\(\.\.\., 4, 3, 3\).*got shape \(4, 3\).*'diagonal'"):
        TridiagonalSystem(*args)
    args[index] = np.zeros((5, 3, 3))
    with pytest.raises(pcrsolve.InvalidSystemError, match=rf"`{name}`.*L=4"):
        TridiagonalSystem(*args)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((4, 0))])
def test_wrong_rhs(bad):
    args = _ok()
    args[3] = bad
    with pytest.raises(pcrsolve.InvalidSystemError, match="`rhs`"):
        TridiagonalSystem(*args)


def test_batch_dims_that_do_not_broadcast():
    args = _ok()
    args[1] = np.ones((2, 4, 3, 3))
    args[3] = np.zeros((3, 4, 3))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`rhs`.*\(3,\)"):
        TridiagonalSystem(*args)
    args = _ok()
    args[0] = np.zeros((2, 4, 3, 3))
    args[2] = np.zeros((5, 4, 3, 3))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`upper`.*\(5,\).*`lower`"):
        TridiagonalSystem(*args)


@pytest.mark.parametrize("index,name", [(0, "lower"), (1, "diag"), (2, "upper"), (3, "rhs")])
def test_bad_dtype_and_non_finite_values_name_the_argument(index, name):
    args = _ok()
    args[index] = args[index].astype(np.int64)
    with pytest.raises(pcrsolve.InputError, match=rf"`{name}`.*real floating dtype.*int64"):
        TridiagonalSystem(*args)
    args = _ok()
    args[index] = args[index].copy()
    args[index][1] = np.nan
    with pytest.raises(pcrsolve.NonFiniteError, match=rf"`{name}` holds"):
        TridiagonalSystem(*args)
    TridiagonalSystem(*args, check_finite=False)


def test_mixed_libraries_and_not_arrays():
    torch = pytest.importorskip("torch")
    args = _ok()
    args[2] = torch.as_tensor(args[2])
    with pytest.raises(pcrsolve.BackendMismatchError, match=r"`lower` is .*numpy.*`upper` is"):
        TridiagonalSystem(*args)
    args = _ok()
    args[3] = [[0.0] * 3] * 4
    with pytest.raises(pcrsolve.InputError, match=r"`rhs` must be an array.*list"):
        TridiagonalSystem(*args)


def test_unknown_structure_method_and_system():
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`structure`.*'banded'"):
        TridiagonalSystem(*_ok(), structure="banded")
    system = TridiagonalSystem(*_ok())
    with pytest.raises(pcrsolve.InputError, match=r"`method`.*'fast'"):
        solve_tridiagonal(system, method="fast")
    with pytest.raises(pcrsolve.InputError, match=r"`system` must be a pcrsolve Tridiag"):
        solve_tridiagonal(pcrsolve.BidiagonalSystem(np.zeros((4, 3)), np.zeros((4, 3)),
                                                    structure="diagonal"))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`x` must have shape \(\.\.\., 4, 3\)"):
        system.residual(np.zeros((4, 2)))
    big = TridiagonalSystem(*(np.zeros(30_000),) * 3, np.zeros((30_000, 1)),
                            structure="scalar")
    with pytest.raises(pcrsolve.InvalidSystemError, match="to_dense"):
        big.to_dense()


def test_normal_equations_bad_input():
    J, r = np.zeros((4, 3, 3)), np.zeros((4, 3))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`J`.*\(\.\.\., 4, 3, 3\).*\(4, 3\)"):
        TridiagonalSystem.normal_equations(np.zeros((4, 3)), r)
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`r`"):
        TridiagonalSystem.normal_equations(J, np.zeros(3))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`scaling`.*\(\.\.\., 4, 3\)"):
        TridiagonalSystem.normal_equations(J, r, scaling=np.ones((4, 2)))
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`scaling_structure`"):
        TridiagonalSystem.normal_equations(J, r, scaling=np.ones(4), scaling_structure="x")
    with pytest.raises(pcrsolve.InputError, match=r"`damping`.*>= 0.*-1"):
        TridiagonalSystem.normal_equations(J, r, damping=-1.0)
    with pytest.raises(pcrsolve.InputError, match=r"`damping`.*negative"):
        TridiagonalSystem.normal_equations(J, r, damping=np.array([0.5, -0.5])[:, None][:, 0])
    with pytest.raises(pcrsolve.InputError, match=r"`damping` must be a real number"):
        TridiagonalSystem.normal_equations(J, r, damping="big")
    with pytest.raises(pcrsolve.InvalidSystemError, match=r"`damping`.*\(5,\)"):
        TridiagonalSystem.normal_equations(np.zeros((2, 4, 3, 3)), r, damping=np.ones(5))
    with pytest.raises(pcrsolve.NonFiniteError, match=r"`r` holds"):
        TridiagonalSystem.normal_equations(J, np.full((4, 3), np.nan))

"""CuPy RawKernel chunked scans, run on the CPU by the CUDA emulator, against a float64 loop.

The kernels' CUDA source is compiled by g++ (tests/cuda_emulation.py) and launched through
the drivers of :mod:`pcrsolve.backends.cupy_kernels` with ``xp=numpy``; array arguments
are guarded (out-of-bounds reads give NaN, out-of-bounds writes raise) and outputs are
allocated NaN-filled, so a missed write shows. The same source is also compiled by
``nvcc`` where it is installed, and run by CuPy where a GPU is present.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import shutil
import subprocess
import tempfile
from typing import Any

import numpy as np
import pytest
from conftest import tolerance
from cuda_emulation import Launcher, compile_library, require_compiler
from pcrsolve.backends import cupy_kernels
from pcrsolve.backends.cupy_backend import CupyBackend
from pcrsolve.backends.cupy_kernels import MAX_WIDTH, dense_scan, diagonal_scan, kernel_source

import pcrsolve

pytestmark = pytest.mark.usefixtures("_compiler")


@pytest.fixture(scope="module")
def _compiler() -> None:
    require_compiler()


class _NanNumpy:
    """numpy, except that ``empty`` fills with NaN: an element a kernel forgets stays NaN."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def empty(shape: Any, dtype: Any = np.float64) -> np.ndarray:
        return np.full(shape, np.nan, dtype=dtype)


XP = _NanNumpy()
LAUNCH = Launcher()


# -- inputs and the independent reference -------------------------------------------------
def _inputs(rng: np.random.Generator, structure: str, L: int, w: int, batch: tuple[int, ...],
            a_batch: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable problems: |a| <= 0.9, and dense rows with absolute sums <= 0.9."""
    a_batch = batch if a_batch is None else a_batch
    if structure == "dense":
        A = rng.uniform(-0.9, 0.9, (*a_batch, L, w, w)) / w
    elif structure == "diagonal":
        A = rng.uniform(-0.9, 0.9, (*a_batch, L, w))
    else:
        A = rng.uniform(-0.9, 0.9, (*a_batch, L))
    return A, rng.standard_normal((*batch, L, w)), rng.standard_normal((*batch, w))


def _reference(A: np.ndarray, b: np.ndarray, x0: np.ndarray | None, structure: str,
               reverse: bool) -> np.ndarray:
    """The recurrence, one step after another, in float64."""
    A, b = np.asarray(A, np.float64), np.asarray(b, np.float64)
    L, w = b.shape[-2:]
    a_batch = A.shape[: A.ndim - {"dense": 3, "diagonal": 2, "scalar": 1}[structure]]
    batch = np.broadcast_shapes(a_batch, b.shape[:-2], () if x0 is None else x0.shape[:-1])
    x = np.zeros((*batch, w)) if x0 is None else np.asarray(x0, np.float64) + np.zeros(w)
    x = np.broadcast_to(x, (*batch, w))
    out = np.empty((*batch, L, w))
    for l in (range(L - 1, -1, -1) if reverse else range(L)):
        if structure == "dense":
            x = np.einsum("...ij,...j->...i", A[..., l, :, :], x) + b[..., l, :]
        elif structure == "diagonal":
            x = A[..., l, :] * x + b[..., l, :]
        else:
            x = A[..., l, None] * x + b[..., l, :]
        out[..., l, :] = x
    return out


def _rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    assert x.shape == ref.shape, (x.shape, ref.shape)
    assert np.all(np.isfinite(x)), "non-finite output (an element was not written?)"
    if ref.size == 0:
        return 0.0
    return float(np.max(np.abs(x.astype(np.float64) - ref)) / max(1.0, np.max(np.abs(ref))))


def _tol(dtype: Any, L: int, w: int = 1) -> float:
    """eps x 20 x log2(L), and x w for dense sums of w products."""
    return tolerance(np.dtype(dtype).name, L, factor=20.0 * max(1, w))


def _solve(structure: str, A: Any, b: Any, x0: Any, **kw: Any) -> np.ndarray:
    kw.setdefault("xp", XP)
    kw.setdefault("launcher", LAUNCH)
    if structure == "dense":
        return dense_scan(A, b, x0, **kw)
    return diagonal_scan(A, b, x0, scalar=structure == "scalar", **kw)


# (L, chunk): one step; a few chunks with a partial last one; a prime L with the default
# chunk (one level of recursion) and with chunk 4 (recursion four levels deep)
LENGTHS = [(1, None), (37, None), (37, 4), (1009, None), (1009, 4)]
DTYPES = [np.float32, np.float64]


def _check(rng: np.random.Generator, structure: str, L: int, chunk: int | None, w: int,
           dtype: Any, reverse: bool, with_x0: bool) -> None:
    A, b, x0 = (t.astype(dtype) for t in _inputs(rng, structure, L, w, batch=(2,)))
    x0 = x0 if with_x0 else None
    x = _solve(structure, A, b, x0, reverse=reverse, chunk=chunk)
    assert x.dtype == dtype and x.shape == (2, L, w)
    err = _rel_err(x, _reference(A, b, x0, structure, reverse))
    assert err <= _tol(dtype, L, w if structure == "dense" else 1), err


@pytest.mark.parametrize("with_x0", [False, True], ids=["x0=None", "x0"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("L", "chunk"), LENGTHS, ids=[f"L{L}-c{c}" for L, c in LENGTHS])
@pytest.mark.parametrize("structure", ["scalar", "diagonal"])
def test_diagonal_scan_matches_reference(rng, structure, L, chunk, dtype, reverse, with_x0):
    _check(rng, structure, L, chunk, 5, dtype, reverse, with_x0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("L", "chunk"), LENGTHS, ids=[f"L{L}-c{c}" for L, c in LENGTHS])
@pytest.mark.parametrize("w", [1, 3, 4, 16])
def test_dense_scan_matches_reference(rng, w, L, chunk, dtype, reverse):
    # x0 given for the forward direction, None for the reverse one
    _check(rng, "dense", L, chunk, w, dtype, reverse, with_x0=not reverse)


@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_broadcast_batches(rng, structure):
    # A without batch dims, b with (3, 2), x0 with (2,); then A with (3, 1) (not mergeable)
    A, b, x0 = _inputs(rng, structure, 45, 3, batch=(3, 2), a_batch=())
    x0 = x0[0]
    x = _solve(structure, A, b, x0, chunk=4)
    assert x.shape == (3, 2, 45, 3)
    assert _rel_err(x, _reference(A, b, x0, structure, False)) <= _tol(np.float64, 45, 3)
    A2, _, _ = _inputs(rng, structure, 45, 3, batch=(), a_batch=(3, 1))
    x = _solve(structure, A2, b, None, chunk=8, reverse=True)
    assert _rel_err(x, _reference(A2, b, None, structure, True)) <= _tol(np.float64, 45, 3)


@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_strided_views_are_read_in_place(rng, structure):
    # a step-reversed A, a feature-transposed b: the kernels take element strides
    A, b, x0 = _inputs(rng, structure, 50, 4, batch=(2,))
    A_view = A[:, ::-1]
    b_view = np.ascontiguousarray(np.swapaxes(b, -1, -2)).swapaxes(-1, -2)
    if structure == "dense":
        A_view = np.swapaxes(A_view, -1, -2)  # column-major blocks
    x = _solve(structure, A_view, b_view, x0, chunk=8)
    assert _rel_err(x, _reference(A_view, b_view, x0, structure, False)) <= _tol(np.float64, 50, 4)


@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_precision_float16_and_mixed(rng, structure):
    A, b, x0 = _inputs(rng, structure, 60, 3, batch=(2,))
    # float16 in, float16 out, accumulated in float32
    h = [t.astype(np.float16) for t in (A, b, x0)]
    x = _solve(structure, *h, reverse=True, chunk=8)
    assert x.dtype == np.float16
    assert _rel_err(x, _reference(*h, structure, True)) <= _tol(np.float16, 60, 3)
    # float32 A with float64 b: accumulated in float64, output in b's dtype or out_dtype
    A32 = A.astype(np.float32)
    x = _solve(structure, A32, b, x0, chunk=8)
    assert x.dtype == np.float64
    assert _rel_err(x, _reference(A32, b, x0, structure, False)) <= _tol(np.float64, 60, 3)
    x = _solve(structure, A32, b, x0, chunk=8, out_dtype=np.float32)
    assert x.dtype == np.float32
    assert _rel_err(x, _reference(A32, b, x0, structure, False)) <= _tol(np.float32, 60, 3)


@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_empty_inputs_launch_nothing(structure):
    launcher = Launcher()
    for L, batch in ((0, (2,)), (5, (0,))):
        A, b, x0 = _inputs(np.random.default_rng(0), structure, L, 3, batch=batch)
        x = _solve(structure, A, b, x0, launcher=launcher)
        assert x.shape == (*batch, L, 3)
    assert launcher.launches == []


def test_launch_structure_and_recursion_depth(rng):
    # L = 1009, chunk 4: 253 -> 64 -> 16 -> 4 -> 1 chunk maps, two launches per level
    A, b, _ = _inputs(rng, "diagonal", 1009, 2, batch=())
    launcher = Launcher()
    _solve("diagonal", A, b, None, chunk=4, launcher=launcher)
    assert launcher.launches == ["pcr_diag_chunk_map"] * 5 + ["pcr_diag_chunk_final"] * 5


def test_errors_name_the_argument(rng):
    A, b, x0 = _inputs(rng, "dense", 8, MAX_WIDTH + 1, batch=())
    with pytest.raises(ValueError, match=r"w <= 16.*w = 17"):
        dense_scan(A, b, x0, xp=np, launcher=LAUNCH)
    A, b, x0 = _inputs(rng, "diagonal", 8, 3, batch=())
    with pytest.raises(ValueError, match="`A` must have shape"):
        diagonal_scan(A[:, :2], b, x0, scalar=False, xp=np, launcher=LAUNCH)
    with pytest.raises(ValueError, match="`A` must have shape"):
        dense_scan(A, b, x0, xp=np, launcher=LAUNCH)
    with pytest.raises(ValueError, match="`x0` must have shape"):
        diagonal_scan(A, b, x0[:2], scalar=False, xp=np, launcher=LAUNCH)
    with pytest.raises(ValueError, match="`chunk` must be a positive int"):
        diagonal_scan(A, b, x0, scalar=False, chunk=0, xp=np, launcher=LAUNCH)
    with pytest.raises(TypeError, match="`b` must be float16, float32 or float64"):
        diagonal_scan(A, b.astype(np.int64), x0, scalar=False, xp=np, launcher=LAUNCH)
    with pytest.raises(ValueError, match="do not broadcast"):
        diagonal_scan(A[None].repeat(2, 0), b[None].repeat(3, 0), None, scalar=False,
                      xp=np, launcher=LAUNCH)


# -- properties of the kernels themselves ---------------------------------------------------
@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_threads_are_independent_of_order(rng, structure):
    """Blocks and threads run backwards give bit-identical results: no thread reads what
    another thread of the same launch writes, so the serial emulation is exact."""
    A, b, x0 = _inputs(rng, structure, 301, 4, batch=(3,))
    fwd = _solve(structure, A, b, x0, chunk=4, reverse=True)
    bwd = _solve(structure, A, b, x0, chunk=4, reverse=True, launcher=Launcher(backwards=True))
    np.testing.assert_array_equal(fwd, bwd)


def test_undefined_behaviour_sanitizer_is_quiet(rng, capfd):
    """UBSan build: local-array indices (dense P[W][W]) in range, no signed overflow."""
    launcher = Launcher(sanitize=True)
    for structure, w in (("scalar", 3), ("diagonal", 5), ("dense", 3), ("dense", 16)):
        A, b, x0 = _inputs(rng, structure, 70, w, batch=(2,))
        x = _solve(structure, A, b, x0, chunk=4, reverse=True, launcher=launcher)
        assert _rel_err(x, _reference(A, b, x0, structure, True)) <= _tol(np.float64, 70, w)
    err = capfd.readouterr().err
    assert "runtime error" not in err, err


def test_emulator_checks_arguments_like_a_careful_gpu(rng):
    """The emulator refuses what would be silently wrong on a GPU."""
    source = kernel_source("diagonal", "float", "float", "float", "float")
    kernel = LAUNCH(source, "pcr_diag_chunk_map")
    f32 = np.zeros((1, 4, 2), np.float32)
    scalars = [np.int64(1), np.int64(4), np.int64(2), np.int64(1), np.int64(4), np.int32(0),
               np.int64(8), np.int64(2), np.int64(1), np.int64(8), np.int64(2), np.int64(1)]
    p, s = np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 2), np.float32)
    kernel((1,), (32,), (f32, f32, f32, p, s, *scalars))  # fine
    with pytest.raises(TypeError, match=r"parameter 'a' .*needs dtype float32"):
        kernel((1,), (32,), (f32.astype(np.float64), f32, f32, p, s, *scalars))
    with pytest.raises(TypeError, match=r"parameter 'L' .*needs a numpy\.int64 scalar"):
        kernel((1,), (32,), (f32, f32, f32, p, s, scalars[0], 4, *scalars[2:]))
    with pytest.raises(TypeError, match="takes 17 arguments"):
        kernel((1,), (32,), (f32, f32, f32, p, s))
    # a kernel writing past its output is caught by the guards
    bad = "extern \"C\" __global__ void oops(float* y, long long n) {\n" \
          "    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n" \
          "    if (i <= n) y[i] = 1.0f;\n}\n"
    with pytest.raises(AssertionError, match="wrote 1 element"):
        LAUNCH(bad, "oops")((1,), (8,), (np.zeros(4, np.float32), np.int64(4)))
    lib, kernels = compile_library(bad)
    assert [p.name for p in kernels["oops"]] == ["y", "n"]
    del lib


# -- the CUDA compiler -----------------------------------------------------------------------
def _variants() -> dict[str, str]:
    out = {}
    for t in ("float", "double"):
        out[f"diagonal-{t}"] = kernel_source("diagonal", t, t, t, t)
        for w in (1, 3, 4, 16):
            out[f"dense{w}-{t}"] = kernel_source("dense", t, t, t, t, width=w)
    out["diagonal-mixed"] = kernel_source("diagonal", "float", "double", "float", "double")
    out["dense5-mixed"] = kernel_source("dense", "double", "float", "float", "double", width=5)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("identity", [0.0, 1.0])
@pytest.mark.parametrize("w", [1, 4, 16])
def test_factored_blocks_match_the_materialised_system(rng, w, identity, dtype):
    # diag(s_l) W_l + c I formed per thread; W shared by the batch (stride 0, no copy)
    L = int(rng.choice([1, 37, 101]))
    s = rng.uniform(0.0, 1.0, (3, L, w))
    W = rng.uniform(-0.9, 0.9, (L, w, w)) / w - 0.5 * identity * np.eye(w)
    b, x0 = rng.standard_normal((3, L, w)), rng.standard_normal((3, w))
    A = s[..., None] * W + identity * np.eye(w)
    for reverse in (False, True):
        ref = _reference(A, b, x0, "dense", reverse)
        x = dense_scan(W.astype(dtype), b.astype(dtype), x0.astype(dtype), xp=XP,
                       launcher=LAUNCH, scale=s.astype(dtype), identity=identity,
                       reverse=reverse, chunk=8)
        assert x.dtype == dtype
        assert _rel_err(x, ref) <= _tol(dtype, L, w)
    with pytest.raises(ValueError, match="`scale` must have shape"):
        dense_scan(W, b, None, xp=XP, launcher=LAUNCH, scale=s[:, :, :0])
    with pytest.raises(TypeError, match="`scale` must have the dtype"):
        dense_scan(W, b, None, xp=XP, launcher=LAUNCH, scale=s.astype(np.float32))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_source_compiles_with_nvcc():
    """Every variant goes through nvcc (what g++ accepts, NVRTC might not)."""
    variants = _variants()
    with tempfile.TemporaryDirectory() as tmp:
        def compile_one(name: str) -> tuple[str, subprocess.CompletedProcess]:
            path = os.path.join(tmp, f"{name}.cu")
            with open(path, "w") as f:
                f.write(variants[name])
            cmd = ["nvcc", "--ptx", "-arch=sm_90", "-Werror", "all-warnings", path,
                   "-o", path[:-3] + ".ptx"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:  # and through ptxas, which reports register spills
                done = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "-Xptxas", "-v", path,
                                       "-o", path[:-3] + ".cubin"], capture_output=True,
                                      text=True)
            return name, done

        workers = max(1, min(len(variants), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(compile_one, sorted(variants)))
        failed = {name: done.stderr for name, done in results if done.returncode != 0}
        assert not failed, failed
        # every kernel keeps its state in registers: no spill stores or loads
        reports = [(name, line.strip()) for name, done in results
                   for line in done.stderr.splitlines() if "spill" in line]
        assert reports, "ptxas -v printed no spill report"
        spills = [(name, line) for name, line in reports
                  if "0 bytes spill stores, 0 bytes spill loads" not in line]
        assert not spills, spills
        for name, _ in results:
            with open(os.path.join(tmp, f"{name}.ptx")) as f:
                ptx = f.read()
            kind = "dense" if name.startswith("dense") else "diag"
            for entry in (f"pcr_{kind}_chunk_map", f"pcr_{kind}_chunk_final"):
                assert f".entry {entry}(" in ptx, (name, entry)
            assert ".shared" not in ptx and "bar.sync" not in ptx, name


# -- the backend ------------------------------------------------------------------------------
@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_cupy_backend_fast_linear_wiring(rng, monkeypatch, structure):
    """CupyBackend.fast_linear, with the emulator standing in for CuPy and the GPU."""
    A, b, x0 = _inputs(rng, structure, 33, 3, batch=(2,))
    system = pcrsolve.BidiagonalSystem(A.astype(np.float32), b.astype(np.float32), x0,
                                       structure=structure, reverse=True)
    backend = CupyBackend(np)
    if not cupy_kernels.available():
        assert backend.fast_linear(system) is None
    monkeypatch.setattr(cupy_kernels, "available", lambda: True)
    monkeypatch.setattr(cupy_kernels, "cupy_launcher", LAUNCH)
    kernel = backend.fast_linear(system)
    x = kernel()
    assert x.dtype == system.dtype == np.float64 and x.shape == (2, 33, 3)
    generic = pcrsolve.solve_linear(system, method="sequential")
    assert _rel_err(x, generic) <= _tol(np.float32, 33, 3)
    wide = pcrsolve.BidiagonalSystem(np.zeros((4, 17, 17)), np.zeros((4, 17)))
    assert backend.fast_linear(wide) is None


def test_cupy_backend_fast_factored_wiring(rng, monkeypatch):
    """CupyBackend.fast_factored, with the emulator standing in for CuPy and the GPU."""
    s, W = rng.uniform(0, 1, (2, 29, 3)), rng.uniform(-0.9, 0.9, (29, 3, 3)) / 3
    b = rng.standard_normal((2, 29, 3))
    blocks = pcrsolve.Factored(s, W, identity=1.0)
    backend = CupyBackend(np)
    if not cupy_kernels.available():
        assert backend.fast_factored(blocks, b) is None
    monkeypatch.setattr(cupy_kernels, "available", lambda: True)
    monkeypatch.setattr(cupy_kernels, "cupy_launcher", LAUNCH)
    x = backend.fast_factored(blocks, b)()
    ref = _reference(blocks.dense(np), b, None, "dense", False)
    assert x.dtype == np.float64 and _rel_err(x, ref) <= _tol(np.float64, 29, 3)
    wide = pcrsolve.Factored(np.ones((5, 17)), np.ones((5, 17, 17)))
    assert backend.fast_factored(wide, np.ones((5, 17))) is None


# -- a real GPU --------------------------------------------------------------------------------
def _gpu() -> bool:
    return importlib.util.find_spec("cupy") is not None and cupy_kernels.available()


@pytest.mark.skipif(not _gpu(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("structure", ["scalar", "diagonal", "dense"])
def test_cupy_on_gpu_matches_reference_and_emulator(rng, structure, dtype):
    import cupy

    A, b, x0 = (t.astype(dtype) for t in _inputs(rng, structure, 1009, 4, batch=(3,)))
    for reverse in (False, True):
        for chunk in (None, 4):
            x = _solve(structure, cupy.asarray(A), cupy.asarray(b), cupy.asarray(x0),
                       reverse=reverse, chunk=chunk, xp=cupy, launcher=None)
            x = cupy.asnumpy(x)
            err = _rel_err(x, _reference(A, b, x0, structure, reverse))
            assert err <= _tol(dtype, 1009, 4 if structure == "dense" else 1), err
            # explicit fused multiply-adds in a fixed order: same bits as the emulation
            emulated = _solve(structure, A, b, x0, reverse=reverse, chunk=chunk)
            np.testing.assert_array_equal(x, emulated)
    system = pcrsolve.BidiagonalSystem(cupy.asarray(A), cupy.asarray(b), cupy.asarray(x0),
                                       structure=structure)
    kernel = pcrsolve.solve_linear(system, method="kernel")
    generic = pcrsolve.solve_linear(system, method="cr")
    assert _rel_err(cupy.asnumpy(kernel), cupy.asnumpy(generic).astype(np.float64)) \
        <= _tol(dtype, 1009, 4 if structure == "dense" else 1)

"""CuPy RawKernel versions of the chunked-scan kernels (diagonal, scalar, dense w <= 16).

    x_l = A_l x_{l-1} + b_l          (forward)
    x_l = A_l x_{l+1} + b_l          (``reverse=True``)

Algorithm: the chunked scan (Blelloch 1990, "scan-then-propagate"), the same two-pass scheme
as :mod:`pcrsolve.backends.triton_scan` and :mod:`pcrsolve.backends.triton_dense`, written
in CUDA C++ and launched through :class:`cupy.RawKernel`:

1. Pass 1 (``FINAL = false``): every thread walks one chunk of ``chunk`` steps from a zero
   state and stores the chunk's map ``x_end = P x_start + y``.
2. The chunk maps form a recurrence of length ``ceil(L / chunk)`` of the same structure,
   solved by the same two passes recursively (always forward: chunks are numbered in
   walking order); this gives the state entering every chunk.
3. Pass 2 (``FINAL = true``): every thread walks its chunk again from the true entering
   state and writes the states.

Thread mapping. *Diagonal/scalar*: one thread per (chain, chunk, feature), flattened with
the feature fastest, so the threads of a warp read consecutive elements of a row of ``b``
(and of ``A``, and write a row of ``x``) at every step: coalesced loads and stores.
Scalar ``A`` (one coefficient per step) and broadcast batches are passed as element
strides (stride 0 where broadcast), never copied. *Dense*: every thread carries one
``W``-vector through the steps of one chunk, reading each block row by row, so it holds
only ``2 W`` values (``W`` is a compile-time constant, at most :data:`MAX_WIDTH`): pass 2
runs one thread per (chain, chunk) carrying the state; pass 1 runs ``W + 1`` adjacent
threads per (chain, chunk), thread ``j < W`` carrying the basis vector ``e_j`` (column
``j`` of the chunk's product of blocks) and thread ``W`` the zero state with the offsets
(the chunk's ``y``); they read the same rows (broadcast loads). All offsets are 64-bit
(``long long``); threads use a grid-stride loop, so any grid size is valid. Element types
and ``W`` are compile-time (``#define``); the chunk length and the direction are kernel
arguments (uniform branches), so one compiled module serves every ``L``, chunk and
direction. No variant spills registers (the test-suite checks the ``nvcc`` output).

Arithmetic is float32 for float32/float16 inputs and float64 when any input is float64.
float16 inputs are cast to float32 on the host (CuPy has no bfloat16; reading ``__half``
in the kernel would need ``cuda_fp16.h``, and the source stays header-free so that a host
compiler can build it too); a float16 result is written in float32 and cast back.
Every multiply-add is an explicit ``__fmaf_rn``/``__fma_rn`` and the summation order is
fixed, so the result does not depend on the compiler's contraction choices.

Why the kernels can be tested without a GPU: they use no shared memory, no
``__syncthreads``, no atomics and no warp intrinsics, and every thread writes memory that
no other thread of the same launch reads or writes. A launch is therefore equivalent to
running its threads one after another in any order, which is exactly what the CPU emulator
of the test-suite (``tests/cuda_emulation.py``) does with the *same* source compiled by a
host C++ compiler. The host drivers below take the array namespace (``xp``: cupy, or numpy
under the emulator) and the kernel ``launcher`` as arguments for that reason.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "KERNEL_NAMES",
    "MAX_WIDTH",
    "Launcher",
    "available",
    "cupy_launcher",
    "dense_scan",
    "diagonal_scan",
    "kernel_source",
]

#: widest dense blocks the kernel keeps in per-thread arrays
MAX_WIDTH = 16

#: threads per block of the diagonal/scalar kernel and of the dense kernel
_BLOCK_DIAG = 256
_BLOCK_DENSE = 64
_MAX_GRID = 2**31 - 1  # gridDim.x limit; the kernels' grid-stride loops cover the rest

#: ``launcher(source, name, options) -> kernel``; ``kernel(grid, block, args)`` launches it
#: with the calling convention of :meth:`cupy.RawKernel.__call__`.
Launcher = Callable[[str, str, tuple[str, ...]], Callable[..., Any]]

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

# ---------------------------------------------------------------------------------------------
# CUDA source. Macros set by kernel_source(): TA, TB (input element types), TX (output
# element type), ACC (accumulation type), and W (dense block width). Only what NVRTC offers
# without headers is used.
_PRELUDE = r"""
// pcrsolve chunked-scan kernels. No shared memory, no __syncthreads, no atomics: every
// thread writes memory no other thread of the launch touches (see cupy_kernels.py).
__device__ __forceinline__ float pcr_fma(float a, float b, float c) {
    return __fmaf_rn(a, b, c);
}
__device__ __forceinline__ double pcr_fma(double a, double b, double c) {
    return __fma_rn(a, b, c);
}

__device__ __forceinline__ long long pcr_first_thread() {
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}
__device__ __forceinline__ long long pcr_thread_stride() {
    return (long long)blockDim.x * (long long)gridDim.x;
}
"""

#: the kernels' parameters (the same for both passes), by structure
_PARAMS = {
    "diagonal": """const TA* __restrict__ a, const TB* __restrict__ b, TX* __restrict__ x,
        ACC* __restrict__ p, ACC* __restrict__ s,
        long long n_chain, long long L, long long n_feat, long long n_chunks,
        long long chunk, int reverse,
        long long a_sb, long long a_sl, long long a_sw,
        long long b_sb, long long b_sl, long long b_sw""",
    "dense": """const TA* __restrict__ a, const TB* __restrict__ b, TX* __restrict__ x,
        ACC* __restrict__ p, ACC* __restrict__ s,
        long long n_chain, long long L, long long n_chunks, long long chunk, int reverse,
        long long a_sb, long long a_sl, long long a_si, long long a_sj,
        long long b_sb, long long b_sl, long long b_sw,
        const TB* __restrict__ d, long long d_sb, long long d_sl, long long d_sw,
        int scaled, ACC ident""",
}

_DIAGONAL_BODY = r"""
// One thread per (chain, chunk, feature), feature fastest:
//   idx = (chain * n_chunks + chunk) * n_feat + feature,
// which is also the offset of the thread's entry in the chunk-map arrays p and s.
// FINAL = false: from a zero state, store the chunk's map x_end = p * x_start + s.
// FINAL = true:  start from s[idx] (the entering state) and store the states in x.
template <bool FINAL>
__device__ __forceinline__ void pcr_diag_chunk(PCR_PARAMS) {
    const long long total = n_chain * n_chunks * n_feat;
    for (long long idx = pcr_first_thread(); idx < total; idx += pcr_thread_stride()) {
        const long long col = idx % n_feat;
        const long long rest = idx / n_feat;
        const long long c = rest % n_chunks;
        const long long chain = rest / n_chunks;
        const TA* ap = a + chain * a_sb + col * a_sw;
        const TB* bp = b + chain * b_sb + col * b_sw;
        TX* xp = x + chain * L * n_feat + col;
        ACC xv = FINAL ? s[idx] : (ACC)0;
        ACC pv = (ACC)1;
        const long long t0 = c * chunk;
        const long long t1 = (t0 + chunk < L) ? t0 + chunk : L;
        for (long long t = t0; t < t1; ++t) {
            const long long l = reverse ? L - 1 - t : t;
            const ACC av = (ACC)ap[l * a_sl];
            xv = pcr_fma(av, xv, (ACC)bp[l * b_sl]);
            if (FINAL) {
                xp[l * n_feat] = (TX)xv;
            } else {
                pv *= av;
            }
        }
        if (!FINAL) {
            s[idx] = xv;
            p[idx] = pv;
        }
    }
}
"""

_DENSE_BODY = r"""
// W is a compile-time constant (<= 16). With `scaled`, step l's block is
// diag(d_l) A_l + ident * I (a factored Jacobian, formed as it is read).
//
// Every thread carries one W-vector v through the steps of one chunk, v <- A_l v (+ b_l),
// reading the block row by row: 2W values in registers whatever W is.
// FINAL = true: one thread per (chain, chunk), idx = chain * n_chunks + chunk; v starts as
//   the entering state s[idx * W ...], takes the b_l terms, and is stored into x.
// FINAL = false: W + 1 threads per (chain, chunk), idx = (chain * n_chunks + chunk) *
//   (W + 1) + j. Thread j < W carries the basis vector e_j without b: column j of the
//   chunk's product of blocks, stored at p[(chunk_idx * W + i) * W + j]. Thread j = W
//   carries the zero state with b: the chunk's offset, stored at s[chunk_idx * W + i].
//   The W + 1 threads of a chunk are adjacent and read the same rows (broadcast loads).
template <bool FINAL>
__device__ __forceinline__ void pcr_dense_chunk(PCR_PARAMS) {
    const long long per_chunk = FINAL ? 1 : W + 1;
    const long long total = n_chain * n_chunks * per_chunk;
    for (long long idx = pcr_first_thread(); idx < total; idx += pcr_thread_stride()) {
        const int j = FINAL ? W : (int)(idx % per_chunk);
        const long long chunk_idx = idx / per_chunk;
        const long long c = chunk_idx % n_chunks;
        const long long chain = chunk_idx / n_chunks;
        const bool with_b = j == W;
        ACC v[W];
        ACC tmp[W];
#pragma unroll
        for (int i = 0; i < W; ++i) {
            v[i] = FINAL ? s[chunk_idx * W + i] : (i == j ? (ACC)1 : (ACC)0);
        }
        const long long t0 = c * chunk;
        const long long t1 = (t0 + chunk < L) ? t0 + chunk : L;
        for (long long t = t0; t < t1; ++t) {
            const long long l = reverse ? L - 1 - t : t;
            const TA* al = a + chain * a_sb + l * a_sl;
            const TB* bl = b + chain * b_sb + l * b_sl;
            const TB* dl = d + chain * d_sb + l * d_sl;
            // v <- A v (+ b), summed in the fixed order k = 0..W-1 after b
#pragma unroll
            for (int i = 0; i < W; ++i) {
                const ACC di = scaled ? (ACC)dl[i * d_sw] : (ACC)1;
                ACC acc = with_b ? (ACC)bl[i * b_sw] : (ACC)0;
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    ACC aik = (ACC)al[i * a_si + k * a_sj];
                    if (scaled) {
                        aik *= di;
                        if (k == i) aik += ident;
                    }
                    acc = pcr_fma(aik, v[k], acc);
                }
                tmp[i] = acc;
            }
#pragma unroll
            for (int i = 0; i < W; ++i) v[i] = tmp[i];
            if (FINAL) {
                TX* xl = x + (chain * L + l) * W;
#pragma unroll
                for (int i = 0; i < W; ++i) xl[i] = (TX)v[i];
            }
        }
        if (!FINAL) {
#pragma unroll
            for (int i = 0; i < W; ++i) {
                if (with_b) {
                    s[chunk_idx * W + i] = v[i];
                } else {
                    p[(chunk_idx * W + i) * W + j] = v[i];
                }
            }
        }
    }
}
"""

#: kernel names in the sources, by structure: (pass 1, pass 2)
KERNEL_NAMES = {
    "diagonal": ("pcr_diag_chunk_map", "pcr_diag_chunk_final"),
    "dense": ("pcr_dense_chunk_map", "pcr_dense_chunk_final"),
}


def kernel_source(structure: str, a_type: str, b_type: str, out_type: str, acc_type: str,
                  width: int | None = None) -> str:
    """The CUDA C++ source of the pass-1 and pass-2 kernels of one variant.

    Parameters
    ----------
    structure : {"diagonal", "dense"}
        ``"diagonal"`` also serves scalar coefficients (a feature stride of 0).
    a_type, b_type, out_type, acc_type : {"float", "double"}
        C element types of ``A``, ``b``, the output ``x``, and the accumulator (which is
        also the type of the chunk-map arrays).
    width : int, optional
        The block width ``W`` (1 to :data:`MAX_WIDTH`); required for ``"dense"``.

    Returns
    -------
    str
        Source defining the kernels named in :data:`KERNEL_NAMES` ``[structure]``.
    """
    types = {"a_type": a_type, "b_type": b_type, "out_type": out_type, "acc_type": acc_type}
    for name, value in types.items():
        if value not in ("float", "double"):
            raise ValueError(f"`{name}` must be 'float' or 'double'; got {value!r}")
    defines = [f"#define TA {a_type}", f"#define TB {b_type}", f"#define TX {out_type}",
               f"#define ACC {acc_type}"]
    if structure == "diagonal":
        body = _DIAGONAL_BODY
    elif structure == "dense":
        if width is None or not 1 <= int(width) <= MAX_WIDTH:
            raise ValueError(f"`width` must be an int in [1, {MAX_WIDTH}] for dense kernels; "
                             f"got {width!r}")
        defines.append(f"#define W {int(width)}")
        body = _DENSE_BODY
    else:
        raise ValueError(f"`structure` must be 'diagonal' or 'dense'; got {structure!r}")
    return "\n".join(defines) + "\n" + _PRELUDE + _with_entries(structure, body)


def _with_entries(structure: str, body: str) -> str:
    """``body`` with its parameters filled in and the two ``extern "C"`` entry points.

    Pass 1 and pass 2 are the instantiations ``<false>`` and ``<true>`` of one template.
    """
    params = _PARAMS[structure]
    args = ", ".join(p.split()[-1] for p in params.split(","))
    impl = {"diagonal": "pcr_diag_chunk", "dense": "pcr_dense_chunk"}[structure]
    entries = [
        f'extern "C" __global__ void {name}({params}) {{\n    {impl}<{final}>({args});\n}}\n'
        for name, final in zip(KERNEL_NAMES[structure], ("false", "true"), strict=True)
    ]
    return body.replace("PCR_PARAMS", params) + "\n" + "\n".join(entries)


# ---------------------------------------------------------------------------------------------
# Launchers and availability
@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether CuPy is importable and sees at least one CUDA device.

    Returns
    -------
    bool
    """
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # no driver, no device, broken install: the generic path
        return False


_RAW_KERNELS: dict[tuple[str, str, tuple[str, ...]], Any] = {}


def cupy_launcher(source: str, name: str, options: tuple[str, ...] = ()) -> Any:
    """A :class:`cupy.RawKernel` for ``name`` in ``source``, cached on (source, name, options).

    CuPy compiles lazily (NVRTC) on the first launch and keeps the binary in its own
    memory and disk caches.

    Parameters
    ----------
    source : str
        CUDA C++ source.
    name : str
        An ``extern "C" __global__`` function of ``source``.
    options : tuple of str
        NVRTC options.

    Returns
    -------
    cupy.RawKernel
        Called as ``kernel(grid, block, args)``.
    """
    key = (source, name, tuple(options))
    kernel = _RAW_KERNELS.get(key)
    if kernel is None:
        import cupy

        kernel = _RAW_KERNELS[key] = cupy.RawKernel(source, name, options=tuple(options))
    return kernel


# ---------------------------------------------------------------------------------------------
# Host drivers
def _namespace(arr: Any, xp: Any) -> Any:
    if xp is not None:
        return xp
    if type(arr).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def _float_dtype(arr: Any, name: str) -> np.dtype:
    dt = np.dtype(arr.dtype)
    if dt not in (np.float16, np.float32, np.float64):
        raise TypeError(f"`{name}` must be float16, float32 or float64; got dtype {dt} "
                        f"(shape {tuple(arr.shape)})")
    return dt


def _as_kernel_float(arr: Any, xp: Any) -> Any:
    """float16 -> float32 (the kernels read float or double)."""
    return arr.astype(xp.float32) if np.dtype(arr.dtype) == np.float16 else arr


def _element_strides(arr: Any, xp: Any) -> tuple[Any, tuple[int, ...]]:
    """``(arr, strides in elements)``; copies only if a byte stride is not a whole element."""
    size = arr.itemsize
    if any(st % size for st in arr.strides):
        arr = xp.ascontiguousarray(arr)
    return arr, tuple(st // size for st in arr.strides)


def _batch(A_batch: tuple[int, ...], b: Any, x0: Any | None,
           *scale_batch: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    shapes = {"A": A_batch, "b": tuple(b.shape[:-2])}
    if x0 is not None:
        shapes["x0"] = tuple(x0.shape[:-1])
    for sb in scale_batch:
        shapes["scale"] = sb
    try:
        batch = tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        raise ValueError("the batch shapes of the inputs do not broadcast: "
                         + ", ".join(f"{k}: {v}" for k, v in shapes.items())) from None
    return batch, math.prod(batch)


def _check_chunk(chunk: int | None, L: int) -> int:
    if chunk is None:
        return max(16, 1 << max(math.isqrt(max(L, 1)) - 1, 0).bit_length())
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive int; got {chunk!r}")
    return int(chunk)


def _check_b_x0(b: Any, x0: Any | None) -> tuple[int, int]:
    if b.ndim < 2:
        raise ValueError(f"`b` must have shape (..., L, w); got shape {tuple(b.shape)}")
    L, W = int(b.shape[-2]), int(b.shape[-1])
    if x0 is not None and (x0.ndim < 1 or int(x0.shape[-1]) != W):
        raise ValueError(f"`x0` must have shape (..., {W}) to match `b`; "
                         f"got shape {tuple(x0.shape)}")
    return L, W


def _plan(dtypes: list[np.dtype], out_dtype: Any, b_dtype: np.dtype) -> tuple[Any, Any, bool]:
    """``(accumulation dtype, output dtype, whether the kernel writes the output directly)``."""
    acc = np.dtype(np.float64) if np.dtype(np.float64) in dtypes else np.dtype(np.float32)
    out = np.dtype(out_dtype) if out_dtype is not None else b_dtype
    return acc, out, out in _C_TYPES


def _device_scope(arr: Any) -> Any:
    """The array's CUDA device as a context manager (launch where the data is)."""
    import contextlib

    dev = getattr(arr, "device", None)
    return dev if hasattr(dev, "__enter__") else contextlib.nullcontext()


def _launch(launcher: Launcher, source: str, name: str, total: int, block: int,
            args: tuple[Any, ...]) -> None:
    grid = (max(1, min(-(-total // block), _MAX_GRID)),)
    launcher(source, name, ())(grid, (block,), args)


def _starts(xp: Any, ends: Any | None, start0: Any, n_chain: int, n: int, W: int,
            acc: np.dtype) -> Any:
    """States entering every chunk: ``start0``, then the ends of chunks 0..n-2."""
    starts = xp.empty((n_chain, n, W), dtype=acc)
    starts[:, 0, :] = start0
    if n > 1:
        starts[:, 1:, :] = ends[:, :-1, :]
    return starts


def _start0(xp: Any, x0: Any | None, batch: tuple[int, ...], n_chain: int, W: int,
            acc: np.dtype) -> Any:
    if x0 is None:
        return xp.zeros((n_chain, W), dtype=acc)
    return xp.broadcast_to(x0, (*batch, W)).reshape(n_chain, W).astype(acc)


def diagonal_scan(
    A: Any, b: Any, x0: Any | None, *, scalar: bool, reverse: bool = False,
    out_dtype: Any = None, chunk: int | None = None, xp: Any = None,
    launcher: Launcher | None = None,
) -> Any:
    """Solve ``x_l = a_l * x_{l-1} + b_l`` (or ``x_l = a_l * x_{l+1} + b_l``) in two launches.

    Parameters
    ----------
    A : array, shape (..., L, w), or (..., L) when ``scalar``
        Coefficients; any strides (broadcast batches are not copied).
    b : array, shape (..., L, w)
    x0 : array, shape (..., w), optional
        Boundary state (zeros if None).
    scalar : bool
        Whether ``A`` holds one coefficient per step (broadcast over ``w``).
    reverse : bool, default False
        Walk the steps backwards: ``x0`` enters before step ``L``.
    out_dtype : dtype, optional
        Dtype of the result (default: that of ``b``).
    chunk : int, optional
        Steps per chunk (default: about ``sqrt(L)``, at least 16, a power of two).
    xp : module, optional
        NumPy-like namespace of the arrays (default: cupy for CuPy arrays, else numpy).
    launcher : callable, optional
        ``launcher(source, name, options) -> kernel`` (default :func:`cupy_launcher`).

    Returns
    -------
    array, shape (batch..., L, w)
        ``batch`` is the broadcast batch shape of ``A``, ``b`` and ``x0``.

    Raises
    ------
    ValueError
        If a shape does not match (the message names the argument) or ``chunk`` is not a
        positive int.
    TypeError
        If an input is not float16/float32/float64.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> a, b = cupy.full((5,), 0.5), cupy.ones((5, 1))  # doctest: +SKIP
    >>> diagonal_scan(a, b, None, scalar=True)[:, 0]  # doctest: +SKIP
    array([1.    , 1.5   , 1.75  , 1.875 , 1.9375])
    """
    xp = _namespace(b, xp)
    launcher = cupy_launcher if launcher is None else launcher
    L, W = _check_b_x0(b, x0)
    expected = (L,) if scalar else (L, W)
    nd = len(expected)
    if A.ndim < nd or tuple(A.shape[A.ndim - nd:]) != expected:
        shown = "(..., L)" if scalar else "(..., L, w)"
        raise ValueError(f"`A` must have shape {shown} = (..., {', '.join(map(str, expected))}) "
                         f"with scalar={scalar} and L, w from `b`; got shape {tuple(A.shape)}")
    dtypes = [_float_dtype(A, "A"), _float_dtype(b, "b")]
    if x0 is not None:
        dtypes.append(_float_dtype(x0, "x0"))
    batch, n_chain = _batch(tuple(A.shape[: A.ndim - nd]), b, x0)
    acc, out, direct = _plan(dtypes, out_dtype, dtypes[1])
    chunk = _check_chunk(chunk, L)
    if L == 0 or W == 0 or n_chain == 0:
        return xp.empty((*batch, L, W), dtype=out)
    with _device_scope(b):
        aa = _as_kernel_float(A, xp)
        bb = _as_kernel_float(b, xp)
        if scalar:
            aa = xp.broadcast_to(aa, (*batch, L)).reshape(n_chain, L)
            aa, (a_sb, a_sl) = _element_strides(aa, xp)
            a_sw = 0
        else:
            aa = xp.broadcast_to(aa, (*batch, L, W)).reshape(n_chain, L, W)
            aa, (a_sb, a_sl, a_sw) = _element_strides(aa, xp)
        bb = xp.broadcast_to(bb, (*batch, L, W)).reshape(n_chain, L, W)
        bb, (b_sb, b_sl, b_sw) = _element_strides(bb, xp)
        x_dtype = out if direct else acc
        source = kernel_source("diagonal", _C_TYPES[np.dtype(aa.dtype)],
                               _C_TYPES[np.dtype(bb.dtype)], _C_TYPES[x_dtype], _C_TYPES[acc])
        first, final = KERNEL_NAMES["diagonal"]
        n = -(-L // chunk)
        P = xp.empty((n_chain, n, W), dtype=acc)
        Y = xp.empty((n_chain, n, W), dtype=acc)
        x = xp.empty((n_chain, L, W), dtype=x_dtype)
        i64 = np.int64
        common = (i64(n_chain), i64(L), i64(W), i64(n), i64(chunk), np.int32(bool(reverse)),
                  i64(a_sb), i64(a_sl), i64(a_sw), i64(b_sb), i64(b_sl), i64(b_sw))
        total = n_chain * n * W
        _launch(launcher, source, first, total, _BLOCK_DIAG, (aa, bb, x, P, Y, *common))
        start0 = _start0(xp, x0, batch, n_chain, W, acc)
        # the chunk maps are a diagonal recurrence of length n, in walking order: forward
        ends = (diagonal_scan(P, Y, start0, scalar=False, chunk=chunk, xp=xp,
                              launcher=launcher) if n > 1 else None)
        starts = _starts(xp, ends, start0, n_chain, n, W, acc)
        _launch(launcher, source, final, total, _BLOCK_DIAG, (aa, bb, x, P, starts, *common))
        if not direct:
            x = x.astype(out)
    return x.reshape(*batch, L, W)


def dense_scan(
    A: Any, b: Any, x0: Any | None, *, reverse: bool = False, out_dtype: Any = None,
    chunk: int | None = None, xp: Any = None, launcher: Launcher | None = None,
    scale: Any = None, identity: float = 0.0,
) -> Any:
    """Solve ``x_l = A_l x_{l-1} + b_l`` (or ``x_l = A_l x_{l+1} + b_l``) in two launches.

    Parameters
    ----------
    A : array, shape (..., L, w, w)
        Dense blocks, ``w <= MAX_WIDTH`` (16); any strides.
    b : array, shape (..., L, w)
    x0 : array, shape (..., w), optional
        Boundary state (zeros if None).
    reverse : bool, default False
        Walk the steps backwards: ``x0`` enters before step ``L``.
    out_dtype : dtype, optional
        Dtype of the result (default: that of ``b``).
    chunk : int, optional
        Steps per chunk (default: about ``sqrt(L)``, at least 16, a power of two).
    xp : module, optional
        NumPy-like namespace of the arrays (default: cupy for CuPy arrays, else numpy).
    launcher : callable, optional
        ``launcher(source, name, options) -> kernel`` (default :func:`cupy_launcher`).
    scale : array, shape (..., L, w), optional
        Factored blocks (:class:`pcrsolve.Factored`): step ``l`` uses
        ``diag(scale_l) A_l + identity I``, formed in registers.
    identity : float, default 0.0
        Used with ``scale`` only.

    Returns
    -------
    array, shape (batch..., L, w)

    Raises
    ------
    ValueError
        If ``w > MAX_WIDTH``, a shape does not match (the message names the argument), or
        ``chunk`` is not a positive int.
    TypeError
        If an input is not float16/float32/float64.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> A = cupy.broadcast_to(0.5 * cupy.eye(2), (3, 2, 2))  # doctest: +SKIP
    >>> dense_scan(A, cupy.ones((3, 2)), None)[:, 0]  # doctest: +SKIP
    array([1.  , 1.5 , 1.75])
    """
    xp = _namespace(b, xp)
    launcher = cupy_launcher if launcher is None else launcher
    L, W = _check_b_x0(b, x0)
    if W > MAX_WIDTH:
        raise ValueError(f"dense_scan handles blocks of width w <= {MAX_WIDTH}; got `b` of shape "
                         f"{tuple(b.shape)} (w = {W}); use the generic solvers for wider blocks")
    if A.ndim < 3 or tuple(A.shape[-3:]) != (L, W, W):
        raise ValueError(f"`A` must have shape (..., L, w, w) = (..., {L}, {W}, {W}) with L, w "
                         f"from `b`; got shape {tuple(A.shape)}")
    dtypes = [_float_dtype(A, "A"), _float_dtype(b, "b")]
    if x0 is not None:
        dtypes.append(_float_dtype(x0, "x0"))
    scale_batch: tuple[tuple[int, ...], ...] = ()
    if scale is not None:
        if scale.ndim < 2 or tuple(scale.shape[-2:]) != (L, W):
            raise ValueError(f"`scale` must have shape (..., L, w) = (..., {L}, {W}); got "
                             f"shape {tuple(scale.shape)}")
        if np.dtype(scale.dtype) != np.dtype(b.dtype):
            raise TypeError(f"`scale` must have the dtype of `b` ({b.dtype}); got {scale.dtype}")
        scale_batch = (tuple(scale.shape[:-2]),)
    batch, n_chain = _batch(tuple(A.shape[:-3]), b, x0, *scale_batch)
    acc, out, direct = _plan(dtypes, out_dtype, dtypes[1])
    chunk = _check_chunk(chunk, L)
    if L == 0 or W == 0 or n_chain == 0:
        return xp.empty((*batch, L, W), dtype=out)
    with _device_scope(b):
        aa = xp.broadcast_to(_as_kernel_float(A, xp), (*batch, L, W, W))
        aa, (a_sb, a_sl, a_si, a_sj) = _element_strides(aa.reshape(n_chain, L, W, W), xp)
        bb = xp.broadcast_to(_as_kernel_float(b, xp), (*batch, L, W))
        bb, (b_sb, b_sl, b_sw) = _element_strides(bb.reshape(n_chain, L, W), xp)
        if scale is None:  # the kernel never reads d unless `scaled`
            dd, (d_sb, d_sl, d_sw) = bb, (0, 0, 0)
        else:
            dd = xp.broadcast_to(_as_kernel_float(scale, xp), (*batch, L, W))
            dd, (d_sb, d_sl, d_sw) = _element_strides(dd.reshape(n_chain, L, W), xp)
        x_dtype = out if direct else acc
        source = kernel_source("dense", _C_TYPES[np.dtype(aa.dtype)],
                               _C_TYPES[np.dtype(bb.dtype)], _C_TYPES[x_dtype], _C_TYPES[acc],
                               width=W)
        first, final = KERNEL_NAMES["dense"]
        n = -(-L // chunk)
        P = xp.empty((n_chain, n, W, W), dtype=acc)
        Y = xp.empty((n_chain, n, W), dtype=acc)
        x = xp.empty((n_chain, L, W), dtype=x_dtype)
        i64 = np.int64
        common = (i64(n_chain), i64(L), i64(n), i64(chunk), np.int32(bool(reverse)),
                  i64(a_sb), i64(a_sl), i64(a_si), i64(a_sj), i64(b_sb), i64(b_sl), i64(b_sw),
                  dd, i64(d_sb), i64(d_sl), i64(d_sw), np.int32(scale is not None),
                  acc.type(identity))
        total = n_chain * n
        # pass 1: W + 1 threads per chunk (the columns of its product, and its offset)
        _launch(launcher, source, first, total * (W + 1), _BLOCK_DENSE,
                (aa, bb, x, P, Y, *common))
        start0 = _start0(xp, x0, batch, n_chain, W, acc)
        # chunk maps x_end = P x_start + y: a dense recurrence of length n, forward
        ends = (dense_scan(P, Y, start0, chunk=chunk, xp=xp, launcher=launcher)
                if n > 1 else None)
        starts = _starts(xp, ends, start0, n_chain, n, W, acc)
        _launch(launcher, source, final, total, _BLOCK_DENSE, (aa, bb, x, P, starts, *common))
        if not direct:
            x = x.astype(out)
    return x.reshape(*batch, L, W)

"""NumPy: the CPU reference backend."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Backend, CostModel, MemoryTracker

__all__ = ["NumpyBackend", "NumpyCostModel"]

#: Most chains of width 1 that the sequential loop runs on Python floats, one after the
#: other: a float step costs ~0.1 us, one NumPy call per step ~1 us of dispatch whatever
#: the batch (2-core AMD EPYC). Wider states (w > 1) go to the ufunc loop: a Python list
#: per step costs more than the two ufunc calls.
FLOAT_LOOP_MAX_CHAINS = 4


def numba_available() -> bool:
    """Whether the compiled (numba) kernels can be used.

    ``PCRSOLVE_NO_NUMBA=1`` in the environment, or ``sys.modules["numba"] = None``, turns
    them off (the generic Array-API path is then the fallback; the tests use both).
    """

    if os.environ.get("PCRSOLVE_NO_NUMBA") == "1":
        return False
    if "numba" in sys.modules:
        return sys.modules["numba"] is not None
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class NumpyCostModel(CostModel):
    """:class:`CostModel` plus the lean loop's float path and the compiled kernels.

    Attributes
    ----------
    float_step : float
        Seconds per step per chain of the Python-float loop (w = 1, at most
        :data:`FLOAT_LOOP_MAX_CHAINS` chains).
    kernel_overhead : float
        Seconds of fixed cost of one compiled-kernel call (argument checks, index maps,
        one parallel region); ``inf`` when numba is not available.
    kernel_flop_time : float
        Seconds per element update of the compiled elementwise kernels (scalar, diagonal).
    kernel_dense_flop_time : float
        Seconds per multiply-add of the compiled dense kernel (a vectorised dot product).
    """

    float_step: float = 2.5e-7
    kernel_overhead: float = float("inf")
    kernel_flop_time: float = 2e-9
    kernel_dense_flop_time: float = 5e-10


class _TracemallocTracker(MemoryTracker):
    """Peak of the allocations NumPy reports to :mod:`tracemalloc`."""

    def __init__(self) -> None:
        self._owner = False

    def start(self) -> None:
        self._owner = not tracemalloc.is_tracing()
        if self._owner:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]

    def stop(self) -> int | None:
        peak = tracemalloc.get_traced_memory()[1] - self._base
        if self._owner:
            tracemalloc.stop()
        return max(int(peak), 0)


class NumpyBackend(Backend):
    """Backend for NumPy arrays (CPU only)."""

    name = "numpy"

    def memory_tracker(self, device: Any) -> MemoryTracker:
        return _TracemallocTracker()

    def quiet_float_errors(self) -> contextlib.AbstractContextManager[Any]:
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def sequential_linear(self, A: Any, b: Any, x0: Any, structure: Any) -> Any:
        """The loop on Python floats (tiny states) or in-place ufuncs into one output.

        See :meth:`Backend.sequential_linear`. With at most :data:`FLOAT_LOOP_MAX_WORK`
        multiply-adds per step (scalar or ``w = 1`` chains, a few of them) every chain runs
        on Python floats, which accumulate in float64 (a float32 result is rounded once at
        the end); otherwise one ``np.multiply``/``np.vecdot`` and one ``np.add`` per step
        write into a preallocated ``(L, ..., w)`` output.
        """
        w = b.shape[-1]
        batch = tuple(b.shape[:-2])
        dtype = np.result_type(A, b, x0)
        if w == 1 and math.prod(batch) <= FLOAT_LOOP_MAX_CHAINS:
            return _float_loop(A, b, x0, structure.block_ndim, batch, dtype)
        return _ufunc_loop(A, b, x0, structure.block_ndim, batch, dtype)

    def cyclic_reduction(self, A: Any, b: Any, x0: Any, structure: Any) -> Any:
        """Cyclic reduction on preallocated buffers (:func:`cyclic_reduction`).

        See :meth:`Backend.cyclic_reduction`: the generic reduction's algorithm with
        ``out=`` ufuncs, strided writes and level buffers reused in place.
        """
        return cyclic_reduction(np.asarray(A), np.asarray(b), np.asarray(x0),
                                structure.block_ndim)

    def fast_linear(self, system: Any) -> Any:
        """The compiled numba kernels (:mod:`pcrsolve.backends.numba_kernels`), if installed.

        Every structure, any ``w``, both directions, broadcast batches; float32 and float64
        (float16 inputs are solved in float32). numba is imported on the first call only.
        """
        if not numba_available():
            return None

        def run() -> np.ndarray:
            from . import numba_kernels

            work = np.dtype(system.work_dtype)
            x = numba_kernels.solve(np.asarray(system.A), np.asarray(system.b),
                                    None if system.x0 is None else np.asarray(system.x0),
                                    system.structure.block_ndim, system.reverse,
                                    tuple(system.batch_shape), work)
            return x if x.dtype == system.dtype else x.astype(system.dtype)

        return run

    def compiled_factored(self, blocks: Any, b: Any) -> Any:
        """The numba kernel for factored blocks (``numba_kernels.solve_factored``), if
        installed: ``J_l = diag(s_l) W_l + c I`` never materialised, zero ``x0``."""
        if not numba_available():
            return None
        scale, weight, b = np.asarray(blocks.scale), np.asarray(blocks.weight), np.asarray(b)
        if not all(a.dtype in (np.float32, np.float64) for a in (scale, weight, b)):
            return None

        def run() -> np.ndarray:
            from . import numba_kernels

            batch = np.broadcast_shapes(scale.shape[:-2], weight.shape[:-3], b.shape[:-2])
            x = numba_kernels.solve_factored(scale, weight, b, float(blocks.identity),
                                             tuple(batch), np.result_type(scale, weight, b))
            return x if x.dtype == b.dtype else x.astype(b.dtype)

        return run

    def fast_factored(self, blocks: Any, b: Any) -> Any:
        """:meth:`compiled_factored` (NumPy has no accelerator kernel)."""
        return self.compiled_factored(blocks, b)

    def cost_model(self, device: Any) -> CostModel:
        # Fitted to `python -m pcrsolve bench linear` and pcrsolve.linear.auto.time_methods
        # on a 2-core AMD EPYC (NumPy 2.4, numba 0.68): the ufunc loop costs ~1.5 us per
        # step (two calls), the float loop ~0.25 us per step and chain; a kernel call on one
        # thread (most calls, see numba_kernels.PARALLEL_MIN_WORK) ~11-16 us fixed (was
        # ~30 us with index maps built per call and a parallel region per call) plus ~2 ns
        # per elementwise update (~1 ns idle, 2-4 ns under load) and ~0.5 ns per dense
        # multiply-add (w = 64, L = 4096: 7.6 ms for 16.8M multiply-adds). The sequential
        # loop's own fixed cost is ~20 us per call (L = 5..32 scalar: loop 26-33 us, kernel
        # 13-14 us, load ~5), so once numba is loaded even a handful of steps go to the
        # kernel. Before that the loop's fixed cost is left out, so that a short solve
        # (below a few dozen steps) keeps to the loop and never pays numba's import and the
        # loading of the cached kernels (~0.5 s, once per process).
        loaded = sys.modules.get("numba") is not None
        return NumpyCostModel(
            step_overhead=1.5e-6, level_overhead=8e-6, block_overhead=6e-8,
            seq_flop_time=1e-9, par_flop_time=1.5e-10, elementwise_time=2.5e-9,
            loop_overhead=2e-5 if loaded else 0.0,
            float_step=2.5e-7,
            kernel_overhead=1.2e-5 if numba_available() else float("inf"),
            kernel_flop_time=2e-9, kernel_dense_flop_time=5e-10)


def _float_loop(A: np.ndarray, b: np.ndarray, x0: np.ndarray, block_ndim: int,
                batch: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Each chain of a width-1 forward system on Python floats; ``(..., L, 1)``."""
    L = b.shape[-2]
    A = np.broadcast_to(A, (*batch, *A.shape[A.ndim - 1 - block_ndim:]))
    x0 = np.broadcast_to(x0, (*batch, 1))
    out = np.empty((*batch, L, 1), dtype=dtype)
    for i in np.ndindex(*batch):
        x = float(x0[i][0])
        xs = []
        append = xs.append
        for al, bl in zip(A[i].reshape(L).tolist(), b[i].reshape(L).tolist(), strict=True):
            x = al * x + bl
            append(x)
        out[i] = np.asarray(xs, dtype=np.float64).reshape(L, 1)
    return out


def _ufunc_loop(A: np.ndarray, b: np.ndarray, x0: np.ndarray, block_ndim: int,
                batch: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A forward system step by step with in-place ufuncs; ``(..., L, w)`` in ``dtype``."""
    L, w = b.shape[-2], b.shape[-1]
    # step-major copies (O(L) extra memory): each step's operands are contiguous, which
    # makes the per-step ufuncs cheaper than on strided views
    steps = np.ascontiguousarray(np.moveaxis(A, A.ndim - 1 - block_ndim, 0))  # (L, ..., block)
    if block_ndim == 0:
        steps = steps[..., None]  # a scalar block acts as a diagonal one
    rhs = np.ascontiguousarray(np.moveaxis(b, -2, 0))  # (L, ..., w)
    out = np.empty((L, *batch, w), dtype=dtype)
    x = np.broadcast_to(x0, (*batch, w))
    for Al, bl, o in zip(steps, rhs, out, strict=True):
        if block_ndim == 2:
            np.vecdot(Al, x[..., None, :], out=o)
        else:
            np.multiply(Al, x, out=o)
        np.add(o, bl, out=o)
        x = o
    return np.ascontiguousarray(np.moveaxis(out, 0, -2))


# -- cyclic reduction without stack/concat copies ------------------------------------------------
# The core's cyclic reduction (pcrsolve.linear.cr) is written against the Array API: it builds
# every level with fresh arrays and interleaves evens and odds with ``stack``. On NumPy the same
# algorithm runs step-major (the step axis first, so that one step of every chain is one
# contiguous run) on preallocated level buffers with ``out=`` ufuncs and strided writes: one
# output, one workspace for the reduced blocks and one for the reduced right-hand sides, the
# reduced right-hand sides overwritten in place by the solution on the way down, and ``x0``
# folded into the first reduced equation instead of into a copy of ``b``.


def _apply(A: np.ndarray, x: np.ndarray, out: np.ndarray, dense: bool) -> np.ndarray:
    """``out = A x`` step by step (``A`` elementwise blocks broadcast against ``x``)."""
    if dense:
        np.matmul(A, x[..., None], out=out[..., None])
    else:
        np.multiply(A, x, out=out)
    return out


def _compose(A2: np.ndarray, A1: np.ndarray, out: np.ndarray, dense: bool) -> np.ndarray:
    """``out = A2 A1`` step by step."""
    if dense:
        np.matmul(A2, A1, out=out)
    else:
        np.multiply(A2, A1, out=out)
    return out


#: Largest stride (in steps of the buffer it lives in) at which a reduced level is stored in
#: place, in the odd slots of the level before it; the next level is then compacted into a
#: buffer of its own. In place saves a buffer and a copy per level; strides of 8 and more
#: put every step in a cache line of its own.
MAX_INPLACE_STRIDE = 2


#: Bytes of states per segment of :func:`cyclic_reduction` (diagonal and scalar blocks): a
#: long system is reduced segment after segment, each from the last state of the one
#: before, so that a segment's levels stay in cache. Measured (2-core AMD EPYC, CPU time,
#: min of 7; whole system / 64 KiB / 256 KiB / 1 MiB / 4 MiB segments): scalar L = 2^22
#: 50 / 76 / 36 / 28 / 30 ms; diagonal B = 8, w = 16, L = 2^14: 50 / 34 / 22 / 21 / 35 ms;
#: diagonal w = 4, L = 2^16 (2 MiB in all): 5.9 / 9.3 / 6.6 / 5.5 / 6.6 ms. Dense blocks
#: are bound by their products and are not segmented (w = 4, L = 2^16: 14 ms whole,
#: 15-20 ms in segments).
SEGMENT_BYTES = 1 << 20


def cyclic_reduction(A: np.ndarray, b: np.ndarray, x0: np.ndarray,
                     block_ndim: int) -> np.ndarray:
    """Solve the forward system ``x_l = A_l x_{l-1} + b_l`` by cyclic reduction, in place.

    The algorithm of :func:`pcrsolve.linear.cr.solve_cr_generic` (the same pairing of
    equations, the same order of operations up to the fold of ``x0``), on buffers reused
    across levels: the first reduced level lives in the odd slots of the output, each
    further level in the odd slots of the one before it (or, every other level, in a
    compact buffer half its size), and is overwritten in place by its solution on the way
    down. No ``stack``, no ``concat``; fresh memory about ``2.2`` times ``b``'s (the output
    included) against ``4`` for the generic reduction. Diagonal and scalar systems longer
    than :data:`SEGMENT_BYTES` of states are reduced in segments of that size, one after
    the other, each entered from the last state of the one before (exactly as the loop
    passes a state on), so that every level of a segment is still in cache.

    Parameters
    ----------
    A : np.ndarray, shape (..., L, w, w) / (..., L, w) / (..., L)
    b : np.ndarray, shape (..., L, w)
    x0 : np.ndarray, shape (..., w)
    block_ndim : int
        2 (dense), 1 (diagonal) or 0 (scalar).

    Returns
    -------
    np.ndarray, shape (..., L, w)
        A new array in the promoted dtype of the inputs.
    """
    L, w = b.shape[-2], b.shape[-1]
    dense = block_ndim == 2
    if block_ndim == 0:
        A = A[..., None]  # a scalar block acts as a diagonal one, broadcast over w
    bd = 2 if dense else 1
    batch = b.shape[:-2]
    dtype = np.result_type(A, b, x0)
    # step-major views (no copies): A (L, ..., block), b (L, ..., w), A with b's batch ndim
    A = A.reshape((1,) * (len(batch) + 1 + bd - A.ndim) + A.shape)
    A = np.moveaxis(A, A.ndim - 1 - bd, 0)
    b = np.moveaxis(b, -2, 0)
    out = np.moveaxis(np.empty((*batch, L, w), dtype=dtype), -2, 0)
    x = np.asarray(x0)
    # segments of ~SEGMENT_BYTES of states, one after the other, each entered from the last
    # state of the one before (elementwise blocks; dense ones are bound by the products)
    step_bytes = dtype.itemsize * math.prod(out.shape[1:])
    S = max(L, 1) if dense else max(2, SEGMENT_BYTES // max(step_bytes, 1))
    for start in range(0, L, S):
        stop = min(L, start + S)
        _reduce_step_major(A[start:stop], b[start:stop], x, out[start:stop], dense)
        x = out[stop - 1]
    return np.moveaxis(out, 0, -2)


def _reduce_step_major(A: np.ndarray, b: np.ndarray, x0: np.ndarray, out: np.ndarray,
                       dense: bool) -> None:
    """:func:`cyclic_reduction` on step-major views, writing ``out`` (``(L, ..., w)``)."""
    L = b.shape[0]
    dtype = out.dtype
    # the first equation with x0 folded in: b'_1 = A_1 x0 + b_1
    first = np.empty(out.shape[1:], dtype=dtype)
    _apply(A[0], x0, first, dense)
    first += b[0]
    if L == 1:
        out[0] = first
        return
    # level sizes L = n_0 > n_1 > ... > n_top = 1, n_{k+1} = n_k // 2
    sizes = [L]
    while sizes[-1] > 1:
        sizes.append(sizes[-1] // 2)
    top = len(sizes) - 1
    tmp = np.empty((max(sizes[1] // 2, 1), *out.shape[1:]), dtype=dtype)

    # up: S[k] the right-hand sides of level k (S[0] = b), T[k] its blocks (T[0] = A)
    h = sizes[1]
    S = [b, out[1:2 * h:2]]  # level 1 in the odd slots of the output
    _apply(A[1:2 * h:2], b[0:2 * h:2], S[1], dense)
    S[1] += b[1:2 * h:2]
    _apply(A[1], first, S[1][0], dense)  # its first equation uses b'_1, not b_1
    S[1][0] += b[1]
    T = [A, _compose(A[1:2 * h:2], A[0:2 * h:2],
                     np.empty((h, *A.shape[1:]), dtype=dtype), dense) if h > 1 else None]
    s_stride, t_stride = 2, 1
    inplace = [True, True]  # whether level k lives in the odd slots of level k - 1
    for k in range(1, top):
        n, h = sizes[k], sizes[k + 1]
        odd, Sk = T[k][1:2 * h:2], S[k]
        if 2 * s_stride <= MAX_INPLACE_STRIDE:  # b_{k+1} = A_odd b_even + b_odd, in place
            nxt = Sk[1:2 * h:2]
            nxt += _apply(odd, Sk[0:2 * h:2], tmp[:h], dense)
            s_stride *= 2
        else:
            nxt = _apply(odd, Sk[0:2 * h:2], np.empty((h, *out.shape[1:]), dtype=dtype),
                         dense)
            nxt += Sk[1:2 * h:2]
            s_stride = 1
        S.append(nxt)
        inplace.append(s_stride > 1)
        if h > 1:  # A_{k+1} = A_odd A_even (the odd blocks are not needed on the way down)
            if 2 * t_stride <= MAX_INPLACE_STRIDE:
                T.append(_compose(odd, T[k][0:2 * h:2], odd, dense))
                t_stride *= 2
            else:
                T.append(_compose(odd, T[k][0:2 * h:2],
                                  np.empty((h, *A.shape[1:]), dtype=dtype), dense))
                t_stride = 1
        else:
            T.append(None)

    # down: S[top] holds the top level's single equation, which maps the zero state (x = b);
    # every level's odd unknowns are the next level's, its even ones follow from them
    for k in range(top - 1, -1, -1):
        n, h = sizes[k], sizes[k + 1]
        Sk = out if k == 0 else S[k]
        if not inplace[k + 1]:
            Sk[1:2 * h:2] = S[k + 1]
        n_even = (n + 1) // 2 - 1  # evens 2, 4, ... (the first is the boundary one)
        if k == 0:
            out[0] = first
            if n_even:
                dst = _apply(A[2:n:2], out[1:n - 1:2], out[2:n:2], dense)
                dst += b[2:n:2]
        elif n_even:
            Sk[2:n:2] += _apply(T[k][2:n:2], Sk[1:n - 1:2], tmp[:n_even], dense)

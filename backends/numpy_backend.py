"""NumPy: the CPU reference backend."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
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
    import sys

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

    def cost_model(self, device: Any) -> CostModel:
        # Fitted to `python -m pcrsolve bench linear` and `python -m pcrsolve.bench.auto_grid`
        # on a 2-core AMD EPYC (NumPy 2.4, numba 0.68): the ufunc loop costs ~1.5 us per
        # step (two calls), the float loop ~0.25 us per step and chain; a kernel call ~30 us
        # fixed (index maps, one parallel region) plus ~2 ns per elementwise update (~1 ns
        # idle, 2-4 ns under load) and ~0.5 ns per dense multiply-add (w = 64, L = 4096:
        # 7.6 ms for 16.8M multiply-adds).
        return NumpyCostModel(
            step_overhead=1.5e-6, level_overhead=8e-6, block_overhead=6e-8,
            seq_flop_time=1e-9, par_flop_time=1.5e-10, elementwise_time=2.5e-9,
            float_step=2.5e-7,
            kernel_overhead=3e-5 if numba_available() else float("inf"),
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

"""NumPy: the CPU reference backend."""

from __future__ import annotations

import tracemalloc
from typing import Any

from .base import Backend, CostModel, MemoryTracker

__all__ = ["NumpyBackend"]


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

    def cost_model(self, device: Any) -> CostModel:
        # Measured on a 2-core x86-64 CPU (see docs/benchmarks.rst): a step of the
        # Python loop costs a few microseconds, a parallel level a few tens.
        return CostModel(step_overhead=4e-6, level_overhead=4e-5, flop_time=1.5e-9)

"""NumPy: the CPU reference backend."""

from __future__ import annotations

import contextlib
import tracemalloc
from typing import Any

import numpy as np

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

    def quiet_float_errors(self) -> contextlib.AbstractContextManager[Any]:
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def cost_model(self, device: Any) -> CostModel:
        # Fitted to `python -m pcrsolve bench linear` on a 2-core AMD EPYC (NumPy 2.4).
        return CostModel()

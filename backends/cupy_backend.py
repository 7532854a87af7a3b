"""CuPy: NVIDIA/AMD GPUs through CuPy arrays."""

from __future__ import annotations

from typing import Any

from .base import Backend, CostModel, MemoryTracker

__all__ = ["CupyBackend"]


class _PoolTracker(MemoryTracker):
    """Growth of CuPy's default memory pool (an upper bound of the peak)."""

    def start(self) -> None:
        import cupy

        self._pool = cupy.get_default_memory_pool()
        self._base = self._pool.total_bytes()

    def stop(self) -> int | None:
        return max(int(self._pool.total_bytes() - self._base), 0)


class CupyBackend(Backend):
    """Backend for CuPy arrays."""

    name = "cupy"

    def is_accelerator(self, device: Any) -> bool:
        return True

    def synchronize(self, device: Any) -> None:
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def memory_tracker(self, device: Any) -> MemoryTracker:
        return _PoolTracker()

    def cost_model(self, device: Any) -> CostModel:
        return CostModel(step_overhead=2e-5, level_overhead=3e-5, block_overhead=0.0,
                         seq_flop_time=1e-11, par_flop_time=1e-12, elementwise_time=1e-12)

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

    def host_floats(self, values: Any) -> list[float]:
        """The values in one device-to-host transfer."""
        return [float(v) for v in values.get().tolist()]  # one synchronisation

    def memory_tracker(self, device: Any) -> MemoryTracker:
        return _PoolTracker()

    def fast_linear(self, system: Any) -> Any:
        """The CuPy RawKernel chunked scans (diagonal, scalar, dense with w <= 16), where they run.

        Needs CuPy and a CUDA device; see :mod:`pcrsolve.backends.cupy_kernels`.

        Parameters
        ----------
        system : BidiagonalSystem

        Returns
        -------
        callable or None
            A function of no arguments returning the states, shape ``(..., L, w)`` in
            ``system.dtype``; None where no kernel applies (the generic path is used).
        """
        from .cupy_kernels import MAX_WIDTH, available

        dense = system.structure.name == "dense"
        if dense and system.width > MAX_WIDTH:
            return None  # wider blocks do not fit in per-thread arrays: the generic path
        if not available():
            return None
        from . import cupy_kernels

        if dense:
            return lambda: cupy_kernels.dense_scan(
                system.A, system.b, system.x0, reverse=system.reverse, out_dtype=system.dtype)
        return lambda: cupy_kernels.diagonal_scan(
            system.A, system.b, system.x0, scalar=system.structure.name == "scalar",
            reverse=system.reverse, out_dtype=system.dtype)

    def fast_factored(self, blocks: Any, b: Any) -> Any:
        """The CuPy dense kernel forming ``diag(s_l) W_l + c I`` per thread (w <= 16).

        Parameters
        ----------
        blocks : pcrsolve.Factored
        b : cupy.ndarray, shape (..., L, w)

        Returns
        -------
        callable or None
        """
        from .cupy_kernels import MAX_WIDTH, available

        if b.shape[-1] > MAX_WIDTH or not available():
            return None
        from . import cupy_kernels

        return lambda: cupy_kernels.dense_scan(blocks.weight, b, None, scale=blocks.scale,
                                               identity=blocks.identity, out_dtype=b.dtype)

    def cost_model(self, device: Any) -> CostModel:
        return CostModel(step_overhead=2e-5, level_overhead=3e-5, block_overhead=0.0,
                         seq_flop_time=1e-11, par_flop_time=1e-12, elementwise_time=1e-12)

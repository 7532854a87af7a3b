"""PyTorch: CPU and CUDA tensors, with autograd."""

from __future__ import annotations

from typing import Any

import torch

from .base import Backend, CostModel, MemoryTracker

__all__ = ["TorchBackend"]


class _CudaTracker(MemoryTracker):
    """Peak of ``torch.cuda.max_memory_allocated`` above the starting allocation."""

    def __init__(self, device: torch.device) -> None:
        self._device = device

    def start(self) -> None:
        torch.cuda.synchronize(self._device)
        torch.cuda.reset_peak_memory_stats(self._device)
        self._base = torch.cuda.memory_allocated(self._device)

    def stop(self) -> int | None:
        torch.cuda.synchronize(self._device)
        return max(int(torch.cuda.max_memory_allocated(self._device) - self._base), 0)


class TorchBackend(Backend):
    """Backend for torch tensors."""

    name = "torch"
    has_autodiff = True

    def is_accelerator(self, device: Any) -> bool:
        return torch.device(device).type != "cpu"

    def synchronize(self, device: Any) -> None:
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def memory_tracker(self, device: Any) -> MemoryTracker:
        device = torch.device(device)
        if device.type == "cuda":
            return _CudaTracker(device)
        return MemoryTracker()

    def cost_model(self, device: Any) -> CostModel:
        if self.is_accelerator(device):
            # Kernel launches dominate; arithmetic is nearly free until blocks get wide.
            return CostModel(step_overhead=2e-5, level_overhead=3e-5, block_overhead=0.0,
                             seq_flop_time=1e-11, par_flop_time=1e-12, elementwise_time=1e-12)
        return CostModel(step_overhead=6e-6, level_overhead=2e-5, block_overhead=6e-8,
                         seq_flop_time=1e-9, par_flop_time=1.5e-10, elementwise_time=2.5e-9)

    def requires_grad(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.requires_grad

"""PyTorch: CPU and CUDA tensors, with autograd."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch

from .base import Backend, CostModel, MemoryTracker
from .numpy_backend import numba_available
from .torch_params import param_list as _param_list

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


def torch_jvp(step: Any) -> Any:
    """``jvp(x_prev, l, v)`` of ``step`` by :func:`torch.func.jvp` (forward mode).

    Broadcast (expanded) inputs are made contiguous first: forward-mode duals cannot
    alias memory.
    """

    def jvp(x: torch.Tensor, l: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        x, v = torch.broadcast_tensors(x, v)
        return torch.func.jvp(lambda z: step(z, l), (x.contiguous(),), (v.contiguous(),))[1]

    return jvp


def _basis_jvps(step: Any, x: torch.Tensor, l: torch.Tensor, with_value: bool) -> Any:
    """``step``'s JVPs at ``x`` along every basis vector, by one :func:`torch.func.vmap`.

    Returns the columns ``(w, *x.shape)``, preceded by the step's value (the JVPs' primal,
    unbatched) if ``with_value``. Raises what ``vmap`` raises for steps it cannot trace
    (and, with the value, for a primal it batches).
    """
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)

    def column(e: torch.Tensor) -> Any:
        out = torch.func.jvp(lambda z: step(z, l), (x,), (e.expand_as(x),))
        return out if with_value else out[1]

    return torch.func.vmap(column, out_dims=(None, 0) if with_value else 0)(eye)


def _needs_grad(tensors: tuple[Any, ...]) -> bool:
    """Whether the autograd tape would record a solve of ``tensors`` (kernels would cut it)."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` asks for the Triton kernels on the CPU (for testing)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernel_applies(tensors: tuple[Any, ...], device: Any, dense_width: int | None) -> bool:
    """Whether a Triton kernel can solve a system of ``tensors`` on ``device``.

    Dense blocks wider than 16 do not fit in registers, inputs that require grad keep the
    differentiable generic path, and the kernels need Triton and a CUDA device (or
    ``TRITON_INTERPRET=1`` on the CPU).
    """
    if dense_width is not None and dense_width > 16:
        return False
    if _needs_grad(tensors):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    from .triton_scan import available

    return available(torch.device(device))


def _numba_applies(tensors: tuple[Any, ...], device: Any) -> bool:
    """Whether the compiled CPU kernels (numba) can solve a system of ``tensors``.

    CPU tensors that the autograd tape would not record, with numba installed and
    ``PCRSOLVE_NO_NUMBA`` not ``"1"``.
    """
    if torch.device(device).type != "cpu" or _needs_grad(tensors):
        return False
    return numba_available()


#: NumPy dtypes of the working dtypes the compiled kernels run in.
_NUMPY_WORK = {torch.float32: "float32", torch.float64: "float64"}


def _as_numpy(t: Any, dtype: Any = None) -> Any:
    """A NumPy view of tensor ``t`` for the compiled kernels (None stays None).

    ``.numpy()`` shares memory: a copy only to convert to ``dtype`` or to resolve a lazy
    negation. Each torch call costs ~1 us, so only the needed ones are made.
    """
    if t is None:
        return None
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if t.requires_grad:  # under torch.no_grad()
        t = t.detach()
    return t.resolve_neg().numpy() if t.is_neg() else t.numpy()


def _numba_solve(system: Any) -> torch.Tensor:
    """:func:`numba_kernels.solve <pcrsolve.backends.numba_kernels.solve>` on CPU tensors.

    The tensors are handed over as NumPy views (``.numpy()`` shares memory: no copy unless
    the kernel needs a contiguous or converted operand) and the result is wrapped back with
    :func:`torch.from_numpy` (no copy). Half-precision inputs are converted to float32
    first (NumPy has no bfloat16).
    """
    import numpy as np

    from . import numba_kernels

    work = system.work_dtype
    x = numba_kernels.solve(_as_numpy(system.A, work), _as_numpy(system.b, work),
                            _as_numpy(system.x0, work),
                            system.structure.block_ndim, system.reverse,
                            tuple(system.batch_shape), np.dtype(_NUMPY_WORK[work]))
    out = torch.from_numpy(x)
    return out if out.dtype == system.dtype else out.to(system.dtype)


@dataclass(frozen=True)
class TorchCpuCostModel(CostModel):
    """:class:`CostModel` plus the compiled CPU kernels (the fields of ``NumpyCostModel``).

    Attributes
    ----------
    kernel_overhead : float
        Seconds of fixed cost of one compiled-kernel call, the tensor-to-array views
        included; ``inf`` when the kernels are not used (no numba, ``PCRSOLVE_NO_NUMBA=1``,
        or ``TRITON_INTERPRET=1``, which hands ``method="kernel"`` to the Triton
        interpreter, a test vehicle that ``auto`` must never pick).
    kernel_flop_time : float
        Seconds per element update of the compiled elementwise kernels (scalar, diagonal).
    kernel_dense_flop_time : float
        Seconds per multiply-add of the compiled dense kernel.
    """

    kernel_overhead: float = float("inf")
    kernel_flop_time: float = 2e-9
    kernel_dense_flop_time: float = 5e-10


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

    def host_floats(self, values: Any) -> list[float]:
        """The values in one device-to-host transfer."""
        return [float(v) for v in values.tolist()]  # one synchronisation

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
        # The kernel fields as NumPy's (the same compiled kernels; see
        # NumpyBackend.cost_model) with a larger fixed cost for the tensor views and the
        # checks in fast_linear (measured on the 2-core EPYC under load ~6, L = 8, diagonal
        # w = 4: the kernel 47 us through torch, 17 us through NumPy; torch's own loop
        # 190 us, its cyclic reduction 220 us: the kernel wins from L = 3 on either way).
        kernels = numba_available() and not _interpreting()
        return TorchCpuCostModel(
            step_overhead=6e-6, level_overhead=2e-5, block_overhead=6e-8,
            seq_flop_time=1e-9, par_flop_time=1.5e-10, elementwise_time=2.5e-9,
            kernel_overhead=2e-5 if kernels else float("inf"),
            kernel_flop_time=2e-9, kernel_dense_flop_time=5e-10)

    def fast_linear(self, system: Any) -> Any:
        """A fused kernel: Triton on CUDA, the compiled (numba) kernels on the CPU.

        On a CUDA device, the Triton chunked-scan kernels (diagonal, scalar, dense with
        w <= 16). On the CPU, the numba kernels of the NumPy backend
        (:mod:`pcrsolve.backends.numba_kernels`: every structure and width, both
        directions, broadcast batches; the tensors are passed as NumPy views), when numba
        is installed and ``PCRSOLVE_NO_NUMBA`` is not ``"1"``; with ``TRITON_INTERPRET=1``
        the Triton kernels run under the interpreter instead where they apply (so that the
        Triton tests test Triton). Inputs that require grad keep the generic
        (differentiable) path.
        """
        dense = system.structure.name == "dense"
        tensors = (system.A, system.b, system.x0)
        width = system.width if dense else None
        if torch.device(system.device).type == "cpu" and not (
                _interpreting() and _kernel_applies(tensors, system.device, width)):
            # (Triton is not even imported on the CPU unless interpreting: a slow import
            # that would also fix its kernels' mode before a test could set the variable)
            if _numba_applies(tensors, system.device):
                return lambda: _numba_solve(system)
            return None
        if not _kernel_applies(tensors, system.device, width):
            return None
        from .triton_scan import diagonal_scan

        if dense:
            from .triton_dense import dense_scan

            return lambda: dense_scan(system.A, system.b, system.x0, reverse=system.reverse,
                                      out_dtype=system.dtype)
        return lambda: diagonal_scan(
            system.A, system.b, system.x0, scalar=system.structure.name == "scalar",
            reverse=system.reverse, out_dtype=system.dtype)

    def compiled_factored(self, blocks: Any, b: Any) -> Any:
        """On CPU tensors, the numba kernel for factored blocks (as the NumPy backend's), on
        NumPy views of the tensors; None on GPUs, for inputs that require grad, or without
        numba."""
        tensors = (blocks.scale, blocks.weight, b)
        if not _numba_applies(tensors, b.device) or b.dtype not in _NUMPY_WORK:
            return None
        if any(t.dtype != b.dtype for t in tensors):
            return None

        def run() -> torch.Tensor:
            import numpy as np

            from . import numba_kernels

            batch = torch.broadcast_shapes(blocks.scale.shape[:-2], blocks.weight.shape[:-3],
                                           b.shape[:-2])
            x = numba_kernels.solve_factored(_as_numpy(blocks.scale), _as_numpy(blocks.weight),
                                             _as_numpy(b), float(blocks.identity), tuple(batch),
                                             np.dtype(_NUMPY_WORK[b.dtype]))
            return torch.from_numpy(x)

        return run

    def fast_factored(self, blocks: Any, b: Any) -> Any:
        """The Triton dense kernel forming ``diag(s_l) W_l + c I`` in registers (w <= 16)."""
        if not _kernel_applies((blocks.scale, blocks.weight, b), b.device, b.shape[-1]):
            return None
        from .triton_dense import dense_scan

        return lambda: dense_scan(blocks.weight, b, None, scale=blocks.scale,
                                  identity=blocks.identity, out_dtype=b.dtype)

    def requires_grad(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.requires_grad

    # -- automatic differentiation ----------------------------------------------------------
    def jvp(self, step: Any) -> Any:
        """Forward-mode JVP of ``step`` via :func:`torch.func.jvp`."""

        return torch_jvp(step)

    def jacobian(self, step: Any, structure: str) -> Any:
        """Jacobian blocks by :func:`torch.func.vmap` of a JVP over the basis vectors.

        Mapping over the basis (rather than evaluating ``step`` on a ``w``-fold batch)
        keeps ``step``'s own batch shape, which some kernels (einsum under forward-mode AD)
        handle 50-100x faster. Steps that ``vmap`` cannot trace fall back to the batch.
        """
        from pcrsolve.jacobians import assemble_blocks, jacobian_provider

        batched = jacobian_provider(torch_jvp(step), structure, self.xp)

        def jac(x: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
            try:
                cols = _basis_jvps(step, x, l, with_value=False)
            except Exception:  # not vmap-traceable (e.g. .item(), data-dependent flow)
                return batched(x, l)
            return assemble_blocks(cols, structure, self.xp)

        return jac

    def value_and_jacobian(self, step: Any, structure: str) -> Any:
        """The step's value and its Jacobian blocks from one ``vmap`` of a JVP.

        :meth:`jacobian`'s JVPs compute the step's value too (the primal, the same for
        every basis vector, so ``vmap`` leaves it unbatched): returning it saves the
        separate evaluation of ``step`` per Newton iteration. Steps whose primal ``vmap``
        batches, or that it cannot trace, fall back to ``step`` plus :meth:`jacobian`.
        """
        from pcrsolve.jacobians import assemble_blocks

        blocks = self.jacobian(step, structure)

        def pair(x: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                F, cols = _basis_jvps(step, x, l, with_value=True)
            except Exception:  # not vmap-traceable, or a batched primal
                return step(x, l), blocks(x, l)
            return F, assemble_blocks(cols, structure, self.xp)

        return pair

    def check_no_hidden_grad(self, step: Any, x0: Any, params: Any = None) -> None:
        """Refuse a ``step`` that depends on tensors requiring grad that are not in ``params``.

        One step is evaluated on ``x0`` (detached) and its autograd graph walked back to
        the leaves; the walk stops at the given parameters (leaf or not). Any other tensor
        that requires grad would silently get no gradient.
        """
        if not torch.is_grad_enabled():
            return
        x = x0.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # the working dtype of half-precision states
        with torch.enable_grad():
            probe = step(x[..., None, :], torch.zeros(1, dtype=torch.int64, device=x.device))
        if not (isinstance(probe, torch.Tensor) and probe.requires_grad):
            return
        given = _param_list(params)
        leaves = {id(p) for p in given if p.grad_fn is None}
        stops = {p.grad_fn for p in given if p.grad_fn is not None}
        hidden: list[str] = []
        seen: set[Any] = set()
        stack = [probe.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen or node in stops:
                continue
            seen.add(node)
            var = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
            if var is not None:
                if id(var) not in leaves:
                    hidden.append(f"a tensor of shape {tuple(var.shape)}")
                continue
            stack.extend(fn for fn, _ in node.next_functions)
        if hidden:
            from pcrsolve.errors import InputError

            what = ("`params` was not given" if not given else
                    f"they are not among the {len(given)} tensor(s) in `params`")
            raise InputError(
                f"`step` depends on tensors that require grad ({', '.join(hidden[:4])}) but "
                f"{what}: pass them as params=[...] (or params=module) so that gradients "
                "reach them through the adjoint solve, or call under torch.no_grad() if "
                "none are wanted"
            )

    def differentiable_solve(
        self, solve_impl: Any, step: Any, x0: Any, length: int, params: Any, options: dict
    ) -> Any:
        """Forward solve without a tape; backward by one adjoint linear solve + one VJP."""
        from .torch_adjoint import adjoint_solve

        return adjoint_solve(solve_impl, step, x0, length, params, options)

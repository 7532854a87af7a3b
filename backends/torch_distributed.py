"""torch.distributed: the communicator of pcrsolve.distributed, and its adjoint for autograd.

:class:`TorchCommunicator` implements :class:`pcrsolve.distributed.Communicator` on a
``torch.distributed`` process group (gloo on CPUs, NCCL on GPUs); it also counts the
collectives, the payload bytes and the seconds spent in them (``stats``), which ``bench
distributed`` reports. :func:`differentiable_solve` wraps a distributed Newton solve in a
``torch.autograd.Function`` whose backward is the distributed adjoint: a reverse
distributed linear solve of the transposed Newton system, then one batched VJP of this
rank's steps. The ``nn.Module`` built on them, a stack of blocks split over the ranks, is
:class:`pcrsolve.adapters.torch_distributed.DistributedParallelSequential` (exported as
``pcrsolve.distributed.DistributedParallelSequential``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from pcrsolve.errors import InputError

from .torch_adjoint import _Adjoint
from .torch_backend import _NUMPY_WORK, _as_numpy, _numba_applies
from .torch_params import param_list

__all__ = ["TorchCommunicator", "differentiable_solve", "local_kernels"]


class TorchCommunicator:
    """:class:`pcrsolve.distributed.Communicator` on a ``torch.distributed`` group.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup or None
        ``None``: the default group (``torch.distributed.init_process_group`` must have
        been called).
    xp : module, optional
        The Array-API namespace of the tensors (unused; for the registry's signature).

    Attributes
    ----------
    rank, size : int
        This process's rank in ``group`` and the group's size.
    stats : dict
        ``calls``, ``bytes`` (payload received by this rank: ``(P - 1) x`` the input of an
        all-gather, the input of an all-reduce, a broadcast or a shift) and ``seconds``
        spent inside collectives (waiting for slower ranks included). Reset with
        :meth:`reset_stats`.
    """

    def __init__(self, group: Any = None, xp: Any = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise InputError(
                "`group`: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group(...) first (torchrun sets the "
                "environment for init_process_group('gloo' or 'nccl')), or run with one "
                "process and no group")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.sync_cuda = False
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the counters in :attr:`stats`."""
        self.stats = {"calls": 0, "bytes": 0, "seconds": 0.0}

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _start(self, x: torch.Tensor) -> float:
        if self.sync_cuda and x.is_cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter()

    def _stop(self, t0: float, x: torch.Tensor, nbytes: int) -> None:
        if self.sync_cuda and x.is_cuda:
            torch.cuda.synchronize(x.device)
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        self.stats["bytes"] += int(nbytes)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``x`` stacked along a new leading axis of size ``P``."""
        x = x.contiguous()
        t0 = self._start(x)
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        out = torch.stack(parts)
        self._stop(t0, x, (self.size - 1) * x.numel() * x.element_size())
        return out

    def all_gather_start(self, x: torch.Tensor) -> Any:
        """:meth:`all_gather` in the background: returns ``finish()``, which waits for it
        and returns the result (only the wait counts as communication time)."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        work = dist.all_gather(parts, x, group=self.group, async_op=True)

        def finish() -> torch.Tensor:
            t0 = self._start(x)
            work.wait()
            out = torch.stack(parts)
            self._stop(t0, x, (self.size - 1) * x.numel() * x.element_size())
            return out

        return finish

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise maximum over ranks."""
        y = x.clone().contiguous()
        t0 = self._start(y)
        dist.all_reduce(y, op=dist.ReduceOp.MAX, group=self.group)
        self._stop(t0, y, y.numel() * y.element_size())
        return y

    def shift(self, x: torch.Tensor, forward: bool) -> torch.Tensor | None:
        """Send ``x`` one rank on along the chain; the previous rank's ``x`` (or None)."""
        x = x.contiguous()
        dst = self.rank + 1 if forward else self.rank - 1
        src = self.rank - 1 if forward else self.rank + 1
        t0 = self._start(x)
        requests, got = [], None
        if 0 <= dst < self.size:
            requests.append(dist.isend(x, self._global(dst), group=self.group))
        if 0 <= src < self.size:
            got = torch.empty_like(x)
            requests.append(dist.irecv(got, self._global(src), group=self.group))
        for req in requests:
            req.wait()
        self._stop(t0, x, 0 if got is None else got.numel() * got.element_size())
        return got

    def broadcast(self, x: torch.Tensor, src: int) -> torch.Tensor:
        """Rank ``src``'s ``x`` on every rank."""
        y = x.clone().contiguous()
        t0 = self._start(y)
        dist.broadcast(y, self._global(src), group=self.group)
        self._stop(t0, y, y.numel() * y.element_size())
        return y

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        out: list[Any] = [None] * self.size
        t0 = time.perf_counter()
        dist.all_gather_object(out, obj, group=self.group)
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["calls"] += 1
        return out


class _DistributedAdjoint(_Adjoint):
    """The single-process adjoint's forward; the backward is the distributed one."""

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        from pcrsolve.distributed import adjoint

        x0, X = ctx.saved_tensors
        run = ctx.run
        work = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
        opts = run.options
        jac = opts["jacobian"] if opts["jacobian_structure"] == "dense" else None
        if jac is None and opts.get("value_and_jacobian") is not None \
                and opts["jacobian_structure"] == "dense":
            from pcrsolve.newton import _JacobianOf

            jac = _JacobianOf(opts["value_and_jacobian"])
        with torch.no_grad():
            lam, Xprev, idx = adjoint(run.step, X.to(work), G.to(work), run.trajectory,
                                      run.comm, jac, opts["jvp"], run.xp)
        with torch.enable_grad():
            Xp = Xprev.detach().requires_grad_(True)
            out = run.step(Xp, idx)
            grads = torch.autograd.grad(out, [Xp, *run.params], grad_outputs=lam,
                                        allow_unused=True)
        if run.comm.rank == 0:
            gx0 = grads[0][..., 0, :]
            while gx0.ndim > x0.ndim:  # x0 broadcast along batch dims
                gx0 = gx0.sum(0)
            for d in range(x0.ndim):
                if x0.shape[d] == 1 and gx0.shape[d] != 1:
                    gx0 = gx0.sum(d, keepdim=True)
            gx0 = gx0.to(x0.dtype)
        else:  # x0 is read on rank 0 only
            gx0 = torch.zeros_like(x0)
        return (None, gx0, *grads[1:])


class _Run:
    def __init__(self, solve_impl: Any, step: Any, length: int, comm: Any,
                 params: list[torch.Tensor], options: dict) -> None:
        import array_api_compat

        self.solve_impl, self.step, self.length, self.comm = solve_impl, step, length, comm
        self.params, self.options = params, options
        self.xp = array_api_compat.array_namespace(torch.zeros(0))
        self.solution = self.trajectory = None

    def __call__(self, x0: torch.Tensor) -> Any:
        with torch.no_grad():
            self.solution, self.trajectory = self.solve_impl(self.step, x0, self.length,
                                                             self.comm, **self.options)
        return self.solution


def differentiable_solve(solve_impl: Any, step: Any, x0: torch.Tensor, length: int,
                         comm: Any, params: Any, options: dict) -> Any:
    """A distributed solve whose states carry a distributed-adjoint gradient.

    Parameters
    ----------
    solve_impl : callable
        ``pcrsolve.distributed._solve_impl``: ``(step, x0, length, comm, **options) ->
        (Solution, trajectory)``.
    step : callable
    x0 : torch.Tensor, shape (..., w)
    length : int
        This rank's number of steps.
    comm : pcrsolve.distributed.Communicator
    params : sequence of torch.Tensor or torch.nn.Module or None
        This rank's tensors that ``step`` depends on.
    options : dict
        The remaining options of :func:`pcrsolve.distributed.solve`.

    Returns
    -------
    pcrsolve.Solution
        Its ``states`` (this rank's segment) are differentiable; every rank must call
        ``backward`` (the adjoint is collective).
    """
    plist = param_list(params)
    run = _Run(solve_impl, step, length, comm, plist, options)
    states = _DistributedAdjoint.apply(run, x0, *plist)
    sol = run.solution
    sol.states = states
    return sol


# -- compiled local passes on CPU tensors (numba) --------------------------------------------
# The local work of a rank in a distributed linear solve is two passes over its segment: a
# *reduce* pass (the segment's affine summary; read-only) and a *solve* pass from the
# incoming state. The generic Array-API passes are trees of small batched products (several
# passes over memory, O(n log n) for a summary); on CPU tensors these compiled loops read
# the segment once per pass. They are the same arithmetic as the generic path (tests compare
# them) and are used only where they apply: CPU tensors, float32/float64, nothing that
# requires grad, numba installed (and not switched off by PCRSOLVE_NO_NUMBA=1).
class _CpuKernels:
    """The compiled reduce and solve passes (see above); each returns None where it does
    not apply, and the caller takes the generic path."""

    @staticmethod
    def applies(*tensors: Any) -> bool:
        given = tuple(t for t in tensors if t is not None)
        return (all(isinstance(t, torch.Tensor) and t.dtype in _NUMPY_WORK for t in given)
                and all(t.device.type == "cpu" for t in given)
                and _numba_applies(given, "cpu"))

    @staticmethod
    def _work(b: torch.Tensor) -> Any:
        import numpy as np

        return np.dtype(_NUMPY_WORK[b.dtype])

    def summary(self, A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None,
                block_ndim: int, batch: tuple[int, ...], want_A: bool) -> Any:
        """``(A_seg, b_seg)`` of a forward segment (``b_seg`` from ``x0``, or zero), or None.

        ``A_seg`` is ``A_n ... A_1`` (shape ``(*batch, *block)``) if ``want_A``, else None.
        """
        if not self.applies(A, b, x0):
            return None
        from . import numba_kernels

        work = b.dtype
        A_seg, b_seg = numba_kernels.summary(
            _as_numpy(A, work), _as_numpy(b), _as_numpy(x0, work), block_ndim, batch,
            want_A, self._work(b))
        return (None if A_seg is None else torch.from_numpy(A_seg).to(work),
                torch.from_numpy(b_seg).to(work))

    def solve(self, A: torch.Tensor, b: torch.Tensor, z: torch.Tensor, block_ndim: int,
              reverse: bool, batch: tuple[int, ...]) -> Any:
        """This rank's states from its incoming state ``z`` (numba_kernels.solve), or None."""
        if not self.applies(A, b, z):
            return None
        from . import numba_kernels

        work = b.dtype
        x = numba_kernels.solve(_as_numpy(A, work), _as_numpy(b), _as_numpy(z, work),
                                block_ndim, reverse, batch, self._work(b))
        return torch.from_numpy(x)

    def scan_decay(self, A: torch.Tensor, b: torch.Tensor, block_ndim: int, reverse: bool,
                   batch: tuple[int, ...]) -> Any:
        """``(x, A_seg, b_seg, K)`` of ``numba_kernels.scan_decay``, or None (dense blocks,
        or where the kernels do not apply)."""
        if block_ndim == 2 or not self.applies(A, b):
            return None
        from . import numba_kernels

        work = b.dtype
        x, A_seg, b_seg, K = numba_kernels.scan_decay(
            _as_numpy(A, work), _as_numpy(b), block_ndim, reverse, batch, self._work(b))
        return (torch.from_numpy(x), torch.from_numpy(A_seg).to(work),
                torch.from_numpy(b_seg).to(work), K)


def local_kernels() -> _CpuKernels:
    """The compiled local passes of :mod:`pcrsolve.distributed` for torch CPU tensors.

    Returns
    -------
    object
        With ``summary(A, b, x0, block_ndim, batch, want_A)``,
        ``scan_decay(A, b, block_ndim, reverse, batch)`` and
        ``solve(A, b, z, block_ndim, reverse, batch)``; each returns None where it does not
        apply (GPU tensors, tensors requiring grad, no numba; dense blocks for
        ``scan_decay``).
    """
    return _CpuKernels()

"""torch.distributed: the communicator of pcrsolve.distributed, and its adjoint for autograd.

:class:`TorchCommunicator` implements :class:`pcrsolve.distributed.Communicator` on a
``torch.distributed`` process group (gloo on CPUs, NCCL on GPUs); it also counts the
collectives, the payload bytes and the seconds spent in them (``stats``), which ``bench
distributed`` reports. :func:`differentiable_solve` wraps a distributed Newton solve in a
``torch.autograd.Function`` whose backward is the distributed adjoint: a reverse
distributed linear solve of the transposed Newton system, then one batched VJP of this
rank's steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from pcrsolve.errors import InputError

from .torch_params import param_list

__all__ = ["TorchCommunicator", "differentiable_solve"]


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


class _DistributedAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: Any, x0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        sol = run(x0.detach())
        ctx.run = run
        ctx.save_for_backward(x0, sol.states)
        return sol.states

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        from pcrsolve.distributed import adjoint

        x0, X = ctx.saved_tensors
        run = ctx.run
        work = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
        opts = run.options
        jac = opts["jacobian"] if opts["jacobian_structure"] == "dense" else None
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

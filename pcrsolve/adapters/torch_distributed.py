"""A stack of blocks split over the ranks of a process group (torch.distributed).

:class:`DistributedParallelSequential` is the sequence-parallel sibling of
:class:`pcrsolve.adapters.torch.ParallelSequential`: each rank holds a consecutive share of
the blocks, the forward pass is :func:`pcrsolve.distributed.solve` on that rank's segment
and the backward pass its distributed adjoint
(:mod:`pcrsolve.backends.torch_distributed`). Exported as
``pcrsolve.distributed.DistributedParallelSequential``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["DistributedParallelSequential"]


# -- a stack of blocks split over the ranks -------------------------------------------------
class _Replicate(torch.autograd.Function):
    """The last rank's ``y`` on every rank. Backward: every rank's incoming gradient must be
    the same (the same loss computed on every rank); the last rank's is passed on."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, comm: Any) -> torch.Tensor:
        ctx.comm = comm
        # a copy of this rank's own (a communicator may hand every rank the same object)
        return comm.broadcast(y.detach(), src=comm.size - 1).clone()

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        from pcrsolve.distributed import DistributedError

        comm = ctx.comm
        everything = comm.all_gather(G.detach().contiguous())  # (P, *G.shape)
        last = everything[-1]
        scale = float(everything.abs().max()) if everything.numel() else 0.0
        tol = 64 * torch.finfo(G.dtype).eps * scale
        diff = (everything - last).abs().reshape(comm.size, -1)
        worst = diff.max(dim=1).values if diff.shape[1] else torch.zeros(comm.size)
        bad = [q for q in range(comm.size) if float(worst[q]) > tol]
        if bad:  # every rank sees the same gathered gradients: every rank raises here
            raise DistributedError(
                "DistributedParallelSequential(broadcast=True): the gradient of the output "
                f"on rank(s) {', '.join(map(str, bad))} differs from the last rank's (largest "
                f"difference {max(float(worst[q]) for q in bad):.3e}; this is rank "
                f"{comm.rank} of {comm.size}). With broadcast=True every rank must compute "
                "the same loss from the output (the gradient of that one loss is used); to "
                "compute a loss on the last rank only, use broadcast=False", bad)
        return (G if comm.rank == comm.size - 1 else torch.zeros_like(G)), None


class DistributedParallelSequential(nn.Module):
    """A stack of equal-width blocks split over the ranks, evaluated by distributed Newton-PCR.

    Every rank of the group builds one (SPMD) with its own share of the blocks, a
    consecutive slice: rank 0 the first blocks, then rank 1, ...; the shares may differ in
    size (each at least one block). The forward pass is :func:`pcrsolve.distributed.solve`
    on the rank's segment (all ranks work at once: pipeline parallelism without the
    bubble); the backward pass is its distributed adjoint. The output (the last block's) is
    on the last rank; ``broadcast=True`` puts it on every rank.

    Parameters
    ----------
    layers : sequence of nn.Module or nn.Sequential
        This rank's blocks, in order (kept as submodules, so their parameters train as
        usual); as for :class:`pcrsolve.adapters.torch.ParallelSequential`: one block per
        step, all of one class (the fast path: ``Sequential(Linear(w, w), act)``, optionally
        inside :class:`~pcrsolve.adapters.torch.Residual`), or a flat list repeating one
        pattern, grouped into steps on each rank (give every rank whole steps).
    group : torch.distributed.ProcessGroup, Communicator or None, default None
        The ranks that share the stack (``None``: the default process group).
    mode : {"newton", "quasi", "picard", "jacobi"}, default "newton"
    jacobian : {"auto", "analytic", "autodiff"}, default "auto"
        See :class:`pcrsolve.adapters.torch.LayerStack`.
    broadcast : bool, default False
        ``False``: the output ``(..., w)`` is returned on the last rank; the other ranks get
        an empty tensor of shape ``(..., 0)`` that is still part of the autograd graph
        (call ``backward`` on ``out.sum()`` there). ``True``: every rank gets the output
        (one broadcast of ``B w`` numbers). Its gradient is that of **one** loss: every
        rank must compute the same loss from it (as when every rank runs the same head and
        criterion); the backward checks that the ranks' output gradients agree (one
        all-gather of ``B w`` numbers) and raises
        :class:`~pcrsolve.distributed.DistributedError` on every rank if they do not.
    warm_start : bool, default False
        Start each forward from this rank's previous states (see ``ParallelSequential``).
    return_all : bool, default False
        Return this rank's states ``(..., L_r, w)`` (one per block) instead of the output;
        excludes ``broadcast``.
    **solve_kwargs
        Passed to :func:`pcrsolve.distributed.solve` (``tol``, ``max_iter``, ``throw``,
        ...).

    Attributes
    ----------
    last_solution : pcrsolve.Solution or None
        This rank's solution of the latest forward (``status``, ``iterations`` and
        residuals are the same on every rank).
    has_output : bool
        Whether this rank's forward returns the output (the last rank, or every rank with
        ``broadcast=True``); set by each forward.
    offset : int or None
        The global index of this rank's first block (set by the first forward).

    Raises
    ------
    pcrsolve.InputError
        From the constructor, on the rank whose blocks cannot be stacked (as
        ``ParallelSequential``), or for ``broadcast`` with ``return_all``.
    pcrsolve.distributed.DistributedError
        From the forward, on every rank, if the ranks' configurations differ (block width,
        block class and parameter shapes, the analytic-Jacobian path, parameter dtype,
        mode, options) or a rank's input is invalid (its width differs from its blocks',
        a stochastic layer in training mode), naming the ranks; from the backward as said
        under ``broadcast``. Errors of :func:`pcrsolve.distributed.solve` as documented
        there.

    Notes
    -----
    Every forward runs one configuration check (an object all-gather) before the solve;
    every rank must call ``backward`` after a differentiable forward (the adjoint is
    collective), each on its local loss: the gradients are those of the sum of the ranks'
    losses. Each rank gets the gradients of its own blocks' parameters and rank 0 the
    gradient of the input ``x`` (the other ranks' ``x`` values are ignored: pass a tensor
    of the same shape and dtype). If any rank needs gradients, every rank's forward is
    differentiable, so a rank whose blocks are frozen still takes part in the backward.
    With one rank it is ``ParallelSequential(layers, ..., globalisation="none")``.

    Examples
    --------
    Two processes, 12 blocks split 5 + 7 (run under ``torchrun --nproc-per-node 2``)::

        dist.init_process_group("gloo")
        r = dist.get_rank()
        torch.manual_seed(0)                     # the same blocks on every rank
        blocks = [nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(12)]
        mine = blocks[:5] if r == 0 else blocks[5:]
        model = DistributedParallelSequential(mine, broadcast=True)
        out = model(x)                           # x read on rank 0
        loss = ((out - target) ** 2).mean()      # the same loss on every rank
        loss.backward()                          # every rank: its blocks' gradients
    """

    def __init__(self, layers: Sequence[nn.Module] | nn.Sequential, *, group: Any = None,
                 mode: str = "newton", jacobian: str = "auto", broadcast: bool = False,
                 warm_start: bool = False, return_all: bool = False,
                 **solve_kwargs: Any) -> None:
        from pcrsolve.adapters.torch import LayerStack

        super().__init__()
        if not isinstance(broadcast, bool):
            raise InputError(f"`broadcast` must be True or False; got {broadcast!r}")
        if broadcast and return_all:
            raise InputError("`broadcast`=True and `return_all`=True exclude each other: "
                             "return_all returns each rank's own states, broadcast the "
                             "last rank's output")
        self.layers = nn.ModuleList(list(layers))
        self.stack = LayerStack(list(self.layers), jacobian=jacobian)
        self.group = group
        self.mode = mode
        self.broadcast = broadcast
        self.warm_start = warm_start
        self.return_all = return_all
        self.solve_kwargs = solve_kwargs
        self.last_solution: Any = None
        self.has_output = False
        self.offset: int | None = None
        self._init: torch.Tensor | None = None

    def _config(self, x: torch.Tensor, stacked: list[torch.Tensor]) -> dict[str, Any]:
        first = self.stack.layers[0]
        simple = {k: v for k, v in sorted(self.solve_kwargs.items())
                  if v is None or isinstance(v, (bool, int, float, str))}
        return {
            "block width": self.stack.width,
            "block": (type(first).__name__, self.stack.group_size,
                      tuple((n, tuple(p.shape)) for n, p in first.named_parameters())),
            "analytic Jacobian": self.stack.analytic,
            "parameter dtype": sorted({str(p.dtype) for p in stacked}),
            "mode": self.mode, "broadcast": self.broadcast, "return_all": self.return_all,
            "warm_start": self.warm_start, "options": repr(simple),
            "option names": sorted(self.solve_kwargs),
            "_length": self.stack.length,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run this rank's blocks, together with the other ranks'.

        Parameters
        ----------
        x : torch.Tensor, shape (..., w)
            The input, read on rank 0; the other ranks pass a tensor of the same shape and
            dtype (values ignored).

        Returns
        -------
        torch.Tensor
            ``(..., w)``: the last block's output, on the last rank (every rank with
            ``broadcast``); ``(..., 0)`` (empty, but in the autograd graph) on the other
            ranks; ``(..., L_r, w)``, this rank's states, with ``return_all``.
        """
        import array_api_compat

        from pcrsolve.distributed import _check_config, get_communicator
        from pcrsolve.distributed import solve as dsolve

        comm = get_communicator(self.group, array_api_compat.array_namespace(
            torch.zeros(0)))
        P, r = comm.size, comm.rank
        stacked = self.stack.parameters()
        error: Exception | None = None
        try:
            if not isinstance(x, torch.Tensor):
                raise InputError(f"`x` must be a torch.Tensor; got {type(x).__name__}")
            if x.ndim < 1 or (self.stack.width is not None
                              and x.shape[-1] != self.stack.width):
                raise InputError(f"`x` must have shape (..., {self.stack.width}) (the width "
                                 f"of this rank's blocks); got {tuple(x.shape)}")
            self.stack.check_deterministic()
        except Exception as exc:
            error = exc
        local_grad = torch.is_grad_enabled() and (
            (isinstance(x, torch.Tensor) and x.requires_grad)
            or any(p.requires_grad for p in stacked))
        config = {**self._config(x, stacked), "_needs_grad": local_grad}
        if P == 1:
            if error is not None:
                raise error
            configs = [config]
        else:
            configs = _check_config(comm, config, error, "DistributedParallelSequential")
        lengths = [int(c["_length"]) for c in configs]
        offset = self.offset = sum(lengths[:r])
        needs_grad = any(c["_needs_grad"] for c in configs)
        if x.dtype in (torch.float16, torch.bfloat16):
            stacked = [p.float() for p in stacked]  # as ParallelSequential
        fns = self.stack.functions(stacked)
        local_step, local_jac = fns["step"], fns["jacobian"]

        def step(X: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
            return local_step(X, l - offset)  # the solve passes global indices

        kwargs: dict[str, Any] = {"mode": self.mode, **self.solve_kwargs}
        if local_jac is not None and self.mode in ("newton", "quasi"):
            kwargs["jacobian"] = lambda X, l: local_jac(X, l - offset)
        local_pair = fns.get("value_and_jacobian")
        if local_pair is not None and self.mode in ("newton", "quasi"):
            # values and blocks from one call: n + 1 evaluations of the layers, not 2n + 1
            kwargs["value_and_jacobian"] = lambda X, l: local_pair(X, l - offset)
        n, shape = self.stack.length, (*x.shape[:-1], self.stack.length, x.shape[-1])
        if (self.warm_start and self._init is not None and self._init.shape == shape
                and self._init.dtype == x.dtype and self._init.device == x.device):
            kwargs["init"] = self._init
        x_in = x
        if needs_grad and not local_grad:
            # another rank needs gradients: this rank's states must be differentiable too,
            # so that its backward takes part in the (collective) adjoint
            x_in = x.detach().requires_grad_(True)
        with torch.set_grad_enabled(needs_grad):
            params = [p for p in stacked if p.requires_grad] if needs_grad else None
            sol = dsolve(step, x_in, n, group=comm, params=params, **kwargs)
        self.last_solution = sol
        if self.warm_start:
            self._init = sol.states.detach()
        states = sol.states
        self.has_output = self.return_all or self.broadcast or r == P - 1
        if self.return_all:
            return states
        last = states[..., -1, :]
        if self.broadcast and P > 1:
            return _Replicate.apply(last, comm)
        return last if r == P - 1 else last[..., :0]

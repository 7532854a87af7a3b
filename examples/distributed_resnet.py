"""A residual network split over processes: DistributedParallelSequential against nn.Sequential.

A stack of residual blocks ``x + tanh(W x + b)`` is split over ``P`` processes (gloo on
127.0.0.1, launched here with ``torch.multiprocessing``; uneven shares), each holding a
consecutive slice of the blocks in a
:class:`pcrsolve.distributed.DistributedParallelSequential` with ``broadcast=True``. Every
rank trains its own blocks by SGD on the same mean-squared loss; every rank also trains
the whole stack as ``nn.Sequential`` (the plain loop, autograd) from the same
initialisation and batches. The script prints, per training step, the two losses and the
Newton iterations, and at the end, per rank, the largest difference between its trained
blocks and the same blocks trained by the loop (float64: rounding only).

Run time of ``--small`` (2 processes, 12 blocks of width 8, 3 steps) on a 2-core AMD
EPYC shared with other jobs (load average 5-6): 20 s of wall time, 7 s of CPU in all,
most of it importing torch and starting gloo.

Usage::

    python examples/distributed_resnet.py --small
    python examples/distributed_resnet.py --ranks 3 --depth 48 --width 16 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import socket
import sys
from typing import Any

try:
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    print("this example needs torch: pip install torch")
    sys.exit(0)


def shares(depth: int, ranks: int) -> list[int]:
    """Uneven consecutive shares: the first rank gets fewer blocks (it also reads x)."""
    base = [depth // ranks] * ranks
    for i in range(depth - sum(base)):
        base[-1 - i] += 1
    if ranks > 1 and base[0] > 1:
        base[0] -= 1
        base[-1] += 1
    return base


def build(depth: int, width: int, seed: int) -> list[nn.Module]:
    from pcrsolve.adapters.torch import Residual

    torch.manual_seed(seed)
    blocks = [Residual(nn.Sequential(nn.Linear(width, width), nn.Tanh()))
              for _ in range(depth)]
    with torch.no_grad():
        for b in blocks:
            b.body[0].weight.mul_(0.5)
    return [b.double() for b in blocks]


def worker(rank: int, ranks: int, port: int, args: Any, queue: Any) -> None:
    from pcrsolve.distributed import DistributedParallelSequential

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=ranks)
    parts = shares(args.depth, ranks)
    lo = sum(parts[:rank])
    hi = lo + parts[rank]
    blocks = build(args.depth, args.width, seed=0)
    reference = nn.Sequential(*copy.deepcopy(blocks))  # the whole stack, the plain loop
    model = DistributedParallelSequential(copy.deepcopy(blocks[lo:hi]), broadcast=True)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(args.steps):
        x = torch.randn(args.batch, args.width, generator=g, dtype=torch.float64)
        y = torch.sin(x)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()  # the same loss on every rank (broadcast)
        loss.backward()  # every rank: the gradients of its own blocks
        opt.step()
        opt_ref.zero_grad()
        loss_ref = ((reference(x) - y) ** 2).mean()
        loss_ref.backward()
        opt_ref.step()
        rows.append((loss.item(), loss_ref.item(), model.last_solution.iterations))
    mine = [p for b in model.layers for p in b.parameters()]
    ref = [p for b in reference[lo:hi] for p in b.parameters()]
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(mine, ref, strict=True))
    got: list[Any] = [None] * ranks
    dist.all_gather_object(got, (rank, lo, hi, diff))
    if rank == 0:
        queue.put((rows, got))  # a SimpleQueue writes to its pipe before put returns
    dist.barrier()
    # leave without the C++ teardown: gloo's threads were seen to abort a process at exit
    # ("terminate called without an active exception") after all its work was done
    sys.stdout.flush()
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="2 processes, 12 blocks, 3 steps")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    if args.small:
        args.ranks, args.depth, args.width, args.steps = 2, 12, 8, 3
    if not dist.is_available() or not dist.is_gloo_available():
        print("this example needs torch.distributed with gloo")
        return 0
    if not 1 <= args.ranks <= args.depth:
        p.error("--ranks must be between 1 and --depth")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # fork where there is one (the children inherit the imports: seconds saved per
    # process); nothing here has started threads or CUDA before the fork
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    for module in ("pcrsolve.adapters.torch", "pcrsolve.adapters.torch_distributed"):
        importlib.import_module(module)  # once, before the fork

    queue = mp.get_context(method).SimpleQueue()
    mp.start_processes(worker, args=(args.ranks, port, args, queue), nprocs=args.ranks,
                       join=True, start_method=method)
    rows, ranks = queue.get()
    print(f"{args.depth} residual blocks of width {args.width} over {args.ranks} gloo "
          f"processes (shares {shares(args.depth, args.ranks)}), float64, batch "
          f"{args.batch}, SGD lr {args.lr}")
    print("compared: DistributedParallelSequential (each rank its blocks, Newton-PCR "
          "forward, distributed adjoint backward) against nn.Sequential of all blocks "
          "(the loop, autograd), same initialisation and batches")
    print(f"{'step':>4}  {'loss (distributed)':>20}  {'loss (nn.Sequential)':>20}  "
          f"{'Newton its':>10}")
    for i, (a, b, its) in enumerate(rows):
        print(f"{i:>4}  {a:>20.15f}  {b:>20.15f}  {its:>10}")
    for r, lo, hi, diff in ranks:
        print(f"rank {r}: blocks {lo}..{hi - 1}, largest |parameter - loop's| after "
              f"{args.steps} steps: {diff:.1e}")
    worst = max(d for *_, d in ranks)
    print("agree to float64 rounding" if worst < 1e-9 else "DIFFER beyond rounding")
    return 0 if worst < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())

"""``bench distributed``: sequence-parallel solves across processes (torch.distributed).

Launch with one process per rank, e.g. on a 2-core CPU::

    torchrun --standalone --nproc-per-node 2 -m pcrsolve bench distributed

Every process runs with one thread (``torch.set_num_threads(1)``). Two cases:

* *newton*: the tanh recurrence ``x_l = tanh(W_l x_{l-1} + c_l)`` of ``bench newton``
  (``w = 4``, ``B = 8``, ``L = 2^16``), each rank holding its ``L/P`` steps' weights;
* *linear*: a diagonal linear recurrence (``w = 1``, ``L = 2^22``), memory-bound.

For each: the distributed solve (median of ``--repeat`` runs), the single-process solve and
every sequential loop of :mod:`pcrsolve.bench.baselines` (on rank 0 while the other ranks
wait at a barrier), per-iteration compute time, communication time and payload bytes of
rank 0, and the communication of the same solve at ``L/16`` (it must not depend on ``L``).
Run without torchrun it uses one process (P = 1: the single-process solver).
"""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import time
from typing import Any

import numpy as np

from ..distributed import ThreadedGroup, _solve_impl
from ..distributed import solve as dsolve
from ..distributed import solve_linear as dsolve_linear
from ..linear import solve_linear
from ..newton import solve
from ..system import BidiagonalSystem
from .baselines import linear_baselines, linear_reference, mlp_baselines, mlp_reference
from .harness import Report, Row, Workspace, machine_description, relative_error, suite

__all__ = ["run_distributed"]

#: ``(L_newton, L_linear)`` per ``--size``.
SIZES = {"tiny": (1 << 10, 1 << 14), "small": (1 << 16, 1 << 22),
         "medium": (1 << 16, 1 << 22), "full": (1 << 18, 1 << 24)}


def _init() -> Any:
    """The default process group: torchrun's environment, or a group of one process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=300)
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group("gloo", timeout=timeout)
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                    world_size=1, timeout=timeout)
    from ..backends.torch_distributed import TorchCommunicator

    return TorchCommunicator()


def _segment(L: int, P: int, r: int) -> tuple[int, int]:
    base, extra = divmod(L, P)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


def _timed(comm: Any, fn: Any, repeat: int) -> tuple[Any, list[float], list[dict]]:
    """``fn()`` after a barrier, ``repeat`` times (plus one warm-up); times and comm stats."""
    import torch.distributed as dist

    out, times, stats = fn(), [], []
    for _ in range(repeat):
        dist.barrier()
        comm.reset_stats()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        stats.append({**comm.stats, "cpu": time.process_time() - c0})
    return out, times, stats


def _clock(fn: Any, repeat: int) -> tuple[Any, list[float], float]:
    """``fn()`` ``repeat`` times after a warm-up: the last result, wall times and the median
    CPU seconds of this process."""
    out, times, cpu = fn(), [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return out, times, statistics.median(cpu)


def _baseline_rows(bases: Any, ref: Any, repeat: int, baselines: list[str],
                   notes: list[str]) -> list[Row]:
    """Time each sequential baseline (a row each, checked against ``ref``); their names
    go to ``baselines`` and their notes to ``notes``."""
    rows = []
    for base in bases:
        res, t, cpu = _clock(base.run, repeat)
        rows.append(Row(base.name, statistics.median(t), t,
                        relative_error(base.to_numpy(res), ref), None,
                        {"cpu ms/it": f"{cpu * 1e3:.1f}"}))
        baselines.append(base.name)
        notes.append(f"  {base.name}: {base.note}")
    return rows


def _on_rank0(comm: Any, fn: Any) -> Any:
    """``fn()`` on rank 0 while the others wait at a barrier."""
    import torch.distributed as dist

    out = fn() if comm.rank == 0 else None
    dist.barrier()
    return out


def _comm_row(name: str, times: list[float], stats: list[dict], iterations: int, err: float,
              cpu: float | None = None) -> Row:
    med = statistics.median(times)
    comm_s = statistics.median(s["seconds"] for s in stats)
    its = max(iterations, 1)
    return Row(name, med, times, err, None, {
        "iterations": iterations,
        "cpu ms/it": "" if cpu is None else f"{cpu / its * 1e3:.1f}",
        "compute ms/it": f"{(med - comm_s) / its * 1e3:.2f}",
        "comm ms/it": f"{comm_s / its * 1e3:.2f}",
        "bytes/it": int(stats[-1]["bytes"] / its),
        "collectives/it": f"{stats[-1]['calls'] / its:.1f}"})


def _newton_case(opts: Any, comm: Any, ws: Workspace, L: int) -> Report | None:
    import torch

    P, r = comm.size, comm.rank
    w, B, seed = 4, 8, getattr(opts, "seed", 0)
    rng = np.random.default_rng(seed)
    Wn = rng.standard_normal((L, w, w)) / np.sqrt(w)
    cn = 0.5 * rng.standard_normal((L, w))
    x0n = np.random.default_rng(seed + 1).standard_normal((B, w))
    tol, repeat = getattr(opts, "tol", None), getattr(opts, "repeat", 5)
    x0 = ws.asarray(x0n)

    def functions(lo: int, hi: int) -> tuple[Any, Any]:
        W, c = ws.asarray(Wn[lo:hi]), ws.asarray(cn[lo:hi])

        def step(x: Any, l: Any) -> Any:
            return torch.tanh(torch.einsum("nij,...nj->...ni", W[l - lo], x) + c[l - lo])

        def jac(x: Any, l: Any) -> Any:
            return (1 - step(x, l) ** 2)[..., None] * W[l - lo]

        return step, jac

    lo, hi = _segment(L, P, r)
    step, jac = functions(lo, hi)
    sol, times, stats = _timed(comm, lambda: dsolve(step, x0, hi - lo, group=comm,
                                                    jacobian=jac, tol=tol, throw=False),
                               repeat)
    # communication at L/16: the same per iteration
    lo16, hi16 = _segment(L // 16, P, r)
    step16, jac16 = functions(lo16, hi16)
    sol16, _, stats16 = _timed(comm, lambda: dsolve(step16, x0, hi16 - lo16, group=comm,
                                                    jacobian=jac16, tol=tol, throw=False), 1)
    import torch.distributed as dist

    parts: list[Any] = [None] * P
    dist.all_gather_object(parts, ws.to_numpy(sol.states))
    cpus: list[Any] = [None] * P  # the busiest rank's CPU seconds
    dist.all_gather_object(cpus, statistics.median(st["cpu"] for st in stats))
    if r != 0:
        _on_rank0(comm, lambda: None)
        return None
    ref = mlp_reference(Wn, cn, x0n)
    states = np.concatenate(parts, axis=-2)
    rows, baselines, notes = [], [], []

    def single() -> list[Row]:
        fstep, fjac = functions(0, L)
        out = _baseline_rows(mlp_baselines(ws, Wn, cn, x0n), ref, repeat, baselines, notes)
        # the same iteration as the distributed solve (which runs globalisation="none")
        s1, t, cpu = _clock(lambda: solve(fstep, x0, L, jacobian=fjac, tol=tol, throw=False,
                                          globalisation="none"), repeat)
        out.append(Row("pcrsolve newton, 1 process", statistics.median(t), t,
                       relative_error(ws.to_numpy(s1.states), ref), None,
                       {"iterations": s1.iterations,
                        "cpu ms/it": f"{cpu / max(s1.iterations, 1) * 1e3:.1f}"}))
        # the distributed code path on one rank (its compiled local passes, no peers): the
        # P-process row against this one is the scaling of the same code
        one = ThreadedGroup(1).rank_view(0)

        def same_code() -> Any:
            return _solve_impl(fstep, x0, L, one, mode="newton", jacobian=fjac,
                               jacobian_structure="dense", jvp=None, tol=tol, atol=None,
                               max_iter=None, init=None, linear_method="auto", throw=False,
                               check_inputs=True)[0]

        s1, t, cpu = _clock(same_code, repeat)
        out.append(Row("pcrsolve.distributed code, 1 process", statistics.median(t), t,
                       relative_error(ws.to_numpy(s1.states), ref), None,
                       {"iterations": s1.iterations,
                        "cpu ms/it": f"{cpu / max(s1.iterations, 1) * 1e3:.1f}"}))
        return out

    rows = _on_rank0(comm, single)
    rows.append(_comm_row(f"pcrsolve.distributed newton, P={P}", times, stats,
                          sol.iterations, relative_error(states, ref), max(cpus)))
    rows.append(_comm_row(f"  same at L/16 = {L // 16} (comm only)", [float("nan")], stats16,
                          sol16.iterations, None))
    rows[-1].median_s = float("inf")
    one = next(x for x in rows if x.name.startswith("pcrsolve newton, 1"))
    same = next(x for x in rows if x.name.startswith("pcrsolve.distributed code, 1"))
    notes.append(f"  distributed vs 1-process solve: {one.median_s / rows[-2].median_s:.2f}x "
                 f"(target >= 1.6x at P = 2); vs the same code on 1 process: "
                 f"{same.median_s / rows[-2].median_s:.2f}x")
    notes.append("  compute = wall time - time inside collectives (waits for slower ranks "
                 "count as comm); bytes = payload received by rank 0; cpu = CPU time of the "
                 "process (the busiest rank; collectives' CPU included): on a loaded machine wall "
                 "time / cpu shows the share of a core each process got")
    return Report("distributed newton", {"P": P, "L": L, "w": w, "batch": B, "dtype":
                                         ws.dtype_name, "threads/process": 1}, rows,
                  machine=machine_description("torch", "cpu"), baselines=baselines,
                  notes=notes, slower_reason="Newton-PCR does several times the loop's work "
                  "per step; P processes divide it by P, not by the work ratio")


def _linear_case(opts: Any, comm: Any, ws: Workspace, L: int) -> Report | None:
    import torch.distributed as dist

    P, r = comm.size, comm.rank
    rng = np.random.default_rng(getattr(opts, "seed", 0))
    An = rng.uniform(0.9, 0.99, (1, L, 1))
    bn = rng.standard_normal((1, L, 1))
    x0n = np.zeros((1, 1))
    repeat = getattr(opts, "repeat", 5)
    lo, hi = _segment(L, P, r)
    A, b, x0 = ws.asarray(An[:, lo:hi]), ws.asarray(bn[:, lo:hi]), ws.asarray(x0n)
    system = BidiagonalSystem(A, b, x0, structure="diagonal", check_finite=False)
    x, times, stats = _timed(comm, lambda: dsolve_linear(system, group=comm), repeat)
    lo16, hi16 = _segment(L // 16, P, r)
    small = BidiagonalSystem(ws.asarray(An[:, lo16:hi16]), ws.asarray(bn[:, lo16:hi16]), x0,
                             structure="diagonal", check_finite=False)
    _, _, stats16 = _timed(comm, lambda: dsolve_linear(small, group=comm), 1)
    parts: list[Any] = [None] * P
    dist.all_gather_object(parts, ws.to_numpy(x))
    cpus: list[Any] = [None] * P  # the busiest rank's CPU seconds
    dist.all_gather_object(cpus, statistics.median(st["cpu"] for st in stats))
    if r != 0:
        _on_rank0(comm, lambda: None)
        return None
    ref = linear_reference(An, bn, x0n, "diagonal")
    baselines, notes = [], []

    def single() -> list[Row]:
        out = _baseline_rows(linear_baselines(ws, An, bn, x0n, "diagonal", eager=False), ref,
                              repeat, baselines, notes)
        full = BidiagonalSystem(ws.asarray(An), ws.asarray(bn), x0, structure="diagonal",
                                check_finite=False)
        y, t, cpu = _clock(lambda: solve_linear(full), repeat)
        out.append(Row("pcrsolve solve_linear, 1 process", statistics.median(t), t,
                       relative_error(ws.to_numpy(y), ref), None,
                       {"cpu ms/it": f"{cpu * 1e3:.1f}"}))
        return out

    rows = _on_rank0(comm, single)
    rows.append(_comm_row(f"pcrsolve.distributed solve_linear, P={P}", times, stats, 1,
                          relative_error(np.concatenate(parts, axis=-2), ref), max(cpus)))
    rows.append(_comm_row(f"  same at L/16 = {L // 16} (comm only)", [float("nan")], stats16,
                          1, None))
    rows[-1].median_s = float("inf")
    loop = min((x for x in rows if x.name in baselines), key=lambda x: x.median_s)
    bound = 3 * P / 5
    got = loop.median_s / rows[-2].median_s
    notes.append(f"  vs the fastest loop: {got:.2f}x; two-pass traffic bound 3P/5 = {bound:.2f}x "
                 f"({got / bound:.0%} of it; target 90%)")
    loop_cpu, rank_cpu = float(loop.extra["cpu ms/it"]) / 1e3, max(max(cpus), 1e-9)
    notes.append(f"  in CPU time (robust to other load): the loop {loop_cpu * 1e3:.1f} ms, the "
                 f"busiest rank {rank_cpu * 1e3:.1f} ms: {loop_cpu / rank_cpu:.2f}x "
                 f"({loop_cpu / rank_cpu / bound:.0%} of the bound); cpu = CPU time of the "
                 "process, compute = wall - comm")
    return Report("distributed linear", {"P": P, "L": L, "w": 1, "structure": "diagonal",
                                         "dtype": ws.dtype_name, "threads/process": 1}, rows,
                  machine=machine_description("torch", "cpu"), baselines=baselines,
                  notes=notes, slower_reason="the P processes share one memory bus, every rank "
                  "but the first redoes the prefix its entering state still reaches, and a "
                  "solve waits for two collectives (gloo, ~0.4 ms each here)")


@suite("distributed")
def run_distributed(opts: Any) -> None:
    """Both cases; rank 0 prints the tables (and writes ``--json``); returns None."""
    import importlib.util
    import sys

    def usage_error(message: str) -> None:  # the CLI's convention: one line, exit status 2
        print(f"bench distributed: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    if importlib.util.find_spec("torch") is None:
        usage_error("this suite needs PyTorch (torch.distributed), which is not installed: "
                    "pip install torch")
    cases = list(getattr(opts, "cases", None) or ["newton", "linear"])
    unknown = sorted(set(cases) - {"newton", "linear"})
    if unknown:
        usage_error(f"--cases must be newton and/or linear; got {', '.join(unknown)}")
    import torch

    torch.set_num_threads(1)
    if importlib.util.find_spec("numba") is not None:
        import numba

        numba.set_num_threads(1)  # the compiled local passes: one thread per process too
    comm = _init()
    dtype = getattr(opts, "dtype", "float64")
    ws = Workspace("torch", "cpu", dtype)
    L_newton, L_linear = SIZES[getattr(opts, "size", "small") or "small"]
    if getattr(opts, "length", None):
        L_newton = L_linear = int(opts.length)  # an explicit -L sets both cases
    reports = []
    if "newton" in cases:
        reports.append(_newton_case(opts, comm, ws, L_newton))
    if "linear" in cases:
        reports.append(_linear_case(opts, comm, ws, L_linear))
    if comm.rank == 0:
        for rep in reports:
            print(rep.table())
            print()
        if getattr(opts, "json", None):
            from .harness import write_json

            write_json(reports, opts.json)
            print(f"wrote {opts.json}")
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()  # else gloo's threads may abort the process at exit
    return None

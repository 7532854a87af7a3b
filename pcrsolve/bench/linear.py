"""``bench linear``: every linear method against every sequential loop on one system.

The sequential contenders (:mod:`pcrsolve.bench.baselines`: a lean Python/NumPy loop,
numba, jax, the library's eager loop) and pcrsolve's own methods run on the same random
system in one process; the speed-up column is against the fastest contender, which the
output names, and every row's error is against an independent float64 loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import get_backend
from ..linear import METHODS, choose_method, solve_linear
from ..system import BidiagonalSystem
from .baselines import FLOOR_NAME, linear_baselines, linear_reference, memory_floor
from .harness import (
    Report,
    Row,
    Workspace,
    machine_description,
    measure,
    median,
    relative_error,
    suite,
)

__all__ = ["SLOWER_REASON", "make_linear_problem", "run_linear"]

#: Why a parallel solve can lose to the best loop on a CPU, in one line.
SLOWER_REASON = ("on this CPU the extra work of a parallel solve is not repaid; its "
                 "O(log L) depth pays on wide hardware (GPU), see `bench gpu`")


def make_linear_problem(
    structure: str, L: int, w: int, batch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random stable system as NumPy float64 arrays ``(A, b, x0)``.

    Blocks are contracting on average (scalar/diagonal entries in [-0.95, 0.95], dense
    blocks with entries N(0, 1/(2w))), so states stay bounded for any ``L``.

    Returns
    -------
    A : np.ndarray, shape (batch, L, w, w) / (batch, L, w) / (batch, L)
    b : np.ndarray, shape (batch, L, w)
    x0 : np.ndarray, shape (batch, w)
    """
    rng = np.random.default_rng(seed)
    shape_a = {"dense": (batch, L, w, w), "diagonal": (batch, L, w), "scalar": (batch, L)}
    if structure == "dense":
        A = rng.standard_normal(shape_a["dense"]) / np.sqrt(2.0 * w)
    else:
        A = rng.uniform(-0.95, 0.95, shape_a[structure])
    b = rng.standard_normal((batch, L, w))
    x0 = rng.standard_normal((batch, w))
    return A, b, x0


class LinearReport(Report):
    """A :class:`Report` whose memory-floor row is neither a baseline nor a contender."""

    def contenders(self) -> list[Row]:
        return [r for r in super().contenders() if r.name != FLOOR_NAME]


@suite("linear")
def run_linear(opts: Any) -> Report:
    """Time every sequential loop, the memory floor and pcrsolve's methods (kernel too)."""
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    A, b, x0 = make_linear_problem(opts.structure, opts.length, opts.width, opts.batch, opts.seed)
    system = BidiagonalSystem(ws.asarray(A), ws.asarray(b), ws.asarray(x0),
                              structure=opts.structure, reverse=opts.reverse)
    ref = linear_reference(A, b, x0, opts.structure, opts.reverse)
    rows, baselines, notes = [], [], []
    for base in linear_baselines(ws, A, b, x0, opts.structure, opts.reverse):
        out, times, peak = measure(ws, base.run, opts.repeat)
        rows.append(Row(base.name, median(times), times,
                        relative_error(base.to_numpy(out), ref), peak))
        baselines.append(base.name)
        notes.append(f"  {base.name}: {base.note}")
    floor_run = memory_floor(A.astype(opts.dtype), b.astype(opts.dtype))
    _, floor_times, _ = measure(ws, floor_run, opts.repeat)
    floor = Row(FLOOR_NAME, median(floor_times), floor_times)
    rows.append(floor)
    notes.append(f"  {FLOOR_NAME}: reads A and b once and writes x once, on every core; "
                 "excluded from the speed-up baseline; 'x floor' = time / floor time")
    methods = opts.methods or ["sequential", *[m for m in METHODS if m != "sequential"], "auto"]
    if not opts.methods and get_backend(system.xp).fast_linear(system) is not None:
        methods.insert(-1, "kernel")
    for m in methods:
        out, times, peak = measure(ws, lambda m=m: solve_linear(system, method=m), opts.repeat)
        extra = {"chose": choose_method(system)} if m == "auto" else {}
        rows.append(Row(f"pcrsolve {m}", median(times), times,
                        relative_error(ws.to_numpy(out), ref), peak, extra))
    problem = {"backend": ws.backend, "device": str(ws.device), "dtype": opts.dtype,
               "structure": opts.structure, "L": opts.length, "w": opts.width,
               "batch": opts.batch, "reverse": opts.reverse, "repeat": opts.repeat}
    for r in rows:
        r.extra["x floor"] = f"{r.median_s / floor.median_s:.2f}"
    return LinearReport("linear", problem, rows, machine=machine_description(ws.backend,
                                                                      str(ws.device)),
                  baselines=baselines, notes=notes, slower_reason=SLOWER_REASON)

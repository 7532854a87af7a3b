"""``bench linear``: every linear method against the sequential loop on one system."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..linear import METHODS, choose_method, solve_linear
from ..system import BidiagonalSystem
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

__all__ = ["make_linear_problem", "run_linear"]


def make_linear_problem(
    structure: str, L: int, w: int, batch: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random stable system as NumPy float64 arrays ``(A, b, x0)``.

    Blocks are contracting on average (scalar/diagonal entries in [-0.95, 0.95], dense
    blocks with entries N(0, 1/(2w))), so states stay bounded for any ``L``.
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


@suite("linear")
def run_linear(opts: Any) -> Report:
    """Time sequential, pcr, cr, chunked and auto on one random system."""
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    A, b, x0 = make_linear_problem(opts.structure, opts.length, opts.width, opts.batch, opts.seed)
    system = BidiagonalSystem(ws.asarray(A), ws.asarray(b), ws.asarray(x0),
                              structure=opts.structure, reverse=opts.reverse)
    methods = opts.methods or ["sequential", *[m for m in METHODS if m != "sequential"], "auto"]
    if "sequential" not in methods:
        methods = ["sequential", *methods]
    rows = []
    ref = None
    for m in methods:
        out, times, peak = measure(ws, lambda m=m: solve_linear(system, method=m), opts.repeat)
        x = ws.to_numpy(out)
        if ref is None:
            ref = x
        extra = {"chose": choose_method(system)} if m == "auto" else {}
        rows.append(Row(m, median(times), times, relative_error(x, ref), peak, extra))
    problem = {"backend": ws.backend, "device": str(ws.device), "dtype": opts.dtype,
               "structure": opts.structure, "L": opts.length, "w": opts.width,
               "batch": opts.batch, "reverse": opts.reverse, "repeat": opts.repeat}
    return Report("linear", problem, rows, "sequential",
                  machine_description(ws.backend, str(ws.device)))

"""Choosing a linear solver: a cost model per backend and device.

The sequential loop pays a fixed overhead per step (interpreter, kernel launch) and
little arithmetic; the parallel solvers pay a fixed overhead per level (``log2 L`` of them)
and more arithmetic (dense blocks: ``w^3`` per product instead of ``w^2`` per step).
``method="auto"`` estimates each method's time from the backend's
:class:`~pcrsolve.backends.CostModel` and picks the cheapest:

* a backend's compiled kernel (``"kernel"``) whenever it applies and its fixed call cost is
  repaid: on a GPU always, on a CPU with numba from a handful of steps on (a kernel call
  costs less than the loop's own fixed cost);
* long scalar or diagonal recurrences without a kernel: ``"cr"`` on a CPU, ``"pcr"`` or
  ``"cr"`` on a GPU;
* short recurrences of wide dense blocks: ``"sequential"`` (the extra ``w^3`` work of a
  block product costs more than the overhead it saves);
* narrow dense blocks with a small batch: ``"chunked"`` or ``"cr"`` (a large batch
  amortises the loop's per-step overhead, and the loop wins again).
"""

from __future__ import annotations

import math
from typing import Any

from ..backends import get_backend
from .chunked import default_chunk_size

__all__ = ["choose_method", "estimate_costs", "time_methods"]


def _parallel(n: int, batch: int, a_batch: int, w: int, dense: bool, m: Any) -> float:
    """Arithmetic of ``n`` block applications (batch) and products (A's batch)."""
    if dense:
        blocks = n * (batch + a_batch)
        return blocks * m.block_overhead + n * (batch * w * w + a_batch * w**3) * m.par_flop_time
    return n * (batch * w + a_batch * w) * m.elementwise_time


def estimate_costs(system: Any) -> dict[str, float]:
    """Estimated seconds of each method on ``system`` (a rough model, for choosing).

    Parameters
    ----------
    system : BidiagonalSystem

    Returns
    -------
    dict of str to float
        Keys ``"sequential"``, ``"cr"``, ``"pcr"`` and ``"chunked"``, and ``"kernel"``
        where the backend's cost model prices a compiled kernel (finite
        ``kernel_overhead``).
    """
    L, w, s = system.length, system.width, system.structure
    m = get_backend(system.xp).cost_model(system.device)
    batch = math.prod(system.batch_shape)
    a_batch = math.prod(s.batch_shape(system.A))
    dense = s.block_ndim == 2
    levels = max(1, math.ceil(math.log2(max(L, 2))))
    per_step = w * w if dense else w
    seq_step = m.step_overhead + batch * per_step * (m.seq_flop_time if dense else 1e-9)
    float_step = getattr(m, "float_step", None)
    if float_step is not None and w == 1 and batch <= 4:  # the lean loop on Python floats
        seq_step = batch * float_step
    cr = 2 * levels * m.level_overhead + _parallel(2 * L, batch, a_batch, w, dense, m)
    C = default_chunk_size(L)
    n = -(-L // C)
    chunk_levels = max(1, math.ceil(math.log2(max(n, 2))))
    chunked = (
        3 * C * m.step_overhead
        + 2 * chunk_levels * m.level_overhead
        + _parallel(3 * L, batch, a_batch, w, dense, m)
    )
    costs = {
        "sequential": getattr(m, "loop_overhead", 0.0) + L * seq_step,
        "cr": cr,
        "pcr": levels * m.level_overhead + _parallel(levels * L, batch, a_batch, w, dense, m),
        "chunked": chunked,
    }
    kernel_overhead = getattr(m, "kernel_overhead", math.inf)
    if math.isfinite(kernel_overhead):
        flop = getattr(m, "kernel_dense_flop_time", m.kernel_flop_time) if dense \
            else m.kernel_flop_time
        costs["kernel"] = kernel_overhead + L * batch * per_step * flop
    return costs


def choose_method(system: Any) -> str:
    """The method ``method="auto"`` uses for ``system``.

    Parameters
    ----------
    system : BidiagonalSystem

    Returns
    -------
    str
        One of ``"sequential"``, ``"cr"``, ``"pcr"``, ``"chunked"``, or ``"kernel"`` (a
        fused kernel of the backend: on an accelerator wherever one applies, on a CPU
        with numba where the cost model says it is cheapest).
    """
    if system.length <= 2:
        return "sequential"
    backend = get_backend(system.xp)
    if backend.is_accelerator(system.device) and backend.fast_linear(system) is not None:
        return "kernel"
    costs = estimate_costs(system)
    if "kernel" in costs and backend.fast_linear(system) is None:
        del costs["kernel"]
    return min(costs, key=costs.__getitem__)


def time_methods(system: Any, methods: Any = None, repeat: int = 5) -> dict[str, float]:
    """Median seconds of each method on ``system``, measured here (to check ``auto``'s pick).

    Parameters
    ----------
    system : BidiagonalSystem
    methods : iterable of str, optional
        Default: every method of :data:`pcrsolve.linear.METHODS`, and ``"kernel"`` where the
        backend has one for ``system``.
    repeat : int, default 5
        Timed runs per method after one untimed warm-up run.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> import numpy as np
    >>> import pcrsolve
    >>> from pcrsolve.linear.auto import time_methods
    >>> system = pcrsolve.BidiagonalSystem(np.full((64,), 0.5), np.ones((64, 1)),
    ...                                    structure="scalar")
    >>> sorted(time_methods(system, ["sequential", "cr"], repeat=1))
    ['cr', 'sequential']
    """
    import statistics

    from . import METHODS, solve_linear

    backend = get_backend(system.xp)
    if methods is None:
        methods = list(METHODS) + (["kernel"] if backend.fast_linear(system) is not None
                                   else [])
    times = {}
    for m in methods:
        solve_linear(system, method=m)
        runs = []
        for _ in range(max(1, int(repeat))):
            backend.synchronize(system.device)
            t0 = backend.timer()
            solve_linear(system, method=m)
            backend.synchronize(system.device)
            runs.append(backend.timer() - t0)
        times[m] = statistics.median(runs)
    return times

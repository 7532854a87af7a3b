"""Choosing a linear solver: a cost model per backend and device.

The sequential loop pays a fixed overhead per step (interpreter, kernel launch) and
little arithmetic; the parallel solvers pay a fixed overhead per level (``log2 L`` of them)
and more arithmetic (dense blocks: ``w^3`` per product instead of ``w^2`` per step).
``method="auto"`` estimates both from the backend's :class:`~pcrsolve.backends.CostModel`
and picks the cheaper:

* long scalar or diagonal recurrences: ``"cr"`` on a CPU, ``"pcr"`` on a GPU;
* short recurrences of wide dense blocks: ``"sequential"`` (the extra ``w^3`` work of a
  block product costs more than the overhead it saves).
"""

from __future__ import annotations

import math
from typing import Any

from ..backends import get_backend

__all__ = ["choose_method", "estimate_costs"]


def estimate_costs(system: Any) -> dict[str, float]:
    """Estimated seconds of each method on ``system`` (a rough model, for choosing).

    Parameters
    ----------
    system : BidiagonalSystem

    Returns
    -------
    dict of str to float
        Keys ``"sequential"``, ``"cr"`` and ``"pcr"``.
    """
    L, w, s = system.length, system.width, system.structure
    model = get_backend(system.xp).cost_model(system.device)
    batch = math.prod(system.batch_shape)
    a_batch = math.prod(s.batch_shape(system.A))
    apply, compose = s.flops(w)
    levels = max(1, math.ceil(math.log2(max(L, 2))))
    t = model.flop_time
    return {
        "sequential": L * (model.step_overhead + batch * apply * t),
        "cr": 2 * levels * model.level_overhead + L * (2 * batch * apply + a_batch * compose) * t,
        "pcr": levels * model.level_overhead
        + levels * L * (batch * apply + a_batch * compose) * t,
    }


def choose_method(system: Any) -> str:
    """The method ``method="auto"`` uses for ``system``.

    Parameters
    ----------
    system : BidiagonalSystem

    Returns
    -------
    str
        One of ``"sequential"``, ``"cr"``, ``"pcr"``.
    """
    if system.length <= 2:
        return "sequential"
    costs = estimate_costs(system)
    return min(costs, key=costs.__getitem__)

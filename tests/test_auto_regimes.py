"""``choose_method`` across its regimes, with and without numba, against the cost model.

Two oracles, both from :mod:`pcrsolve.linear.auto`'s documentation:

* the documented regimes (kernel on a CPU with numba beyond a few dozen steps; ``cr`` for
  long scalar/diagonal chains without a kernel; the loop for short wide dense blocks;
  ``chunked`` or ``cr`` for narrow dense blocks with a batch; the loop for ``L <= 2``);
* the predicted costs, recomputed here from the backend's :class:`CostModel` constants
  with the formulas the module states (levels ``ceil(log2 L)``, chunks of
  ``ceil(sqrt L)`` steps, ...): ``estimate_costs`` must match them, and the choice must
  never cost more than 1.2x the cheapest available prediction.

Systems are built on broadcast views of zeros with ``check_finite=False``: choosing never
reads the data, so long and wide cases cost no memory.
"""

from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import pytest
from pcrsolve.backends import get_backend

import pcrsolve
from pcrsolve.linear import choose_method, estimate_costs

SHAPES = {"dense": lambda L, w: (L, w, w), "diagonal": lambda L, w: (L, w),
          "scalar": lambda L, w: (L,)}


def make(structure: str, L: int, w: int, batch: tuple[int, ...] = (), a_batch=None,
         lib: str = "numpy"):
    a_batch = batch if a_batch is None else a_batch
    a_shape = (*a_batch, *SHAPES[structure](L, w))
    b_shape = (*batch, L, w)
    if lib == "numpy":
        A = np.broadcast_to(np.zeros(1), a_shape)
        b = np.broadcast_to(np.zeros(1), b_shape)
    elif lib == "torch":
        import torch

        A = torch.zeros(1, dtype=torch.float64).expand(a_shape)
        b = torch.zeros(1, dtype=torch.float64).expand(b_shape)
    else:
        import array_api_strict as xps

        A, b = xps.zeros(a_shape, dtype=xps.float64), xps.zeros(b_shape, dtype=xps.float64)
    return pcrsolve.BidiagonalSystem(A, b, structure=structure, check_finite=False)


def predicted(system) -> dict[str, float]:
    """The cost model's predictions, from its documented formulas (see the module)."""
    m = get_backend(system.xp).cost_model(system.device)
    L, w = system.length, system.width
    name = system.structure.name
    dense = name == "dense"
    nd = {"dense": 2, "diagonal": 1, "scalar": 0}[name]
    batch = math.prod(system.batch_shape)
    a_batch = math.prod(tuple(system.A.shape)[: system.A.ndim - 1 - nd])

    def par(n: int) -> float:  # n block applications (batch) and products (A's batch)
        if dense:
            return (n * (batch + a_batch) * m.block_overhead
                    + n * (batch * w**2 + a_batch * w**3) * m.par_flop_time)
        return n * (batch + a_batch) * w * m.elementwise_time

    levels = max(1, math.ceil(math.log2(max(L, 2))))
    per_step = w * w if dense else w
    step = m.step_overhead + batch * per_step * (m.seq_flop_time if dense else 1e-9)
    if getattr(m, "float_step", None) is not None and w == 1 and batch <= 4:
        step = batch * m.float_step
    C = math.ceil(math.sqrt(L))
    while C * C < L:  # exact ceil(sqrt(L)) for large L
        C += 1
    while (C - 1) * (C - 1) >= L and C > 1:
        C -= 1
    n = math.ceil(L / C)
    out = {
        "sequential": getattr(m, "loop_overhead", 0.0) + L * step,
        "cr": 2 * levels * m.level_overhead + par(2 * L),
        "pcr": levels * m.level_overhead + par(levels * L),
        "chunked": (3 * C * m.step_overhead
                    + 2 * max(1, math.ceil(math.log2(max(n, 2)))) * m.level_overhead
                    + par(3 * L)),
    }
    overhead = getattr(m, "kernel_overhead", math.inf)
    if math.isfinite(overhead):
        flop = m.kernel_dense_flop_time if dense else m.kernel_flop_time
        out["kernel"] = overhead + L * batch * per_step * flop
    return out


def available(system, costs: dict[str, float]) -> dict[str, float]:
    if "kernel" in costs and get_backend(system.xp).fast_linear(system) is None:
        return {k: v for k, v in costs.items() if k != "kernel"}
    return costs


def have_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


@pytest.fixture(params=["numba", "no-numba"])
def numba_mode(request, monkeypatch):
    if request.param == "numba":
        if not have_numba():
            pytest.skip("numba not installed")
        monkeypatch.delenv("PCRSOLVE_NO_NUMBA", raising=False)
    else:
        monkeypatch.setenv("PCRSOLVE_NO_NUMBA", "1")
    return request.param


GRID = list(itertools.product(["scalar", "diagonal", "dense"], [3, 5, 8, 40, 64, 1000, 1 << 14],
                              [1, 4, 32], [(), (8,)]))


def test_estimates_follow_the_documented_model_and_the_choice_is_near_the_cheapest(numba_mode):
    for structure, L, w, batch in GRID:
        if structure == "scalar" and w > 4:
            continue
        s = make(structure, L, w, batch)
        want = predicted(s)
        got = estimate_costs(s)
        assert set(got) == set(want), (structure, L, w, batch)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), (k, structure, L, w, batch)
        assert ("kernel" in got) is (numba_mode == "numba")
        costs = available(s, want)
        choice = choose_method(s)
        assert choice in costs, (choice, structure, L, w, batch)
        assert costs[choice] <= 1.2 * min(costs.values()), (choice, costs)


@pytest.mark.parametrize("lib", ["array_api_strict", "torch"])
def test_other_backends_choose_the_cheapest_generic_method(lib):
    if lib == "torch":
        pytest.importorskip("torch")
    for structure, L, w, batch in itertools.product(["scalar", "diagonal", "dense"],
                                                    [3, 16, 300], [1, 4], [(), (3,)]):
        s = make(structure, L, w, batch, lib=lib)
        want = predicted(s)
        got = estimate_costs(s)
        # the generic methods always; a compiled kernel where the backend prices one (torch
        # CPU tensors with numba, unless TRITON_INTERPRET=1 keeps the Triton interpreter)
        assert set(got) == set(want)
        assert {"sequential", "cr", "pcr", "chunked"} <= set(got) <= {
            "sequential", "cr", "pcr", "chunked", "kernel"}
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), (k, structure, L, w, batch)
        choice = choose_method(s)
        offered = available(s, want)
        assert choice in offered
        assert want[choice] <= 1.2 * min(offered.values()), (choice, want)


def test_two_steps_or_fewer_is_always_the_loop(numba_mode):
    for structure, L, w, batch in itertools.product(["scalar", "diagonal", "dense"], [0, 1, 2],
                                                    [1, 8], [(), (64,)]):
        assert choose_method(make(structure, L, w, batch)) == "sequential"


def test_regimes_with_numba(numba_mode):
    if numba_mode != "numba":
        pytest.skip("the kernel regime needs numba")
    # a compiled kernel beyond a few dozen steps, every structure
    for structure, w in [("scalar", 1), ("diagonal", 1), ("diagonal", 16), ("dense", 4)]:
        for L in (64, 1000, 1 << 16):
            assert choose_method(make(structure, L, w, (4,))) == "kernel", (structure, w, L)
    # once numba is loaded, a kernel call (~12 us) costs less than the loop's own fixed
    # cost (~20 us) plus a handful of steps: measured L = 5..32, kernel 13-14 us against the
    # loop's 26-33 us (before numba is loaded, short solves keep to the loop: see
    # test_numba_kernels.py::test_numba_is_imported_only_when_a_kernel_runs)
    pytest.importorskip("numba")
    assert choose_method(make("scalar", 8, 1)) == "kernel"
    assert choose_method(make("diagonal", 5, 2)) == "kernel"


def test_regimes_without_numba(numba_mode):
    if numba_mode != "no-numba":
        pytest.skip("the generic regimes: numba off")
    # long scalar or diagonal chains: cyclic reduction on a CPU
    for structure, w, batch in [("scalar", 1, ()), ("diagonal", 1, ()), ("diagonal", 8, ()),
                                ("diagonal", 8, (16,)), ("scalar", 4, (16,))]:
        for L in (1 << 12, 1 << 16):
            assert choose_method(make(structure, L, w, batch)) == "cr", (structure, w, batch, L)
    # short recurrences of wide dense blocks: the loop
    for L, w in [(16, 64), (64, 256), (8, 32)]:
        assert choose_method(make("dense", L, w, (8,))) == "sequential", (L, w)
    # narrow dense blocks with a (small) batch: chunked or cr. A large batch amortises the
    # loop's per-step overhead over its elements and the model then prices the loop lower
    # (L = 4096, w = 2, batch 32: loop 6.7 ms, cr 32 ms), whatever the module docstring says
    for L, w, batch in [(1 << 12, 2, (4,)), (1 << 14, 4, (2,)), (1 << 14, 2, ())]:
        assert choose_method(make("dense", L, w, batch)) in ("chunked", "cr"), (L, w, batch)
    # short chains: the loop
    assert choose_method(make("scalar", 8, 1)) == "sequential"


def test_kernel_is_dropped_when_the_backend_has_none(monkeypatch):
    # numba's cost is priced only when a kernel can run: the choice never names a missing one
    monkeypatch.setenv("PCRSOLVE_NO_NUMBA", "1")
    s = make("scalar", 1 << 16, 1)
    assert "kernel" not in estimate_costs(s)
    assert choose_method(s) != "kernel"
    monkeypatch.delenv("PCRSOLVE_NO_NUMBA")
    if have_numba():
        assert "kernel" in estimate_costs(s)
        assert choose_method(s) == "kernel"

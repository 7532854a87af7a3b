"""pcrsolve.distributed.DistributedParallelSequential: real gloo processes and the threaded fake.

As in test_distributed.py, each launch runs this file as a script on P processes (``python
test_distributed_sequential.py WORKER P RANK PORT OUT``); every rank builds the whole
float64 stack from one seed, keeps its own consecutive slice of the blocks, and compares
its results with ``nn.Sequential`` of all blocks and autograd through it (the
single-process loop). Each rank writes ``check -> error message or None`` as JSON.
"""

from __future__ import annotations

import copy
import sys
import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from gloo_launch import finish_worker, launch, recorder  # noqa: E402

import pcrsolve  # noqa: E402
from pcrsolve.adapters.torch import ParallelSequential, Residual  # noqa: E402
from pcrsolve.distributed import (  # noqa: E402
    DistributedError,
    DistributedParallelSequential,
    ThreadedGroup,
)

#: Blocks per rank: uneven, one rank with a single block.
BLOCKS = {2: [3, 8], 3: [6, 1, 5]}
LAUNCH_TIMEOUT = 150
W = 4
_SEEDING = threading.Lock()  # the threaded test's ranks share torch's global generator


def _blocks(kind: str, L: int, seed: int) -> list[Any]:
    """The whole stack, float64, identical on every rank."""
    with _SEEDING:
        return _seeded_blocks(kind, L, seed)


def _seeded_blocks(kind: str, L: int, seed: int) -> list[Any]:
    torch.manual_seed(seed)
    if kind == "tanh":
        out = [nn.Sequential(nn.Linear(W, W), nn.Tanh()) for _ in range(L)]
    elif kind == "residual":
        out = [Residual(nn.Sequential(nn.Linear(W, W), nn.Tanh())) for _ in range(L)]
        with torch.no_grad():
            for b in out:
                b.body[0].weight.mul_(0.3)
    else:  # the general path: vmap over functional_call, autodiff Jacobians
        out = [nn.Sequential(nn.Linear(W, W), nn.Tanh(), nn.Linear(W, W)) for _ in range(L)]
        with torch.no_grad():
            for b in out:
                b[2].weight.mul_(0.5)
    return [b.double() for b in out]


def _input(seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, W, generator=g, dtype=torch.float64)


def _reference(blocks: list[Any], x: Any, weight: Any) -> tuple[Any, Any, list[Any], Any]:
    """Output, all states, parameter gradients and input gradient of the plain loop."""
    ref = copy.deepcopy(blocks)
    xr = x.clone().requires_grad_(True)
    states, h = [], xr
    for b in ref:
        h = b(h)
        states.append(h)
    (h * weight).sum().backward()
    return h.detach(), torch.stack(states, -2).detach(), [
        [p.grad for p in b.parameters()] for b in ref], xr.grad


def _close(a: Any, b: Any, tol: float = 1e-12) -> None:
    a, b = a.detach(), b.detach()
    err = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
    assert err <= tol, f"max relative error {err:.3e} > {tol:.1e}"


def _mismatched_cases(rank: int, n: int) -> dict[str, Any]:
    """Per case: this rank's constructor options, its layers (None: the common ones) and the
    message expected on every rank; rank 1 differs in each."""
    return {
        # rank 1's blocks have another width: its x check fails, named on every rank
        "width": (dict(), [nn.Sequential(nn.Linear(5, 5), nn.Tanh()).double()
                           for _ in range(n)] if rank == 1 else None,
                  r"rank\(s\) 1 .*\(\.\.\., 5\)"),
        "mode": (dict(mode="quasi" if rank == 1 else "newton"), None, "`mode`"),
        "broadcast": (dict(broadcast=rank == 1), None, "`broadcast`"),
        "block class": (dict(), [Residual(nn.Sequential(nn.Linear(W, W), nn.Tanh()))
                                 .double() for _ in range(n)] if rank == 1
                        else None, "`block`"),
        "options": (dict(tol=1e-6 if rank == 1 else 1e-8), None, "`options`"),
    }


def _run_checks(comm_or_group: Any, P: int, rank: int, blocks_per_rank: list[int],
                all_gather_object: Any, singles: Any = None, general: bool = True
                ) -> dict[str, str | None]:
    """Every check of one launch on this rank (``comm_or_group``: the solve's ``group``;
    ``general=False`` leaves out the general (torch.func) path)."""
    results: dict[str, str | None] = {}
    L = sum(blocks_per_rank)
    lo = sum(blocks_per_rank[:rank])
    hi = lo + blocks_per_rank[rank]
    last = rank == P - 1

    check = recorder(results)

    def same_everywhere(value: Any) -> None:
        got = all_gather_object(value)
        assert all(g == got[0] for g in got), f"ranks disagree: {got}"

    def gradients(kind: str, mode: str, broadcast: bool) -> None:
        blocks = _blocks(kind, L, seed=len(kind))
        x = _input(7)
        weight = _input(8)[..., :W]
        out_ref, _, g_ref, gx_ref = _reference(blocks, x, weight)
        mine = copy.deepcopy(blocks[lo:hi])
        model = DistributedParallelSequential(mine, group=comm_or_group, mode=mode,
                                              broadcast=broadcast)
        xi = (x.clone() if rank == 0 else torch.zeros_like(x)).requires_grad_(True)
        out = model(xi)
        sol = model.last_solution
        same_everywhere((sol.status.name, sol.iterations, sol.residuals))
        assert sol.status is pcrsolve.Status.CONVERGED, sol.status
        assert model.offset == lo, (model.offset, lo)
        if broadcast or last:
            assert model.has_output
            _close(out, out_ref)
            loss = (out * weight).sum()
        else:
            assert not model.has_output and tuple(out.shape) == (2, 3, 0), out.shape
            loss = out.sum()
        loss.backward()
        for b, grads in zip(mine, g_ref[lo:hi], strict=True):
            for p, g in zip(b.parameters(), grads, strict=True):
                _close(p.grad, g, 1e-10)
        if rank == 0:
            _close(xi.grad, gx_ref, 1e-10)
        else:
            assert float(xi.grad.abs().max()) == 0.0

    for kind, mode in (("tanh", "newton"), ("residual", "quasi"), ("general", "newton")):
        if kind == "general" and not general:
            continue
        check(f"gradients_{kind}_{mode}", lambda k=kind, m=mode: gradients(k, m, False))
    check("broadcast_gradients", lambda: gradients("tanh", "newton", True))

    def broadcast_mismatch() -> None:
        blocks = _blocks("tanh", L, seed=4)
        model = DistributedParallelSequential(copy.deepcopy(blocks[lo:hi]),
                                              group=comm_or_group, broadcast=True)
        out = model(_input(7))
        with pytest.raises(DistributedError, match="same loss") as info:
            (out * (rank + 1)).sum().backward()  # a different loss on every rank
        assert info.value.failed_ranks == list(range(P - 1)), info.value.failed_ranks

    check("broadcast_different_losses_raise", broadcast_mismatch)

    def frozen() -> None:
        # rank 0's blocks are frozen and x needs no gradient: rank 0 still takes part in
        # the (collective) backward, the others get their gradients
        blocks = _blocks("tanh", L, seed=5)
        x, weight = _input(9), _input(10)
        _, _, g_ref, _ = _reference(blocks, x, weight)
        mine = copy.deepcopy(blocks[lo:hi])
        if rank == 0:
            for p in (q for b in mine for q in b.parameters()):
                p.requires_grad_(False)
        model = DistributedParallelSequential(mine, group=comm_or_group)
        out = model(x)
        ((out * weight).sum() if last else out.sum()).backward()
        for b, grads in zip(mine, g_ref[lo:hi], strict=True):
            for p, g in zip(b.parameters(), grads, strict=True):
                if rank == 0:
                    assert p.grad is None
                else:
                    _close(p.grad, g, 1e-10)

    check("frozen_rank_takes_part", frozen)

    def return_all_and_warm() -> None:
        blocks = _blocks("tanh", L, seed=6)
        x = _input(11)
        _, states_ref, _, _ = _reference(blocks, x, x)
        model = DistributedParallelSequential(copy.deepcopy(blocks[lo:hi]),
                                              group=comm_or_group, return_all=True,
                                              warm_start=True)
        with torch.no_grad():
            states = model(x)
            _close(states, states_ref[..., lo:hi, :])
            first = model.last_solution.iterations
            model(x)  # the same input again: starts from the solution
            again = model.last_solution.iterations
        same_everywhere((first, again))
        assert again <= 1 < first, (first, again)

    check("return_all_and_warm_start", return_all_and_warm)

    def world_one() -> None:
        if singles is None:
            return
        blocks = _blocks("tanh", 7, seed=12)
        x = _input(13)
        a = DistributedParallelSequential(copy.deepcopy(blocks), group=singles[rank])
        b = ParallelSequential(copy.deepcopy(blocks), globalisation="none")
        assert torch.equal(a(x), b(x))
        assert a.last_solution.iterations == b.last_solution.iterations

    check("world_size_one_bitwise", world_one)

    def mismatched() -> None:
        blocks = _blocks("tanh", L, seed=14)
        x = _input(15)
        # rank 1's odd layers are built under the seeding lock too: as threads, their
        # random initialisation would otherwise draw from torch's global generator while
        # another rank seeds it and builds its (supposedly identical) stack
        with _SEEDING:
            cases = _mismatched_cases(rank, hi - lo)
        for kw, layers, pattern in cases.values():
            model = DistributedParallelSequential(
                layers if layers is not None else copy.deepcopy(blocks[lo:hi]),
                group=comm_or_group, **kw)
            with pytest.raises(DistributedError, match=pattern):
                model(x)
        # and the group still works
        model = DistributedParallelSequential(copy.deepcopy(blocks[lo:hi]),
                                              group=comm_or_group, broadcast=True)
        _close(model(x), nn.Sequential(*blocks)(x).detach())

    check("mismatched_configurations", mismatched)
    return results


CHECKS = ["gradients_tanh_newton", "gradients_residual_quasi", "gradients_general_newton",
          "broadcast_gradients", "broadcast_different_losses_raise", "frozen_rank_takes_part",
          "return_all_and_warm_start", "world_size_one_bitwise", "mismatched_configurations"]


def _worker(P: int, rank: int, port: int, out: str) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=P, timeout=datetime.timedelta(seconds=60))
    singles = [dist.new_group([q]) for q in range(P)]

    def all_gather_object(value: Any) -> list[Any]:
        got: list[Any] = [None] * P
        dist.all_gather_object(got, value)
        return got

    results = _run_checks(None, P, rank, BLOCKS[P], all_gather_object, singles)
    finish_worker(results, out)


_LAUNCHES: dict[int, list[dict[str, Any]]] = {}


def _launch(P: int, tmp: Any) -> list[dict[str, Any]]:
    if P not in _LAUNCHES:
        _LAUNCHES[P] = launch(__file__, P, tmp, LAUNCH_TIMEOUT)
    return _LAUNCHES[P]


@pytest.fixture(scope="module")
def launches(tmp_path_factory: Any) -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return lambda P: _launch(P, tmp_path_factory.mktemp(f"dps{P}"))


@pytest.mark.parametrize("P", [2, 3])
@pytest.mark.parametrize("name", CHECKS)
def test_processes(launches: Any, P: int, name: str) -> None:
    """Each check on every rank of a real P-process gloo group."""
    failures = [f"rank {r}:\n{res.get(name, 'not run')}"
                for r, res in enumerate(launches(P))
                if res.get(name, "not run") is not None]
    assert not failures, "\n".join(failures)


def test_threaded_three_ranks() -> None:
    """The same checks with three ranks as threads of this process (no gloo), except the
    general path: torch.func's forward-mode AD, run by several threads at once, was seen
    to fail ("no level exists"), so that path is tested with processes only."""
    group = ThreadedGroup(3)

    def rank_fn(comm: Any) -> dict[str, str | None]:
        return _run_checks(comm, 3, comm.rank, BLOCKS[3], comm.all_gather_object,
                           general=False)

    for r, res in enumerate(group.run(rank_fn)):
        bad = {k: v for k, v in res.items() if v is not None}
        assert not bad, f"rank {r}: {bad}"


def test_constructor_refusals() -> None:
    blocks = _blocks("tanh", 2, seed=0)
    with pytest.raises(pcrsolve.InputError, match="exclude each other"):
        DistributedParallelSequential(blocks, broadcast=True, return_all=True)
    with pytest.raises(pcrsolve.InputError, match="`broadcast`"):
        DistributedParallelSequential(blocks, broadcast="yes")
    with pytest.raises(pcrsolve.InputError, match="at least one layer"):
        DistributedParallelSequential([])


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "WORKER":
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])

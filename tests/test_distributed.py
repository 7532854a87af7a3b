"""pcrsolve.distributed: real processes (gloo on 127.0.0.1) and the threaded fake.

Each launch starts P processes running this file as a script (``python test_distributed.py
WORKER P RANK PORT OUT``); every process runs all checks of its launch, each against an
independent reference built identically on every rank (the single-process solver and a
float64 loop on the whole chain), and writes one JSON of ``check -> error message or
None``. The pytest functions read those files. Every process is bounded by a timeout.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from gloo_launch import finish_worker, launch, recorder

import pcrsolve
from pcrsolve.distributed import DistributedError, ThreadedGroup, segment_summary
from pcrsolve.distributed import solve as dsolve
from pcrsolve.distributed import solve_linear as dsolve_linear

#: Segment lengths of each launch: uneven, one rank with a single step.
SEGMENTS = {2: [5, 12], 3: [8, 1, 8], 4: [1, 6, 3, 7]}
LAUNCH_TIMEOUT = 150  # seconds for all processes of one launch
SHAPES = {"dense": (3, 3), "diagonal": (3,), "scalar": ()}


# -- problems, built identically on every rank -------------------------------------------------
def _linear_problem(structure: str, L: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    A = 0.6 * rng.standard_normal((2, L, *SHAPES[structure])) / np.sqrt(3)
    return A, rng.standard_normal((2, L, 3)), rng.standard_normal((2, 3))


def _linear_loop(A: np.ndarray, b: np.ndarray, x0: np.ndarray, structure: str,
                 reverse: bool) -> np.ndarray:
    """The float64 loop, written out (independent of pcrsolve)."""
    L = b.shape[-2]
    out = np.empty_like(b)
    x = x0.copy()
    for l in (range(L - 1, -1, -1) if reverse else range(L)):
        Al = A[:, l]
        if structure == "dense":
            x = np.einsum("bij,bj->bi", Al, x) + b[:, l]
        elif structure == "diagonal":
            x = Al * x + b[:, l]
        else:
            x = Al[:, None] * x + b[:, l]
        out[:, l] = x
    return out


def _mlp(L: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((L, w, w)) / np.sqrt(w), 0.3 * rng.standard_normal((L, w)),
            rng.standard_normal((2, w)))


def _mlp_functions(W: Any, c: Any, lib: Any) -> tuple[Any, Any, Any]:
    """Step ``tanh(W_l x + c_l)``, its Jacobian and the Jacobian's diagonal (NumPy/torch)."""
    def step(x: Any, l: Any) -> Any:
        return lib.tanh(lib.einsum("nij,...nj->...ni", W[l], x) + c[l])

    def jac(x: Any, l: Any) -> Any:
        return (1 - step(x, l)[..., None] ** 2) * W[l]

    def diag(x: Any, l: Any) -> Any:
        return (1 - step(x, l) ** 2) * lib.diagonal(W[l], 0, -2, -1)

    return step, jac, diag


# -- the worker: every check of one launch -----------------------------------------------------
def _worker(P: int, rank: int, port: int, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=P, timeout=datetime.timedelta(seconds=60))
    results: dict[str, str | None] = {}
    seg = SEGMENTS[P]
    L, lo = sum(seg), sum(seg[:rank])
    hi = lo + seg[rank]
    t = torch.float64

    check = recorder(results)

    def same_everywhere(value: Any) -> None:
        got = [None] * P
        dist.all_gather_object(got, value)
        assert all(g == got[0] for g in got), f"ranks disagree: {got}"

    def close(a: Any, b: Any, tol: float = 1e-12) -> None:
        a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
        err = np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))
        assert err <= tol, f"max relative error {err:.3e} > {tol:.1e}"

    # 1. linear solves: every structure, both directions, batch dims, uneven segments
    def linear(structure: str, reverse: bool) -> None:
        A, b, x0 = _linear_problem(structure, L, seed=len(structure) + reverse)
        ref = _linear_loop(A, b, x0, structure, reverse)
        single = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(
            torch.tensor(A), torch.tensor(b), torch.tensor(x0), structure=structure,
            reverse=reverse))
        mine = x0 if rank == (P - 1 if reverse else 0) else np.full_like(x0, 7.0)
        system = pcrsolve.BidiagonalSystem(torch.tensor(A[:, lo:hi]), torch.tensor(b[:, lo:hi]),
                                           torch.tensor(mine), structure=structure,
                                           reverse=reverse)
        x = dsolve_linear(system)
        assert tuple(x.shape) == (2, hi - lo, 3)
        close(x, ref[:, lo:hi])
        close(x, single[:, lo:hi])

    for structure in SHAPES:
        for reverse in (False, True):
            check(f"linear_{structure}_{'reverse' if reverse else 'forward'}",
                  lambda s=structure, r=reverse: linear(s, r))

    # 1b. long elementwise segments: the compiled scan-first path fixes only the prefix
    # where the entering state still matters (K < L on decaying ranks), all of it on a rank
    # whose blocks do not decay (|a| = 1), and a rank whose tensors require grad takes the
    # generic path in the same solve
    def linear_long(structure: str, reverse: bool) -> None:
        n = 3000
        rng = np.random.default_rng(40 + reverse)
        shape = (2, P * n) + ((3,) if structure == "diagonal" else ())
        A = rng.uniform(-0.95, 0.95, shape)
        flat = 1  # this rank's blocks are +-1: its product never decays
        A[:, flat * n:(flat + 1) * n] = np.where(A[:, flat * n:(flat + 1) * n] < 0, -1.0, 1.0)
        b = rng.standard_normal((2, P * n, 3))
        x0 = rng.standard_normal((2, 3))
        ref = _linear_loop(A, b, x0, structure, reverse)
        lo2, hi2 = rank * n, (rank + 1) * n
        At = torch.tensor(A[:, lo2:hi2])
        if rank == P - 1 and P > 2:
            At.requires_grad_(True)
        system = pcrsolve.BidiagonalSystem(At, torch.tensor(b[:, lo2:hi2]),
                                           torch.tensor(x0), structure=structure,
                                           reverse=reverse)
        with torch.no_grad() if not At.requires_grad else torch.enable_grad():
            x = dsolve_linear(system)
        close(x, ref[:, lo2:hi2])

    for structure in ("diagonal", "scalar"):
        for reverse in (False, True):
            check(f"linear_long_{structure}_{'reverse' if reverse else 'forward'}",
                  lambda s=structure, r=reverse: linear_long(s, r))

    # 2. a group of one rank is the single-process solver, bit for bit
    singles = [dist.new_group([q]) for q in range(P)]

    def world_one() -> None:
        A, b, x0 = _linear_problem("dense", 9, seed=5)
        system = pcrsolve.BidiagonalSystem(torch.tensor(A), torch.tensor(b), torch.tensor(x0))
        assert torch.equal(dsolve_linear(system, group=singles[rank]),
                           pcrsolve.solve_linear(system))
        W, c, x0 = (torch.tensor(a) for a in _mlp(9, 3, seed=6))
        step, jac, _ = _mlp_functions(W, c, torch)
        a = dsolve(step, x0, 9, group=singles[rank], jacobian=jac)
        b_ = pcrsolve.solve(step, x0, 9, jacobian=jac, globalisation="none")
        assert torch.equal(a.states, b_.states) and a.iterations == b_.iterations
        assert a.globalisation == "none"

    check("world_size_one_bitwise", world_one)

    # 3. Newton modes against the single-process solve: states, iterations, residuals
    Wn, cn, x0n = _mlp(L, 3, seed=11)
    W, c, x0 = (torch.tensor(a) for a in (Wn, cn, x0n))
    step, jac, diag = _mlp_functions(W, c, torch)
    x0_mine = x0 if rank == 0 else torch.zeros_like(x0)
    modes = {
        "newton_jacobian": dict(mode="newton", jacobian=jac),
        "newton_autodiff": dict(mode="newton"),
        "quasi": dict(mode="quasi", jacobian=diag, jacobian_structure="diagonal"),
        "picard": dict(mode="picard"),
        "jacobi": dict(mode="jacobi"),
    }

    def newton(kw: dict) -> None:
        ref = pcrsolve.solve(step, x0, L, globalisation="none", throw=False, **kw)
        sol = dsolve(step, x0_mine, hi - lo, throw=False, **kw)
        same_everywhere((sol.status.name, sol.iterations, sol.residuals, sol.updates))
        assert sol.status.name == ref.status.name == "CONVERGED", (sol.status, ref.status)
        assert sol.iterations == ref.iterations, (sol.iterations, ref.iterations)
        close(sol.states, ref.states[:, lo:hi])
        loop = np.empty((2, L, 3))
        x = x0n
        for l in range(L):
            x = np.tanh(np.einsum("ij,bj->bi", Wn[l], x) + cn[l])
            loop[:, l] = x
        close(sol.states, loop[:, lo:hi], 1e-10)

    for name, kw in modes.items():
        check(f"mode_{name}", lambda kw=kw: newton(kw))

    # 3b. value_and_jacobian: the same iterates, one call per iteration on every rank (n
    #     pair calls, plus the converged trajectory's), no separate step calls after the
    #     first evaluation
    def value_and_jacobian() -> None:
        calls = {"step": 0, "pair": 0}

        def counted_step(x: Any, l: Any) -> Any:
            calls["step"] += 1
            return step(x, l)

        def pair(x: Any, l: Any) -> Any:
            calls["pair"] += 1
            return step(x, l), jac(x, l)

        ref = pcrsolve.solve(step, x0, L, jacobian=jac, globalisation="none")
        sol = dsolve(counted_step, x0_mine, hi - lo, value_and_jacobian=pair)
        same_everywhere((sol.status.name, sol.iterations, sol.residuals))
        assert sol.iterations == ref.iterations, (sol.iterations, ref.iterations)
        close(sol.states, ref.states[:, lo:hi])
        assert calls["step"] == 0 and calls["pair"] == sol.iterations + 1, calls

    check("value_and_jacobian", value_and_jacobian)

    # 4. warm start: this rank's segment of a perturbed solution
    def warm() -> None:
        full = pcrsolve.solve(step, x0, L, jacobian=jac).states
        init = full + 1e-3 * torch.sin(torch.arange(full.numel(), dtype=t)).reshape(full.shape)
        ref = pcrsolve.solve(step, x0, L, jacobian=jac, init=init, globalisation="none")
        sol = dsolve(step, x0_mine, hi - lo, jacobian=jac, init=init[:, lo:hi])
        assert sol.iterations == ref.iterations, (sol.iterations, ref.iterations)
        assert sol.iterations < 6
        close(sol.states, ref.states[:, lo:hi])

    check("warm_start", warm)

    # 5. gradients of every rank's params and of x0 (rank 0) against autograd through the
    #    float64 loop of the whole chain; each rank's loss uses its own states
    def gradients() -> None:
        weight = torch.tensor(np.random.default_rng(3).standard_normal((2, L, 3)))
        W64, c64, x64 = (torch.tensor(a, requires_grad=True) for a in (Wn, cn, x0n))
        xs, x = [], x64
        for l in range(L):
            x = torch.tanh(torch.einsum("ij,bj->bi", W64[l], x) + c64[l])
            xs.append(x)
        loss = (torch.stack(xs, dim=1) * weight).sum()
        gW, gc, gx = torch.autograd.grad(loss, [W64, c64, x64])
        # this rank's params: its slice of W and c (step reads them by global index)
        Wl = torch.tensor(Wn[lo:hi], requires_grad=True)
        cl = torch.tensor(cn[lo:hi], requires_grad=True)

        def local_step(x: Any, l: Any) -> Any:
            return torch.tanh(torch.einsum("nij,...nj->...ni", Wl[l - lo], x) + cl[l - lo])

        xin = torch.tensor(x0n if rank == 0 else np.zeros_like(x0n), requires_grad=True)
        sol = dsolve(local_step, xin, hi - lo, params=[Wl, cl])
        (sol.states * weight[:, lo:hi]).sum().backward()
        close(Wl.grad, gW[lo:hi], 1e-10)
        close(cl.grad, gc[lo:hi], 1e-10)
        if rank == 0:
            close(xin.grad, gx, 1e-10)
        else:
            assert float(xin.grad.abs().max()) == 0.0

    check("gradients_float64", gradients)

    # 6. a step raising on one rank: every rank raises, naming it; the group stays usable
    def failing() -> None:
        calls = {"n": 0}

        def bad_step(x: Any, l: Any) -> Any:
            calls["n"] += 1
            if rank == P - 1 and calls["n"] == 3:
                raise ValueError("boom on purpose")
            return step(x, l)

        try:
            dsolve(bad_step, x0_mine, hi - lo, jacobian=jac)
        except DistributedError as exc:
            assert exc.failed_ranks == [P - 1], exc.failed_ranks
            assert f"rank {P - 1}" in str(exc) and "boom on purpose" in str(exc), str(exc)
        else:
            raise AssertionError("no DistributedError")

    check("failing_rank", failing)

    def nonfinite() -> None:
        def nan_step(x: Any, l: Any) -> Any:
            y = step(x, l)
            return y * float("nan") if rank == 1 else y

        try:
            dsolve(nan_step, x0_mine, hi - lo, jacobian=jac)
        except pcrsolve.ConvergenceError as exc:
            assert exc.solution.status is pcrsolve.Status.NONFINITE
            assert "rank(s) 1" in str(exc), str(exc)
        else:
            raise AssertionError("no ConvergenceError")

    check("nonfinite_rank", nonfinite)

    # 7. mismatched configurations are reported on every rank
    def mismatch() -> None:
        xm = x0_mine.float() if rank == 1 else x0_mine

        def stepm(x: Any, l: Any) -> Any:
            return step(x.double(), l).to(x.dtype)

        try:
            dsolve(stepm, xm, hi - lo)
        except DistributedError as exc:
            assert "`dtype`" in str(exc) and exc.failed_ranks == [1], str(exc)
        else:
            raise AssertionError("no DistributedError for dtype")
        A, b, x0l = _linear_problem("dense", L, seed=1)
        w = 2 if rank == 0 else 3
        system = pcrsolve.BidiagonalSystem(torch.tensor(A[:, lo:hi, :w, :w]),
                                           torch.tensor(b[:, lo:hi, :w]),
                                           torch.tensor(x0l[:, :w]))
        try:
            dsolve_linear(system)
        except DistributedError as exc:
            assert "`width`" in str(exc), str(exc)
        else:
            raise AssertionError("no DistributedError for width")
        try:
            dsolve(step, x0_mine, hi - lo, mode="quasi" if rank == 0 else "newton")
        except DistributedError as exc:
            assert "`mode`" in str(exc), str(exc)
        else:
            raise AssertionError("no DistributedError for mode")

    check("mismatched_config", mismatch)

    def unsupported() -> None:
        # refused on every rank, naming the option and (for trust-region) the reason
        for kw in (dict(damping=True), dict(globalisation="trust-region"),
                   dict(fallback=True), dict(mode="sequential")):
            name = next(iter(kw))
            with pytest.raises(DistributedError, match=f"`{name}`") as info:
                dsolve(step, x0_mine, hi - lo, **kw)
            assert info.value.failed_ranks == list(range(P))
            assert isinstance(info.value.__cause__, pcrsolve.InputError)
        with pytest.raises(DistributedError, match="normal equations"):
            dsolve(step, x0_mine, hi - lo, globalisation="trust-region")
        # only one rank asks for it: still no hang, every rank raises naming that rank
        with pytest.raises(DistributedError, match=r"rank\(s\) 1 ") as info:
            dsolve(step, x0_mine, hi - lo,
                   globalisation="trust-region" if rank == 1 else "none")
        assert info.value.failed_ranks == [1]

    check("unsupported_options", unsupported)

    # 8. after all that, the group still works
    check("group_still_usable", lambda: newton(modes["newton_jacobian"]))
    finish_worker(results, out)


_LAUNCHES: dict[int, dict[str, Any]] = {}


def _launch(P: int, tmp: Any) -> dict[str, Any]:
    """Run the worker on ``P`` processes; every rank's results (cached per P)."""
    if P not in _LAUNCHES:
        _LAUNCHES[P] = {"ranks": launch(__file__, P, tmp, LAUNCH_TIMEOUT)}
    return _LAUNCHES[P]


CHECKS = ([f"linear_{s}_{d}" for s in SHAPES for d in ("forward", "reverse")]
          + [f"linear_long_{s}_{d}" for s in ("diagonal", "scalar")
             for d in ("forward", "reverse")]
          + ["world_size_one_bitwise"]
          + [f"mode_{m}" for m in ("newton_jacobian", "newton_autodiff", "quasi", "picard",
                                   "jacobi")]
          + ["value_and_jacobian", "warm_start", "gradients_float64", "failing_rank",
             "nonfinite_rank", "mismatched_config", "unsupported_options",
             "group_still_usable"])


@pytest.fixture(scope="module")
def launches(tmp_path_factory: Any) -> Any:
    pytest.importorskip("torch")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return lambda P: _launch(P, tmp_path_factory.mktemp(f"dist{P}"))


@pytest.mark.parametrize("P", [2, 3, 4])
@pytest.mark.parametrize("name", CHECKS)
def test_processes(launches: Any, P: int, name: str) -> None:
    """Each check of the worker, on every rank of a real P-process gloo group."""
    ranks = launches(P)["ranks"]
    failures = [f"rank {r}:\n{res.get(name, 'not run')}" for r, res in enumerate(ranks)
                if res.get(name, "not run") is not None]
    assert not failures, "\n".join(failures)


# -- the threaded fake: the algorithm without processes ------------------------------------
@pytest.mark.parametrize("structure", list(SHAPES))
@pytest.mark.parametrize("reverse", [False, True])
def test_threaded_linear_numpy(structure: str, reverse: bool) -> None:
    A, b, x0 = _linear_problem(structure, 17, seed=3)
    cuts = [0, 8, 9, 17]

    def rank_fn(comm: Any) -> Any:
        lo, hi = cuts[comm.rank], cuts[comm.rank + 1]
        start = comm.rank == (2 if reverse else 0)
        mine = x0 if start else np.full_like(x0, 7.0)  # ignored off the chain's start
        return dsolve_linear(pcrsolve.BidiagonalSystem(A[:, lo:hi], b[:, lo:hi], mine,
                                                       structure=structure, reverse=reverse),
                             group=comm)

    x = np.concatenate(ThreadedGroup(3).run(rank_fn), axis=-2)
    np.testing.assert_allclose(x, _linear_loop(A, b, x0, structure, reverse), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("structure", list(SHAPES))
@pytest.mark.parametrize("reverse", [False, True])
def test_threaded_torch_compiled_local_passes_match_generic(structure: str, reverse: bool,
                                                           monkeypatch: Any) -> None:
    """torch CPU tensors take the compiled (numba) reduce and solve passes; the generic
    Array-API passes give the same states (and both the loop's)."""
    torch = pytest.importorskip("torch")
    A, b, x0 = _linear_problem(structure, 17, seed=3)
    cuts = [0, 8, 9, 17]

    def run() -> np.ndarray:
        def rank_fn(comm: Any) -> Any:
            lo, hi = cuts[comm.rank], cuts[comm.rank + 1]
            return dsolve_linear(pcrsolve.BidiagonalSystem(
                torch.tensor(A[:, lo:hi]), torch.tensor(b[:, lo:hi]), torch.tensor(x0),
                structure=structure, reverse=reverse), group=comm)

        return np.concatenate([x.numpy() for x in ThreadedGroup(3).run(rank_fn)], axis=-2)

    ref = _linear_loop(A, b, x0, structure, reverse)
    compiled = run()
    monkeypatch.setitem(pcrsolve.distributed._KERNELS, "torch", None)
    generic = run()
    np.testing.assert_allclose(compiled, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(generic, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("structure", list(SHAPES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_compiled_summary_matches_segment_summary(structure: str, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    from pcrsolve.backends.numpy_backend import numba_available
    from pcrsolve.backends.torch_distributed import local_kernels

    if not numba_available():
        pytest.skip("numba switched off")
    A, b, x0 = _linear_problem(structure, 13, seed=8)
    t = getattr(torch, dtype)
    At, bt, xt = (torch.tensor(a, dtype=t) for a in (A[:1], b, x0))  # A broadcast over batch
    s = pcrsolve.blocks.STRUCTURES[structure]
    kernels = local_kernels()
    got_A, got_b = kernels.summary(At, bt, None, s.block_ndim, (2,), True)
    ref_A, ref_b = segment_summary(At.double(), bt.double(), s, pcrsolve.distributed
                                   .infer_namespace({"b": bt}))
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert got_A.dtype == got_b.dtype == t
    np.testing.assert_allclose(got_A.double().numpy(),
                               np.broadcast_to(ref_A.numpy(), got_A.shape), rtol=tol, atol=tol)
    np.testing.assert_allclose(got_b.double().numpy(), ref_b.numpy(), rtol=tol, atol=tol)
    # from x0: the segment's last state, without A_seg
    none_A, last = kernels.summary(At, bt, xt, s.block_ndim, (2,), False)
    assert none_A is None
    loop = _linear_loop(np.broadcast_to(A[:1], A.shape), b, x0, structure, False)
    np.testing.assert_allclose(last.double().numpy(), loop[:, -1], rtol=tol, atol=tol)
    # where it does not apply: None (the caller takes the generic path)
    assert kernels.summary(At.requires_grad_(True), bt, None, s.block_ndim, (2,), True) is None


def test_threaded_linear_bad_segment_and_mismatch_raise_on_every_rank() -> None:
    A, b, x0 = _linear_problem("diagonal", 9, seed=5)

    def rank_fn(comm: Any, cuts: list[int], width: Any) -> Any:
        lo, hi = cuts[comm.rank], cuts[comm.rank + 1]
        w = width(comm.rank)
        try:
            dsolve_linear(pcrsolve.BidiagonalSystem(A[:, lo:hi, :w], b[:, lo:hi, :w],
                                                    x0[:, :w], structure="diagonal"),
                          group=comm)
        except DistributedError as exc:
            return exc
        return None

    empty = ThreadedGroup(3).run(lambda c: rank_fn(c, [0, 4, 4, 9], lambda r: 3))
    assert all(isinstance(e, DistributedError) and e.failed_ranks == [1] for e in empty)
    assert "at least one step" in str(empty[0])
    wide = ThreadedGroup(3).run(lambda c: rank_fn(c, [0, 4, 5, 9], lambda r: 2 if r == 2
                                                  else 3))
    assert all(isinstance(e, DistributedError) and "`width`" in str(e) for e in wide)
    assert wide[0].failed_ranks == [2]
    ok = ThreadedGroup(3).run(lambda c: rank_fn(c, [0, 4, 5, 9], lambda r: 3))
    assert ok == [None, None, None]


def test_segment_summary_is_the_product() -> None:
    A, b, _ = _linear_problem("dense", 7, seed=4)
    A_seg, b_seg = segment_summary(A, b, pcrsolve.blocks.DENSE, np)
    P, y = np.broadcast_to(np.eye(3), (2, 3, 3)), np.zeros((2, 3))
    for l in range(7):
        P, y = A[:, l] @ P, np.einsum("bij,bj->bi", A[:, l], y) + b[:, l]
    np.testing.assert_allclose(A_seg, P, rtol=1e-13)
    np.testing.assert_allclose(b_seg, y, rtol=1e-13)


def test_threaded_newton_numpy_and_world_one() -> None:
    Wn, cn, x0 = _mlp(17, 3, seed=2)
    step, jac, _ = _mlp_functions(Wn, cn, np)
    ref = pcrsolve.solve(step, x0, 17, jacobian=jac, globalisation="none")
    cuts = [0, 8, 9, 17]
    sols = ThreadedGroup(3).run(lambda comm: dsolve(
        step, x0, cuts[comm.rank + 1] - cuts[comm.rank], group=comm, jacobian=jac))
    assert {s.iterations for s in sols} == {ref.iterations}
    np.testing.assert_allclose(np.concatenate([s.states for s in sols], axis=-2), ref.states,
                               rtol=1e-12, atol=1e-14)
    # world size 1 is pcrsolve.solve with globalisation="none", bit for bit
    one = ThreadedGroup(1).run(lambda comm: dsolve(step, x0, 17, group=comm, jacobian=jac))[0]
    assert np.array_equal(one.states, ref.states) and one.iterations == ref.iterations
    # here the trust-region default accepts every Newton step: the same iterates
    default = pcrsolve.solve(step, x0, 17, jacobian=jac)
    assert default.lm_steps == 0
    assert np.array_equal(one.states, default.states) and one.iterations == default.iterations


@pytest.mark.parametrize("mode", ["newton", "quasi", "picard"])
def test_threaded_pinned_prefix(mode: str) -> None:
    """After k iterations the first k states are the loop's, bit for bit, on every rank
    (the exact prefix crosses rank boundaries), as in pcrsolve.solve: an expanding chain
    where the raw iteration makes no progress of its own."""
    Wn, cn, x0 = _mlp(17, 3, seed=7)
    Wn = 3.0 * Wn
    step, jac, diag = _mlp_functions(Wn, cn, np)
    kw = {"newton": dict(jacobian=jac), "picard": {},
          "quasi": dict(jacobian=diag, jacobian_structure="diagonal")}[mode]
    cuts = [0, 8, 9, 17]
    for k in (1, 8, 9, 10, 16):
        ref = pcrsolve.solve(step, x0, 17, mode=mode, max_iter=k, throw=False,
                             globalisation="none", **kw)
        sols = ThreadedGroup(3).run(lambda comm, k=k: dsolve(
            step, x0, cuts[comm.rank + 1] - cuts[comm.rank], group=comm, mode=mode,
            max_iter=k, throw=False, **kw))
        X = np.concatenate([s.states for s in sols], axis=-2)
        assert np.array_equal(X[..., :k, :], ref.states[..., :k, :]), k
        assert {(s.iterations, s.status) for s in sols} == {(ref.iterations, ref.status)}
    full = ThreadedGroup(3).run(lambda comm: dsolve(
        step, x0, cuts[comm.rank + 1] - cuts[comm.rank], group=comm, mode=mode, **kw))
    loop = pcrsolve.solve(step, x0, 17, mode="sequential").states
    np.testing.assert_allclose(np.concatenate([s.states for s in full], axis=-2), loop,
                               rtol=1e-12, atol=1e-12)


def test_threaded_refusals_at_every_world_size() -> None:
    """globalisation="trust-region" (pcrsolve.solve's default), damping=True, fallback=True
    and mode="sequential" are refused with one rank too: a program behaves the same at
    every world size."""
    Wn, cn, x0 = _mlp(5, 2, seed=1)
    step, jac, _ = _mlp_functions(Wn, cn, np)
    comm = ThreadedGroup(1).rank_view(0)
    for kw, words in ((dict(globalisation="trust-region"), "normal equations"),
                      (dict(damping=True), "trust-region"), (dict(fallback=True), "fallback"),
                      (dict(mode="sequential"), "sequential"),
                      (dict(globalisation="bogus"), "globalisation"),
                      (dict(damping="yes"), "damping")):
        with pytest.raises(pcrsolve.InputError, match=words):
            dsolve(step, x0, 5, group=comm, jacobian=jac, **kw)
    sol = dsolve(step, x0, 5, group=comm, jacobian=jac, globalisation="none", damping=False)
    assert sol.status is pcrsolve.Status.CONVERGED and sol.globalisation == "none"


def test_threaded_nan_jacobian_names_the_rank() -> None:
    Wn, cn, x0 = _mlp(17, 3, seed=2)
    step, jac, _ = _mlp_functions(Wn, cn, np)
    cuts = [0, 8, 9, 17]

    def rank_fn(comm: Any) -> Any:
        def bad_jac(x: Any, l: Any) -> Any:
            J = jac(x, l)
            return J * np.nan if comm.rank == 1 else J

        try:
            dsolve(step, x0, cuts[comm.rank + 1] - cuts[comm.rank], group=comm,
                   jacobian=bad_jac)
        except DistributedError as exc:
            return exc
        return None

    errors = ThreadedGroup(3).run(rank_fn)
    assert all(isinstance(e, DistributedError) and e.failed_ranks == [1] for e in errors)
    assert "`jacobian` returned NaN" in str(errors[0])
    assert isinstance(errors[1].__cause__, pcrsolve.StepFunctionError)


def test_no_communicator_for_numpy() -> None:
    system = pcrsolve.BidiagonalSystem(np.ones((3, 1)), np.ones((3, 1)), structure="diagonal")
    with pytest.raises(pcrsolve.InputError, match="group"):
        dsolve_linear(system)
    with pytest.raises(pcrsolve.InputError, match="system"):
        dsolve_linear("not a system", group=ThreadedGroup(1).rank_view(0))


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "WORKER":
    _worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])

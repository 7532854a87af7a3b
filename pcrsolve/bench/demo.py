"""``python -m pcrsolve demo``: a short tour, each part against every sequential loop.

1. a long linear recurrence (scalar blocks): the loops vs ``method="auto"``;
2. its backward pass (the adjoint: a transposed linear recurrence run in reverse);
3. a nonlinear recurrence, the logistic map at a contracting parameter: the loops vs
   Newton-PCR (iterations, agreement);
4. with torch installed: ``ParallelSequential`` (the adapter) vs ``nn.Sequential``,
   forward and backward of a tanh MLP.

Each part times every sequential contender of :mod:`pcrsolve.bench.baselines` that this
machine has (a Python float loop, numba, ...) and compares pcrsolve with the *fastest*,
which the output names; where pcrsolve is slower, one line says so and why. Progress goes
to stderr (when it is a terminal) and is erased before a part's result is printed.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import textwrap
from typing import Any

import numpy as np

from ..linear import choose_method, solve_linear
from ..newton import solve
from ..system import BidiagonalSystem
from .baselines import (
    Baseline,
    linear_baselines,
    linear_reference,
    logistic_baselines,
    logistic_reference,
)
from .harness import Workspace, machine_description, measure, relative_error

__all__ = ["run_demo"]

WIDTH = 80
#: Longest linear recurrence whose torch/CuPy per-step loop the demo times (beyond it
#: that loop takes minutes and cannot beat the Python float loop, which is timed).
EAGER_MAX = 1 << 16
SLOWER_WHY = ("on a CPU the loop wins: the parallel solve does more work, and its "
              "O(log L) depth pays on wide hardware (GPU; see `bench gpu`)")


def _time(ws: Workspace, fn: Any, repeat: int) -> tuple[Any, float]:
    out, times, _ = measure(ws, fn, repeat, memory=False)
    return out, statistics.median(times)


def _record(title: str, ws: Workspace, baselines: list[Baseline], ref: np.ndarray,
            ours: str, run: Any, to_numpy: Any, repeat: int, note: str = "",
            residuals: Any = None) -> dict[str, Any]:
    """Time every baseline and pcrsolve's ``run``; errors against the float64 ``ref``."""
    rows = []
    for base in baselines:
        out, t = _time(ws, base.run, repeat)
        rows.append({"name": base.name, "seconds": t, "baseline": True,
                     "rel_error": relative_error(base.to_numpy(out), ref)})
    out, t = _time(ws, run, repeat)
    rows.append({"name": ours, "seconds": t, "baseline": False,
                 "rel_error": relative_error(to_numpy(out), ref)})
    best = min((r for r in rows if r["baseline"]), key=lambda r: r["seconds"])
    return {"title": title, "short": title.split(" x_l")[0].split(" (")[0].split(":")[0]
            + f", {title.rsplit(', ', 1)[-1]}", "rows": rows, "best": best["name"], "ours": ours,
            "speedup": best["seconds"] / t if t > 0 else float("inf"), "note": note,
            "residuals": residuals(out) if residuals else None}


def _format(i: int, rec: dict[str, Any]) -> str:
    lines = [f"{i}. {rec['title']}"]
    for r in rec["rows"]:
        tag = "  <- best loop" if r["name"] == rec["best"] else ""
        lines.append(f"     {r['name']:<30}{r['seconds'] * 1e3:10.2f} ms   "
                     f"rel err {r['rel_error']:.0e}{tag}")
    up = rec["speedup"]
    if up >= 1:
        verdict = (f"=> {rec['ours']} is {up:.1f}x faster than the best loop "
                   f"({rec['best']})")
    else:
        verdict = (f"=> {rec['ours']} is {1 / up:.1f}x SLOWER than the best loop "
                   f"({rec['best']}) (*)")
    if rec["note"]:
        verdict += f"; {rec['note']}"
    lines += textwrap.wrap(verdict, WIDTH - 1, initial_indent="   ",
                           subsequent_indent="      ")
    return "\n".join(lines)


def _plot(records: list[dict[str, Any]], folder: str, machine: str) -> list[str]:
    """Speed-ups over the best loop as diverging bars, and the Newton residual histories."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "demo_speedups.png"), os.path.join(folder, "demo_newton.png")]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(records)))
    names = [f"{r['short']}\nvs {r['best']}" for r in records]
    ups = [r["speedup"] for r in records]
    y = np.arange(len(records))
    ax.barh(y, [u - 1.0 for u in ups], left=1.0,
            color=["tab:blue" if u >= 1 else "tab:red" for u in ups])
    for yi, u in zip(y, ups, strict=True):
        label = f"{u:.1f}x faster" if u >= 1 else f"{1 / u:.1f}x slower"
        ax.text(u, yi, f" {label} ", va="center", ha="left" if u >= 1 else "right", fontsize=8)
    ax.set_yticks(y, names, fontsize=7)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    lo, hi = min([*ups, 1.0]), max([*ups, 1.0])
    ax.set_xlim(lo / 4, hi * 4)
    ax.set_xlabel("time(best sequential loop) / time(pcrsolve), log scale: "
                  "left of 1 = slower, right = faster")
    ax.set_title(f"pcrsolve vs the fastest sequential loop\n{machine}", fontsize=8)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in records:
        if r["residuals"]:
            ax.semilogy(range(len(r["residuals"])), r["residuals"], marker="o",
                        label=r["short"])
    ax.set_xlabel("Newton iteration")
    ax.set_ylabel(r"$\max\,|x_l - f_l(x_{l-1})|$")
    ax.set_title(f"Newton-PCR convergence\n{machine}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _scalar_problem(L: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.95, 0.95, (1, L)), rng.standard_normal((1, L, 1)),
            rng.standard_normal((1, 1)))


def _linear(ws: Workspace, L: int, repeat: int) -> dict[str, Any]:
    A, b, x0 = _scalar_problem(L, 0)
    system = BidiagonalSystem(ws.asarray(A[0]), ws.asarray(b[0]), ws.asarray(x0[0]),
                              structure="scalar")
    method = choose_method(system)
    return _record(f"linear recurrence x_l = a_l x_(l-1) + b_l, L={L}", ws,
                   linear_baselines(ws, A, b, x0, "scalar", eager=L <= EAGER_MAX),
                   linear_reference(A, b, x0, "scalar"), f"pcrsolve auto ({method})",
                   lambda: solve_linear(system), lambda x: ws.to_numpy(x)[None], repeat)


def _backward(ws: Workspace, L: int, repeat: int) -> dict[str, Any]:
    # loss = sum_l g_l x_l over the states of part 1: its gradients lam_l = dloss/dx_l obey
    # lam_l = g_l + a_(l+1) lam_(l+1), lam_(L+1) = 0: the transposed recurrence in reverse
    A, _, _ = _scalar_problem(L, 0)
    g = np.random.default_rng(1).standard_normal((1, L, 1))
    shifted = np.concatenate([A[:, 1:], np.zeros((1, 1))], axis=1)
    zero = np.zeros((1, 1))
    system = BidiagonalSystem(ws.asarray(shifted[0]), ws.asarray(g[0]), structure="scalar",
                              reverse=True)
    return _record(f"its backward pass (adjoint: transposed, reversed), L={L}", ws,
                   linear_baselines(ws, shifted, g, zero, "scalar", reverse=True,
                                    eager=L <= EAGER_MAX),
                   linear_reference(shifted, g, zero, "scalar", reverse=True),
                   "pcrsolve reverse solve", lambda: solve_linear(system),
                   lambda x: ws.to_numpy(x)[None], repeat)


def _logistic(ws: Workspace, L: int, repeat: int) -> dict[str, Any]:
    r = 2.5

    def step(x: Any, l: Any) -> Any:
        return r * x * (1.0 - x)

    def jacobian(x: Any, l: Any) -> Any:
        return r * (1.0 - 2.0 * x)

    x0n = np.array([[0.1]])
    x0 = ws.asarray(x0n[0])
    iterations: list[int] = []

    def run() -> Any:
        sol = solve(step, x0, L, jacobian=jacobian, jacobian_structure="diagonal")
        iterations[:] = [sol.iterations]
        return sol

    rec = _record(f"logistic map x_l = 2.5 x_(l-1) (1 - x_(l-1)), L={L}", ws,
                  logistic_baselines(ws, r, x0n, L), logistic_reference(r, x0n, L),
                  "pcrsolve Newton", run, lambda sol: ws.to_numpy(sol.states)[None], repeat,
                  residuals=lambda sol: sol.residuals)
    rec["note"] = f"Newton converged in {iterations[0]} iterations"
    return rec


def _adapter(device: str | None, dtype: str, L: int, w: int, batch: int,
             repeat: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from ..adapters.torch import ParallelSequential

    ws = Workspace("torch", device, dtype)
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(w, w), nn.Tanh()) for _ in range(L)]
    seq = nn.Sequential(*layers).to(device=ws.device, dtype=ws.dtype)
    par = ParallelSequential(layers)
    x = torch.randn(batch, w, dtype=ws.dtype, device=ws.device)
    params = list(seq.parameters())

    def train_step(model: Any) -> Any:
        def run() -> Any:
            out = model(x)
            grads = torch.autograd.grad(out.square().sum(), params)
            return torch.cat([out.detach().ravel(), *[g.ravel() for g in grads]])

        return run

    with torch.no_grad():  # float64 reference: the same layers, copied
        ref_model = nn.Sequential(*[nn.Sequential(nn.Linear(w, w), nn.Tanh())
                                    for _ in range(L)]).double()
        for p, q in zip(ref_model.parameters(), seq.parameters(), strict=True):
            p.copy_(q.detach().cpu().double())
    xr = x.detach().cpu().double()
    out = ref_model(xr)
    grads = torch.autograd.grad(out.square().sum(), list(ref_model.parameters()))
    ref = torch.cat([out.detach().ravel(), *[g.ravel() for g in grads]]).numpy()
    base = Baseline("nn.Sequential (eager)", train_step(seq), ws.to_numpy)
    return _record(f"torch adapter: forward+backward, tanh MLP L={L} w={w} B={batch}",
                   ws, [base], ref, "ParallelSequential", train_step(par), ws.to_numpy,
                   repeat, note="Newton forward, adjoint backward, same gradients")


class _Progress:
    """``label`` on stderr while a part runs (terminals only), erased before results."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.live = sys.stderr.isatty()

    def __enter__(self) -> _Progress:
        if self.live:
            sys.stderr.write(f"\r  running {self.label} ...")
            sys.stderr.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            sys.stderr.write("\r" + " " * (len(self.label) + 16) + "\r")
            sys.stderr.flush()


def run_demo(opts: Any) -> int:
    """Run the tour and print each part's contenders and verdict. Returns the exit status.

    The status is 1 when any result (pcrsolve's or a loop's) disagrees with the float64
    reference beyond a bound from the dtype.
    """
    small = opts.small
    repeat = 1 if small else 3
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    machine = machine_description(ws.backend, str(ws.device))
    print("pcrsolve demo: sequential computations solved in parallel (DeepPCR)")
    print(textwrap.fill(f"backend {ws.backend} on {ws.device}, {opts.dtype}; {machine}",
                        WIDTH - 1))
    print(textwrap.fill("Each part times every sequential loop available here and compares "
                        "pcrsolve with the fastest (rel err: against a float64 loop).",
                        WIDTH - 1))
    n_lin = 1 << (12 if small else 20)
    parts = [("linear", lambda: _linear(ws, n_lin, repeat)),
             ("backward", lambda: _backward(ws, n_lin, repeat)),
             ("logistic map", lambda: _logistic(ws, 1 << (10 if small else 14), repeat))]
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        device = opts.device if opts.backend == "torch" else "cpu"
        parts.append(("torch adapter", lambda: _adapter(device, opts.dtype,
                                                        64 if small else 256, 8, 16,
                                                        repeat)))
    records = []
    for i, (label, part) in enumerate(parts, 1):
        with _Progress(f"{i}/{len(parts)} {label}"):
            rec = part()
        print(_format(i, rec))
        sys.stdout.flush()
        records.append(rec)
    if not has_torch:
        print(f"{len(parts) + 1}. torch adapter (ParallelSequential): skipped, "
              "torch is not installed")
    if any(rec["speedup"] < 1 for rec in records):
        print(textwrap.fill(f"(*) {SLOWER_WHY[0].upper()}{SLOWER_WHY[1:]}.", WIDTH - 1,
                            subsequent_indent="    "))
    if opts.plot:
        for path in _plot(records, opts.plot, machine):
            print(f"wrote {path}")
    bound = 1e-3 if opts.dtype == "float32" else 1e-8
    bad = [f"{rec['title']}: {r['name']}" for rec in records for r in rec["rows"]
           if not r["rel_error"] <= bound]
    if bad:
        print(f"DISAGREEMENT with the float64 loop beyond {bound:g}:")
        for line in bad:
            print(f"  {line}")
        return 1
    return 0

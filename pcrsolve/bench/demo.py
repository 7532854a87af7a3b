"""``python -m pcrsolve demo``: a short tour, each part checked against the loop.

1. a long linear recurrence (scalar blocks): the reference loop vs ``method="auto"``;
2. a nonlinear recurrence, the logistic map at a contracting parameter: the loop vs
   Newton-PCR (iterations, agreement, speed-up);
3. a tanh MLP forward and backward (torch, if installed): the eager loop and autograd
   through it vs Newton-PCR and the adjoint solve.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from typing import Any

import numpy as np

from ..linear import choose_method, solve_linear
from ..newton import solve
from ..system import BidiagonalSystem
from .harness import Workspace, machine_description, measure, relative_error
from .newton import mlp_functions

__all__ = ["run_demo"]


def _time(ws: Workspace, fn: Any, repeat: int) -> tuple[Any, float]:
    out, times, _ = measure(ws, fn, repeat, memory=False)
    return out, statistics.median(times)


def _line(name: str, t_ref: float, t_new: float, err: float, note: str = "",
          residuals: list[float] | None = None) -> dict[str, Any]:
    """One part's result (printed by :func:`_format`, drawn by :func:`_plot`)."""
    return {"name": name, "loop_s": t_ref, "pcrsolve_s": t_new, "rel_error": err,
            "note": note, "residuals": residuals}


def _format(r: dict[str, Any]) -> str:
    return (f"  {r['name']:<34} loop {r['loop_s'] * 1e3:9.2f} ms   pcrsolve "
            f"{r['pcrsolve_s'] * 1e3:8.2f} ms   speed-up {r['loop_s'] / r['pcrsolve_s']:6.1f}x"
            f"   rel. error {r['rel_error']:.1e}  {r['note']}")


def _plot(records: list[dict[str, Any]], folder: str) -> list[str]:
    """Speed-ups as bars and the Newton residual histories, as PNG files in ``folder``."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "demo_speedups.png"), os.path.join(folder, "demo_newton.png")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = [r["name"] for r in records]
    ups = [r["loop_s"] / r["pcrsolve_s"] for r in records]
    ax.barh(names, ups, color=["tab:blue" if u >= 1 else "tab:red" for u in ups])
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the sequential loop (log scale)")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in records:
        if r["residuals"]:
            ax.semilogy(range(len(r["residuals"])), r["residuals"], marker="o", label=r["name"])
    ax.set_xlabel("Newton iteration")
    ax.set_ylabel(r"$\max\,|x_l - f_l(x_{l-1})|$")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _linear(ws: Workspace, L: int, repeat: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    system = BidiagonalSystem(ws.asarray(rng.uniform(-0.95, 0.95, L)),
                              ws.asarray(rng.standard_normal((L, 1))), structure="scalar")
    ref, t_ref = _time(ws, lambda: solve_linear(system, method="sequential"), repeat)
    out, t_new = _time(ws, lambda: solve_linear(system), repeat)
    err = relative_error(ws.to_numpy(out), ws.to_numpy(ref))
    return _line(f"linear, scalar, L={L}", t_ref, t_new, err,
                 f"(auto chose {choose_method(system)})")


def _logistic(ws: Workspace, L: int, repeat: int) -> dict[str, Any]:
    xp = ws.xp
    r = 2.5

    def step(x: Any, l: Any) -> Any:
        return r * x * (1.0 - x)

    def jacobian(x: Any, l: Any) -> Any:
        return r * (1.0 - 2.0 * x)

    x0 = ws.asarray(np.array([0.1]))

    def loop() -> Any:
        out, x = [], x0
        for _ in range(L):
            x = step(x, None)
            out.append(x)
        return xp.stack(out, axis=-2)

    ref, t_ref = _time(ws, loop, repeat)
    sol, t_new = _time(ws, lambda: solve(step, x0, L, jacobian=jacobian,
                                         jacobian_structure="diagonal"), repeat)
    err = relative_error(ws.to_numpy(sol.states), ws.to_numpy(ref))
    return _line(f"logistic map r=2.5, L={L}", t_ref, t_new, err,
                 f"({sol.iterations} Newton iterations, {sol.status.name})", sol.residuals)


def _mlp(device: str | None, dtype: str, L: int, w: int, batch: int,
         repeat: int) -> list[dict[str, Any]]:
    import torch

    ws = Workspace("torch", device, dtype)
    rng = np.random.default_rng(0)
    W = ws.asarray(rng.standard_normal((L, w, w)) / math.sqrt(w)).requires_grad_(True)
    b = ws.asarray(0.5 * rng.standard_normal((L, w))).requires_grad_(True)
    x0 = ws.asarray(rng.standard_normal((batch, w)))

    fns = mlp_functions(W, b)
    step, jacobian = fns["step"], fns["jacobian"]

    def loop() -> Any:
        return fns["loop"](x0)

    with torch.no_grad():
        ref, t_ref = _time(ws, loop, repeat)
        sol, t_new = _time(ws, lambda: solve(step, x0, L, jacobian=jacobian), repeat)
    lines = [_line(f"tanh MLP forward, L={L} w={w} B={batch}", t_ref, t_new,
                   relative_error(ws.to_numpy(sol.states), ws.to_numpy(ref)),
                   f"({sol.iterations} Newton iterations)", sol.residuals)]
    weight = torch.randn(ref.shape, dtype=ws.dtype, device=ws.device)
    loss_ref = (loop() * weight).sum()
    loss_new = (solve(step, x0, L, jacobian=jacobian, params=[W, b]).states * weight).sum()

    def grads(loss: Any) -> Any:
        return lambda: torch.autograd.grad(loss, [W, b], retain_graph=True)

    g_ref, t_ref = _time(ws, grads(loss_ref), repeat)
    g_new, t_new = _time(ws, grads(loss_new), repeat)
    flat = lambda gs: np.concatenate([ws.to_numpy(g).ravel() for g in gs])  # noqa: E731
    lines.append(_line(f"tanh MLP backward (adjoint), L={L}", t_ref, t_new,
                       relative_error(flat(g_new), flat(g_ref)), "(vs autograd through loop)"))
    return lines


def run_demo(opts: Any) -> int:
    """Run the tour and print one line per part. Returns the exit status."""
    small = opts.small
    repeat = 1 if small else 3
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    print("pcrsolve demo: sequential computations solved in parallel (DeepPCR)")
    print(f"backend {ws.backend} on {ws.device}, {opts.dtype}; "
          + machine_description(ws.backend, str(ws.device)))
    steps = [lambda: [_linear(ws, 1 << (12 if small else 20), repeat)],
             lambda: [_logistic(ws, 1 << (10 if small else 14), repeat)]]
    skipped = importlib.util.find_spec("torch") is None
    if not skipped:
        device = opts.device if opts.backend == "torch" else "cpu"
        dtype = "float32" if opts.dtype == "float32" else "float64"
        steps.append(lambda: _mlp(device, dtype, 256 if small else 4096, 4, 8, repeat))
    records = []
    for part in _progress(steps, enabled=not small):
        for r in part():
            print(_format(r))
            records.append(r)
    if skipped:
        print("  tanh MLP forward/backward: skipped (install torch: pip install torch)")
    if opts.plot:
        for path in _plot(records, opts.plot):
            print(f"wrote {path}")
    bound = 1e-3 if opts.dtype == "float32" else 1e-8
    bad = [r["name"] for r in records if not r["rel_error"] <= bound]
    if bad:
        print(f"DISAGREEMENT with the sequential loop beyond {bound:g}: {', '.join(bad)}")
        return 1
    return 0


def _progress(items: list[Any], enabled: bool) -> Any:
    """``items`` wrapped in a tqdm progress bar (on stderr) when available and enabled."""
    if not enabled or importlib.util.find_spec("tqdm") is None:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="demo", unit="part", leave=False)

"""``bench robust``: how often each mode and globalisation converges, and to what.

A suite of recurrences nobody tuned for Newton, each with a NumPy float64 reference loop:

* **stable**: logistic maps with a stable fixed point (r = 1.5, 2.5, 2.9), from four
  starting points;
* **periodic**: logistic 2-cycles (r = 3.2, 3.4) and a 4-cycle (r = 3.5);
* **saturating**: tanh layers with large gains (``tanh(g W_l x + b_l)``, g = 3, 6);
* **stiff**: contractions with ``|f'|`` close to 1 (``x + h (cos(x) - x)`` with h = 0.01) and
  an explicit Euler step of a stiff linear ODE just inside its stability limit;
* **chaotic**: the logistic map at r = 4 (Lyapunov exponent log 2), where success is
  not expected: it shows what is reported instead.

For every mode/globalisation pair the table gives the success rate (CONVERGED and within
1e-8 of the loop, or, for chaos, an honest non-CONVERGED report), the median and largest
iteration count (overall and per family), the total time and the largest error of a
CONVERGED answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..newton import solve
from .harness import Report, Row, machine_description, suite

__all__ = ["problems", "run_robust"]

_CONFIGS = (("newton", "trust-region"), ("newton", "none"), ("quasi", "trust-region"),
            ("jacobi", "none"))


def _logistic(r: float) -> Callable[[Any, Any], Any]:
    return lambda x, l: r * x * (1.0 - x)


def problems(L: int, seed: int = 0) -> list[tuple[str, str, Callable, np.ndarray]]:
    """``(family, name, step, x0)`` of every case (NumPy float64 step functions)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, Callable, np.ndarray]] = []
    for family, rs in (("stable", (1.5, 2.5, 2.9)), ("periodic", (3.2, 3.4, 3.5)),
                       ("chaotic", (4.0,))):
        for r in rs:
            for x0 in (0.05, 0.3, 0.7, 0.95):
                out.append((family, f"logistic r={r} x0={x0}", _logistic(r), np.array([x0])))
    w = 4
    for g in (3.0, 6.0):
        W = g * rng.standard_normal((L, w, w)) / np.sqrt(w)
        b = 0.5 * rng.standard_normal((L, w))
        out.append(("saturating", f"tanh gain {g}",
                    lambda x, l, W=W, b=b: np.tanh(np.einsum("nij,...nj->...ni", W[l], x)
                                                   + b[l]), rng.standard_normal(w)))
    out.append(("stiff", "x + 0.01 (cos x - x)", lambda x, l: x + 0.01 * (np.cos(x) - x),
                np.array([3.0])))
    A = -np.diag([1.0, 50.0, 190.0])  # Euler with h = 0.01: factors 0.99, 0.5, -0.9
    out.append(("stiff", "Euler, stiff linear ODE", lambda x, l: x + 0.01 * (x @ A.T)
                + 0.01 * np.sin(0.01 * l)[:, None], np.ones(3)))
    return out


def _loop(step: Callable, x0: np.ndarray, L: int) -> np.ndarray:
    x, out = x0, []
    for l in range(L):
        x = step(x[None, :], np.array([l]))[0]
        out.append(x)
    return np.stack(out)


@suite("robust")
def run_robust(opts: Any) -> Report:
    """Success rate, iterations, time and error of each mode/globalisation on the suite."""
    L = 200 if getattr(opts, "small", False) else min(int(opts.length), 2000)
    cases = problems(L, opts.seed)
    refs = [_loop(step, x0, L) for _, _, step, x0 in cases]
    rows = []
    for mode, glob in _CONFIGS:
        ok = total = 0
        its: list[int] = []
        by_family: dict[str, list[int]] = {}
        worst, t_all = 0.0, 0.0
        fails: dict[str, int] = {}
        for (family, _name, step, x0), ref in zip(cases, refs, strict=True):
            with np.errstate(all="ignore"):
                t0 = time.perf_counter()
                sol = solve(step, x0, L, mode=mode, globalisation=glob, throw=False)
                t_all += time.perf_counter() - t0
            total += 1
            its.append(sol.iterations)
            by_family.setdefault(family, []).append(sol.iterations)
            conv = sol.status.name == "CONVERGED"
            err = float(np.max(np.abs(np.asarray(sol.states) - ref))) if conv else 0.0
            if conv:
                worst = max(worst, err if family != "chaotic" else 0.0)
            good = (conv and err <= 1e-8) if family != "chaotic" else (not conv
                                                                       or err <= 1e-8)
            ok += good
            if not good:
                fails[family] = fails.get(family, 0) + 1
        rows.append(Row(f"{mode}/{glob}", t_all, [t_all], worst, None, {
            "success": f"{ok}/{total}", "median it": int(np.median(its)),
            "max it": max(its),
            "it by family (median/max)": " ".join(
                f"{k}:{int(np.median(v))}/{max(v)}" for k, v in by_family.items()),
            "failures": ",".join(f"{k}:{v}" for k, v in fails.items())
            or "-"}))
    notes = [f"  L={L}; the ms column is the total over all {len(cases)} cases (one run "
             "each); max rel err: the largest absolute error of a CONVERGED non-chaotic "
             "answer against the loop",
             "  chaotic cases count as successes when reported honestly (CONVERGED only at "
             "the loop's own states)"]
    return Report("robust", {"L": L, "cases": len(cases), "seed": opts.seed}, rows,
                  reference=rows[0].name, machine=machine_description("numpy", "cpu"),
                  notes=notes)

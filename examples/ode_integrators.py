"""ODE integration parallel in time: where it pays off (stiff, stable) and where not (chaos).

An explicit integrator of ``dx/dt = g(x, t)`` is the recurrence
``x_{k+1} = Phi(x_k, t_k, h_k)``; :func:`pcrsolve.adapters.ode.integrate` solves it for all
time steps at once (Newton on the whole trajectory, one ``O(log L)``-depth linear solve per
iteration). Two systems, both with classical RK4:

* **stiff but stable**: ``dx/dt = -50 (x - cos t) - x^3`` (two components), ``h = 0.01``
  (``h |lambda| ~ 0.5``, inside RK4's stability region). Perturbations decay by a factor
  ``~0.6`` per step, so Newton's linearisation is good along the whole trajectory: a few
  iterations, whatever ``L`` is. With many steps this beats the interpreted NumPy loops;
  on a small CPU it does not beat the numba-compiled loop (a few microseconds per step).
* **chaotic**: Lorenz (``sigma = 10, rho = 28, beta = 8/3``), ``h = 0.01``. Perturbations
  grow like ``exp(0.9 t)``; each Newton iteration fixes only a stretch of the trajectory
  and the iteration count grows like ``L``. With a small ``max_iter`` pcrsolve reports
  ``MAX_ITER`` honestly and ``fallback=True`` finishes with the loop; with the default
  ``max_iter = L`` it iterates far longer than the loop takes and may stop with
  ``DIVERGED``; the status says which.

The script prints iterations, status, timings and errors against the sequential loops, and
every speed-up against the fastest of them, named. The loops: the adapter's
:func:`~pcrsolve.adapters.ode.integrate_sequential` (the same step called once per time
step), a lean NumPy RK4 loop (one-dimensional state, preallocated output) and, when numba
is installed, the same RK4 loop compiled by ``numba.njit`` (compilation in an untimed
warm-up). It exits with status 1 if the stiff case disagrees with the loop beyond a
tolerance derived from the dtype.

Run time on a 2-core AMD EPYC (NumPy 2.4, float64): ``--small`` about 8 s; the default
(2**17 stiff steps, 2000 Lorenz steps) about 50 s.

Usage::

    python examples/ode_integrators.py                 # L = 2**17 stiff, 2000 Lorenz steps
    python examples/ode_integrators.py --small         # a quick check for CI
    python examples/ode_integrators.py --plot out/     # also write PNGs of the trajectories
    python examples/ode_integrators.py --dtype float32
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcrsolve.adapters import ode
from pcrsolve.bench.harness import best_time
from pcrsolve.bench.paper import compare, slower_note, speedup_text

STIFF_LENGTH, STIFF_SMALL = 1 << 17, 4096
LORENZ_LENGTH, LORENZ_SMALL = 2000, 400
H = 0.01
RATE = 50.0


def stiff(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``g(x, t) = -50 (x - cos t) - x^3``: ``x`` (..., n, w), ``t`` (n,)."""
    return -RATE * (x - np.cos(t)[:, None]) - x**3


def stiff_jac(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``dg/dx = diag(-50 - 3 x^2)``, shape (..., n, w, w)."""
    return (-RATE - 3.0 * x**2)[..., None] * np.eye(x.shape[-1], dtype=x.dtype)


def lorenz(x: np.ndarray, t: np.ndarray, sigma: float = 10.0, rho: float = 28.0,
           beta: float = 8.0 / 3.0) -> np.ndarray:
    """The Lorenz vector field, ``x`` (..., n, 3)."""
    X, Y, Z = x[..., 0], x[..., 1], x[..., 2]
    return np.stack([sigma * (Y - X), X * (rho - Z) - Y, X * Y - beta * Z], axis=-1)


def lorenz_jac(x: np.ndarray, t: np.ndarray, sigma: float = 10.0, rho: float = 28.0,
               beta: float = 8.0 / 3.0) -> np.ndarray:
    """Its Jacobian, shape (..., n, 3, 3)."""
    X, Y, Z = x[..., 0], x[..., 1], x[..., 2]
    o, z = np.ones_like(X), np.zeros_like(X)
    return np.stack([np.stack([-sigma * o, sigma * o, z], axis=-1),
                     np.stack([rho - Z, -o, -X], axis=-1),
                     np.stack([Y, X, -beta * o], axis=-1)], axis=-2)



def stiff_1d(x: np.ndarray, t: float) -> np.ndarray:
    """``g`` for one state ``x`` of shape (w,) at one time ``t`` (for the lean loops)."""
    return -RATE * (x - np.cos(t)) - x**3


def lorenz_1d(x: np.ndarray, t: float) -> np.ndarray:
    """The Lorenz field for one state ``x`` of shape (3,) (for the lean loops)."""
    return np.array([10.0 * (x[1] - x[0]), x[0] * (28.0 - x[2]) - x[1],
                     x[0] * x[1] - 8.0 / 3.0 * x[2]])


def rk4_loop(g: Any, x0: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Classical RK4 over the grid ``t``, one step at a time; states x_1..x_L, (L, w)."""
    out = np.empty((len(t) - 1, x0.shape[-1]), dtype=x0.dtype)
    x = x0.copy()
    for k in range(len(t) - 1):
        tk, h = t[k], t[k + 1] - t[k]
        k1 = g(x, tk)
        k2 = g(x + 0.5 * h * k1, tk + 0.5 * h)
        k3 = g(x + 0.5 * h * k2, tk + 0.5 * h)
        k4 = g(x + h * k3, tk + h)
        x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out[k] = x
    return out


def sequential_loops(name: str, g_1d: Any, x0: np.ndarray,
                     t: np.ndarray) -> dict[str, Any]:
    """The sequential contenders of one problem: name -> ``run() -> (L, w)``.

    The adapter's loop, the lean NumPy loop and, when numba is installed, the lean loop
    compiled with ``numba.njit`` (compiled here, by one untimed call).
    """
    g_vec = stiff if name == "stiff" else lorenz
    loops = {
        "adapter loop (integrate_sequential)":
            lambda: ode.integrate_sequential(g_vec, x0, t, method="rk4"),
        "NumPy RK4 loop (preallocated)": lambda: rk4_loop(g_1d, x0, t),
    }
    try:
        import numba
    except ImportError:
        return loops
    g_nb = numba.njit(g_1d)

    @numba.njit
    def compiled(x0: np.ndarray, t: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
        out = np.empty((len(t) - 1, x0.shape[-1]), dtype=x0.dtype)
        x = x0.copy()
        for k in range(len(t) - 1):
            tk, h = t[k], t[k + 1] - t[k]
            k1 = g_nb(x, tk)
            k2 = g_nb(x + 0.5 * h * k1, tk + 0.5 * h)
            k3 = g_nb(x + 0.5 * h * k2, tk + 0.5 * h)
            k4 = g_nb(x + h * k3, tk + h)
            x = x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            out[k] = x
        return out

    compiled(x0, t[:3])  # compile (untimed)
    loops["numba @njit RK4 loop"] = lambda: compiled(x0, t)
    return loops


def time_loops(loops: dict[str, Any], repeat: int) -> tuple[np.ndarray, dict[str, float]]:
    """Time every loop (best of ``repeat``), print it, check they agree; the first one's
    states and the times."""
    times, ref = {}, None
    for name, run in loops.items():
        out, times[name] = best_time(run, repeat)
        ref = out if ref is None else ref
        print(f"  {name:36s} {times[name] * 1e3:10.1f} ms  rel|x - adapter loop|="
              f"{rel_err(out, ref):.1e}")
    return ref, times




def agreement(dtype: np.dtype, length: int) -> float:
    """Relative tolerance for parallel vs loop: ``50 eps log2(L)``."""
    return 50.0 * float(np.finfo(dtype).eps) * max(1.0, math.log2(length))


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """``max|x - ref| / max(1, max|ref|)`` in float64."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def run_stiff(length: int, dtype: np.dtype, repeat: int) -> tuple[bool, dict[str, Any]]:
    """The case that pays off; True if every variant converged and agrees with the loop."""
    t = np.arange(length + 1) * H
    x0 = np.array([0.0, 2.0], dtype=dtype)
    print(f"stiff but stable: dx/dt = -50 (x - cos t) - x^3, RK4, h = {H}, L = {length}, "
          f"{np.dtype(dtype).name}")
    # warm-up: one-off costs (imports, caches) are not the solver's
    ode.integrate(stiff, x0, t[:9], method="rk4", g_jac=stiff_jac)
    ref, times = time_loops(sequential_loops("stiff", stiff_1d, x0, t), repeat)
    tol = agreement(dtype, length)
    ok, sol, speedups = True, None, []
    for name, kw in (("newton, analytic g_jac", dict(g_jac=stiff_jac)),
                     ("newton, finite differences", {})):
        sol, t_par = best_time(
            lambda kw=kw: ode.integrate(stiff, x0, t, method="rk4", throw=False, **kw), repeat)
        err = rel_err(sol.states, ref)
        cmp = compare(times, t_par)
        speedups.append(cmp["speedup"])
        print(f"  {name:36s} {t_par * 1e3:10.1f} ms  {sol.status.name:9s} "
              f"iterations={sol.iterations:3d}  rel|x - loop|={err:.1e}\n"
              f"  {'':36s} {speedup_text(cmp['speedup'], cmp['baseline'])}")
        ok &= sol.converged and err <= tol
    if min(speedups) < 1:
        print(f"  {slower_note('cpu')}")
    print(f"  (agreement tolerance {tol:.1e}; the slow manifold: max|x_L - cos t_L| = "
          f"{float(np.max(np.abs(ref[-1] - np.cos(t[-1])))):.1e})")
    return ok, {"t": t, "loop": ref, "parallel": sol.states}


def run_lorenz(length: int, dtype: np.dtype, small_iter: int) -> dict[str, Any]:
    """The case that does not pay off: report iterations and status honestly."""
    t = np.arange(length + 1) * H
    x0 = np.array([1.0, 1.0, 1.0], dtype=dtype)
    print(f"chaotic: Lorenz, RK4, h = {H}, L = {length} (t up to {t[-1]:g}), "
          f"{np.dtype(dtype).name}")
    ref, times = time_loops(sequential_loops("lorenz", lorenz_1d, x0, t), 1)
    runs = (
        (f"newton, max_iter={small_iter}", dict(max_iter=small_iter, throw=False)),
        ("  + fallback=True", dict(max_iter=small_iter, fallback=True)),
        ("newton, max_iter=L (default)", dict(throw=False)),
    )
    sol = None
    with np.errstate(over="ignore", invalid="ignore"):
        for name, kw in runs:
            sol, t_par = best_time(lambda kw=kw: ode.integrate(lorenz, x0, t, method="rk4",
                                                           g_jac=lorenz_jac, **kw), 1)
            err = rel_err(sol.states, ref)
            extra = (f" (reason {sol.fallback_reason.name})" if sol.fallback_reason else "")
            cmp = compare(times, t_par)
            speed = speedup_text(cmp["speedup"], cmp["baseline"]) if sol.converged else \
                "(no answer)"
            print(f"  {name:36s} {t_par * 1e3:10.1f} ms  {sol.status.name:9s} "
                  f"iterations={sol.iterations:4d}  rel|x - loop|={err:.1e}{extra}\n"
                  f"  {'':36s} {speed}")
    print(f"  (iterations / L = {sol.iterations / length:.2f}: parallel-in-time does not pay "
          "off for chaotic dynamics; use the loop or fallback=True)")
    return {"t": t, "loop": ref, "parallel": sol.states}


def plot(directory: Path, stiff_data: dict[str, Any], lorenz_data: dict[str, Any]) -> None:
    """Write ``ode_stiff.png`` and ``ode_lorenz.png`` into ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    t, x = stiff_data["t"], stiff_data["parallel"]
    n = min(len(t) - 1, 1000)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j in range(x.shape[-1]):
        ax.plot(t[1 : n + 1], x[:n, j], label=f"x[{j}] (pcrsolve, RK4)")
    ax.plot(t[1 : n + 1], np.cos(t[1 : n + 1]), "k--", lw=1, label="cos t")
    ax.set(xlabel="t", title="stiff but stable: dx/dt = -50 (x - cos t) - x^3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "ode_stiff.png", dpi=120)
    plt.close(fig)

    loop = lorenz_data["loop"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(loop[:, 0], loop[:, 2], lw=0.6)
    ax.set(xlabel="x", ylabel="z", title="Lorenz (sequential loop, RK4)")
    fig.tight_layout()
    fig.savefig(directory / "ode_lorenz.png", dpi=120)
    plt.close(fig)
    print(f"wrote {directory / 'ode_stiff.png'} and {directory / 'ode_lorenz.png'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true",
                        help=f"L = {STIFF_SMALL} stiff / {LORENZ_SMALL} Lorenz steps, one "
                        "repetition: a quick check for CI")
    parser.add_argument("-L", "--length", type=int, default=None,
                        help=f"stiff steps (default {STIFF_LENGTH})")
    parser.add_argument("--lorenz-length", type=int, default=None,
                        help=f"Lorenz steps (default {LORENZ_LENGTH})")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timing repetitions of the stiff case, best taken "
                        "(default 3, 1 with --small)")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR",
                        help="write PNGs of the trajectories into DIR")
    args = parser.parse_args(argv)
    length = args.length or (STIFF_SMALL if args.small else STIFF_LENGTH)
    lorenz_length = args.lorenz_length or (LORENZ_SMALL if args.small else LORENZ_LENGTH)
    repeat = args.repeat or (1 if args.small else 3)
    if min(length, lorenz_length, repeat) < 1:
        parser.error("lengths and --repeat must be >= 1")
    dtype = np.dtype(args.dtype)

    ok, stiff_data = run_stiff(length, dtype, repeat)
    print()
    lorenz_data = run_lorenz(lorenz_length, dtype, small_iter=20)
    if args.plot is not None:
        plot(args.plot, stiff_data, lorenz_data)
    if not ok:
        print(f"\nFAILED: the stiff case did not converge or disagrees with the loop beyond "
              f"{agreement(dtype, length):.1e}")
        return 1
    print(f"\nOK: the stiff case agrees with the loop to {agreement(dtype, length):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The logistic map solved for all steps at once with Newton-PCR, and where that fails.

The logistic map ``x_l = r x_{l-1} (1 - x_{l-1})``, ``l = 1..L``, is the textbook
nonlinear recurrence. Its behaviour depends on ``r``:

* ``r = 2.5`` (*contracting*): from ``x0 = 0.1`` the orbit settles on the fixed point
  ``0.6``, where ``f'(0.6) = -0.5``. :func:`pcrsolve.solve` finds all ``L`` states in a
  handful of Newton iterations, each one batched step evaluation plus one
  ``O(log L)``-depth linear solve. The initial guess (``x0`` repeated) sits where the map
  expands (``f'(0.1) = 2``), so undamped Newton overflows; the default damping handles it.
* ``r = 3.9`` (*chaotic*): nearby orbits separate exponentially, no linearisation stays
  valid, and the parallel iteration diverges. pcrsolve reports that honestly
  (``throw=False`` returns the failed status) and ``fallback=True`` finishes with the
  sequential loop.

The script solves both with the analytic Jacobian ``f'(x) = r (1 - 2x)`` given as a
diagonal (``jacobian_structure="diagonal"``, a 1x1 block per step), with finite
differences (no Jacobian given), and with every sequential loop this machine has
(``pcrsolve.bench.baselines``: the NumPy eager loop, a Python float loop, numba when
installed), and prints iterations, status, errors and timings, speed-ups against the
fastest loop. It exits with status 1 if the contracting case disagrees with the loop by
more than 1e-8. Real run time on a 2-core AMD EPYC (NumPy 2.4, numba 0.68): about 4 s by
default, about 2 s with ``--small``.

Usage::

    python examples/logistic_map.py             # L = 2**14
    python examples/logistic_map.py --small     # L = 256, for CI
    python examples/logistic_map.py -L 100000 --r 2.9
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import pcrsolve
from pcrsolve.bench.baselines import logistic_baselines, logistic_reference
from pcrsolve.bench.harness import Workspace, best_time

DEFAULT_LENGTH = 1 << 14
SMALL_LENGTH = 256
AGREEMENT = 1e-8  # max abs difference from the loop accepted in the contracting case


def logistic(r: float) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]:
    """The vectorized step and its diagonal Jacobian for parameter ``r``.

    Parameters
    ----------
    r : float
        The logistic parameter.

    Returns
    -------
    step : callable
        ``step(x_prev, l)``: ``x_prev`` of shape ``(..., n, 1)`` to ``(..., n, 1)``.
    jacobian : callable
        ``jacobian(x_prev, l)``: the derivative ``r (1 - 2 x_prev)``, shape ``(..., n, 1)``
        (the diagonal of 1x1 blocks).
    """

    def step(x: np.ndarray, l: np.ndarray) -> np.ndarray:
        return r * x * (1.0 - x)

    def jacobian(x: np.ndarray, l: np.ndarray) -> np.ndarray:
        return r * (1.0 - 2.0 * x)

    return step, jacobian


def loop(r: float, x0: float, length: int) -> np.ndarray:
    """The reference: the plain sequential loop, states ``x_1 .. x_L`` of shape ``(L, 1)``."""
    out = np.empty((length, 1))
    x = x0
    for i in range(length):
        x = r * x * (1.0 - x)
        out[i, 0] = x
    return out




def contracting(r: float, x0: float, length: int, repeat: int) -> bool:
    """Solve the contracting case three ways; True if all agree with the loop."""
    print(f"contracting: r = {r}, x0 = {x0}, L = {length}")
    # every sequential contender (NumPy eager loop, Python float loop, numba when
    # installed), checked against a float64 loop; speed-ups are against the fastest
    ref = logistic_reference(r, np.array([[x0]]), length)[0]
    loops = []
    for base in logistic_baselines(Workspace("numpy", None, "float64"), r,
                                   np.array([[x0]]), length):
        base.run()  # warm-up, untimed: compiles numba
        out, t = best_time(base.run, repeat)
        loops.append((base.name, t, float(np.max(np.abs(base.to_numpy(out)[0] - ref)))))
    best_name, t_loop, _ = min(loops, key=lambda row: row[1])
    for name, t, err in loops:
        mark = "  <- best loop" if name == best_name else ""
        print(f"  {name:32s} {t * 1e3:9.2f} ms  max|x - loop|={err:.2e}{mark}")
    step, jacobian = logistic(r)
    start = np.array([x0])
    variants: dict[str, dict[str, Any]] = {
        "newton, analytic diagonal J": dict(jacobian=jacobian, jacobian_structure="diagonal",
                                            throw=False),
        "newton, finite differences": dict(throw=False),
        "newton, undamped": dict(jacobian=jacobian, jacobian_structure="diagonal",
                                 damping=False, throw=False),
    }
    # warm-up: the first call pays one-off costs (imports, caches) that are not the solver's
    pcrsolve.solve(step, start, 8, jacobian=jacobian, jacobian_structure="diagonal")
    ok = True
    for name, kwargs in variants.items():
        with np.errstate(over="ignore", invalid="ignore"):
            sol, t = best_time(lambda kw=kwargs: pcrsolve.solve(step, start, length, **kw), repeat)
        err = float(np.max(np.abs(sol.states - ref)))
        up = t_loop / t
        speedup = ("(failed)" if not sol.converged else f"{up:.1f}x faster" if up >= 1
                   else f"{1 / up:.1f}x slower")
        print(f"  {name:32s} {t * 1e3:9.2f} ms  {sol.status.name:9s} "
              f"iterations={sol.iterations:3d}  max|x - loop|={err:.2e}  {speedup}")
        if kwargs.get("damping", True):
            ok &= sol.status is pcrsolve.Status.CONVERGED and err <= AGREEMENT
        elif sol.status is not pcrsolve.Status.CONVERGED:
            print(f"    (expected: {sol.status.name}; the initial guess x0 = {x0} lies where "
                  f"f' = {r * (1 - 2 * x0):g} expands, damping=True avoids the overflow)")
    print(f"  (speed-ups against the best loop, {best_name}. A scalar state on a CPU is the "
          "loop's best case:\n   each step costs a few operations, so the parallel solve's "
          "extra work does not pay\n   off here; it pays where a step's fixed cost "
          "dominates, e.g. kernel launches on a GPU)")
    ok &= all(err <= AGREEMENT for _, _, err in loops)
    return ok


def chaotic(r: float, x0: float, length: int) -> bool:
    """Show the chaotic case failing honestly; True if the report is as expected."""
    print(f"chaotic: r = {r}, x0 = {x0}, L = {length}")
    step, jacobian = logistic(r)
    start = np.array([x0])
    ref = loop(r, x0, length)
    opts = dict(jacobian=jacobian, jacobian_structure="diagonal")
    with np.errstate(over="ignore", invalid="ignore"):
        sol = pcrsolve.solve(step, start, length, throw=False, **opts)
        rescued = pcrsolve.solve(step, start, length, fallback=True, **opts)
    print(f"  throw=False:   status={sol.status.name}, converged={sol.converged}, "
          f"iterations={sol.iterations}, final residual {sol.residuals[-1]:.2e}")
    print(f"                 {sol.status.message}")
    err = float(np.max(np.abs(rescued.states - ref)))
    print(f"  fallback=True: status={rescued.status.name} "
          f"(reason {rescued.fallback_reason.name if rescued.fallback_reason else None}), "
          f"converged={rescued.converged}, max|x - loop|={err:.2e}")
    return (not sol.converged) and rescued.status is pcrsolve.Status.FALLBACK and err == 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-L", "--length", type=int, default=None,
                        help=f"number of steps (default {DEFAULT_LENGTH})")
    parser.add_argument("--small", action="store_true",
                        help=f"L = {SMALL_LENGTH}, one repetition: a quick check for CI")
    parser.add_argument("--r", type=float, default=2.5, help="contracting parameter")
    parser.add_argument("--r-chaotic", type=float, default=3.9, help="chaotic parameter")
    parser.add_argument("--x0", type=float, default=0.1, help="initial state")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timing repetitions, best taken (default 3, 1 with --small)")
    args = parser.parse_args(argv)
    length = args.length or (SMALL_LENGTH if args.small else DEFAULT_LENGTH)
    repeat = args.repeat or (1 if args.small else 3)
    if length < 1 or repeat < 1:
        parser.error("--length and --repeat must be >= 1")

    ok = contracting(args.r, args.x0, length, repeat)
    print()
    chaotic_ok = chaotic(args.r_chaotic, args.x0, length)
    if not chaotic_ok:
        print("note: the chaotic case behaved unexpectedly (see above)")
    if not ok:
        print(f"FAILED: the contracting case disagrees with the loop by more than {AGREEMENT}")
        return 1
    print(f"\nOK: the contracting case agrees with the loop to {AGREEMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

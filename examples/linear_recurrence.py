"""A long linear recurrence solved sequentially and in parallel with pcrsolve.

The recurrence is a bank of ``w`` leaky integrators (exponential moving averages with
different time constants) driven by a noisy input signal ``u``::

    x_l = a_l * x_{l-1} + (1 - a_l) * u_l,    l = 1..L,    x_0 given

with a per-step, per-channel decay ``a_l`` in ``(0, 1)`` (``structure="diagonal"``; with
``--structure scalar`` all channels share one decay per step). This is the kind of
recurrence found in linear RNNs and state-space models. Written as one block-bidiagonal
system it is solved in ``O(log L)`` parallel depth instead of ``L`` dependent steps.

The script times every sequential loop this machine has (``pcrsolve.bench.baselines``:
a Python float loop or an in-place NumPy loop, numba and jax when installed, torch's eager
loop) and a parallel method (``"auto"`` by default, which picks cyclic reduction for long
diagonal recurrences), checks all against a float64 loop to a tolerance derived from the
dtype, and prints the speed-up over the *fastest* loop. It exits with status 1 if they
disagree. Real run time on a 2-core AMD EPYC (NumPy 2.4, numba 0.68): about 8 s by
default, about 4 s with ``--small`` (imports and numba compilation included).

Usage::

    python examples/linear_recurrence.py                  # L = 2**18, NumPy
    python examples/linear_recurrence.py --small          # tiny, a few milliseconds
    python examples/linear_recurrence.py --backend torch  # same code, torch tensors
    python examples/linear_recurrence.py --method cr --structure scalar -L 1048576
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pcrsolve.backends import get_backend

import pcrsolve
from pcrsolve.bench.baselines import linear_baselines, linear_reference
from pcrsolve.bench.harness import Workspace

DEFAULT_LENGTH = 1 << 18
SMALL_LENGTH = 1 << 10


def make_problem(
    length: int, width: int, structure: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coefficients of a damped (leaky-integrator) recurrence as float64 arrays.

    Parameters
    ----------
    length : int
        Number of steps ``L``.
    width : int
        Number of channels ``w``.
    structure : {"diagonal", "scalar"}
        ``"diagonal"``: one decay per step and channel; ``"scalar"``: one per step.
    seed : int
        Seed of the random input signal and time constants.

    Returns
    -------
    A : ndarray, shape (L, w) or (L,)
        Decays ``a_l`` in ``(0, 1)``.
    b : ndarray, shape (L, w)
        Driven input ``(1 - a_l) * u_l``.
    x0 : ndarray, shape (w,)
        Initial state.
    """
    rng = np.random.default_rng(seed)
    # time constants from 4 to 1000 steps, jittered a little from step to step
    n_decays = width if structure == "diagonal" else 1
    tau = np.geomspace(4.0, 1000.0, n_decays)
    jitter = rng.uniform(0.8, 1.25, (length, n_decays))
    a = np.exp(-1.0 / (tau * jitter))
    # input: a slow sine wave plus noise, the same signal on every channel
    t = np.arange(1, length + 1)
    u = np.sin(2 * np.pi * t / 5000.0)[:, None] + 0.5 * rng.standard_normal((length, width))
    b = (1.0 - a) * u
    A = a if structure == "diagonal" else a[:, 0]
    x0 = rng.standard_normal(width)
    return A, b, x0


def to_backend(backend: str, device: str | None, dtype: str) -> Callable[[np.ndarray], Any]:
    """A function converting NumPy arrays to the chosen library, dtype and device."""
    if backend == "numpy":
        np_dtype = np.dtype(dtype)
        return lambda a: np.ascontiguousarray(a, dtype=np_dtype)
    if backend == "torch":
        import torch  # imported only when asked for

        torch_dtype = getattr(torch, dtype)
        dev = torch.device(device or "cpu")
        return lambda a: torch.as_tensor(a, dtype=torch_dtype, device=dev)
    raise ValueError(f"--backend must be 'numpy' or 'torch'; got {backend!r}")


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy float64 copy of an array of any supported library."""
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def best_time(run: Callable[[], Any], sync: Callable[[], None], repeat: int) -> tuple[Any, float]:
    """Run ``run`` once to warm up, then ``repeat`` times; the result and best seconds."""
    out = run()
    sync()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        sync()
        best = min(best, time.perf_counter() - start)
    return out, best


def tolerance(dtype: str, length: int) -> float:
    """Allowed normwise relative error between two methods for this dtype and length.

    The methods round differently (the parallel ones multiply decays in a tree of depth
    ``log2 L`` instead of a chain); since the recurrence is contracting, rounding errors
    are damped rather than amplified and the difference stays within a few ``eps`` per
    level. ``32 * eps * ceil(log2 L)`` leaves a wide margin over that (about 10 ``eps``
    is typical) while still catching any real disagreement.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return 32.0 * eps * max(1, math.ceil(math.log2(max(length, 2))))


def relative_error(x: np.ndarray, ref: np.ndarray) -> float:
    """``max |x - ref| / max |ref|``: the largest error relative to the solution's scale."""
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(x - ref))) / scale if scale > 0 else 0.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--small",
        action="store_true",
        help=f"tiny problem (L={SMALL_LENGTH}, one timed run), for CI",
    )
    p.add_argument(
        "--backend",
        choices=["numpy", "torch"],
        default="numpy",
        help="array library (default numpy)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--structure", choices=["diagonal", "scalar"], default="diagonal")
    p.add_argument(
        "--length",
        "-L",
        type=int,
        default=None,
        help=f"steps L (default {DEFAULT_LENGTH}, {SMALL_LENGTH} with --small)",
    )
    p.add_argument("--width", "-w", type=int, default=4, help="channels w (default 4)")
    p.add_argument(
        "--method",
        choices=["auto", "cr", "pcr", "chunked"],
        default="auto",
        help="parallel method to compare with the loop (default auto)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed runs per method; the best is reported (default 3, 1 with --small)",
    )
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    if opts.length is None:
        opts.length = SMALL_LENGTH if opts.small else DEFAULT_LENGTH
    if opts.repeat is None:
        opts.repeat = 1 if opts.small else 3
    if opts.length < 1 or opts.width < 1 or opts.repeat < 1:
        p.error("--length, --width and --repeat must be >= 1")
    if opts.device is not None and opts.backend != "torch":
        p.error("--device applies only to --backend torch")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Solve the recurrence both ways; 0 if they agree, 1 if they do not."""
    opts = parse_args(argv)
    convert = to_backend(opts.backend, opts.device, opts.dtype)
    A_np, b_np, x0_np = make_problem(opts.length, opts.width, opts.structure, opts.seed)
    A, b, x0 = convert(A_np), convert(b_np), convert(x0_np)

    # The only place the array library shows: the arrays themselves.
    system = pcrsolve.BidiagonalSystem(A, b, x0, structure=opts.structure)
    backend = get_backend(system.xp)

    def sync() -> None:
        backend.synchronize(system.device)

    method = opts.method
    chosen = pcrsolve.choose_method(system) if method == "auto" else method
    print(f"pcrsolve {pcrsolve.__version__}: {system!r}")
    print(f"backend {backend.name} on {system.device}, {opts.repeat} timed run(s) per method")

    # every sequential contender this machine has (a Python float loop or an in-place
    # NumPy loop, numba, jax, torch's eager loop), each checked against a float64 loop
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    shape_a = (1, opts.length) if opts.structure == "scalar" else (1, opts.length, opts.width)
    args = (A_np.reshape(shape_a), b_np[None], x0_np[None], opts.structure)
    ref = linear_reference(*args)[0]
    loops = []
    for base in linear_baselines(ws, *args):
        out, t = best_time(base.run, sync, opts.repeat)
        loops.append((base.name, t, relative_error(base.to_numpy(out)[0], ref)))
    x, t_par = best_time(lambda: pcrsolve.solve_linear(system, method=method), sync, opts.repeat)
    err = relative_error(to_numpy(x), ref)
    tol = tolerance(opts.dtype, opts.length)
    label = f"pcrsolve {method} -> {chosen}" if method == "auto" else f"pcrsolve {method}"
    best_name, t_best, _ = min(loops, key=lambda r: r[1])
    for name, t, e in loops:
        mark = "  <- best loop" if name == best_name else ""
        print(f"  {name:<24} {t * 1e3:10.3f} ms   rel err {e:.1e}{mark}")
    print(f"  {label:<24} {t_par * 1e3:10.3f} ms   rel err {err:.1e}")
    up = t_best / t_par
    if up >= 1:
        print(f"  {up:.1f}x faster than the best loop ({best_name})")
    else:
        print(f"  {1 / up:.1f}x SLOWER than the best loop ({best_name}):\n"
              "  on a CPU the loop wins; parallel depth pays on a GPU")
    print(f"  max relative error {err:.2e} (tolerance {tol:.1e} for {opts.dtype})")
    bad = [name for name, _, e in loops if not e <= tol]
    if bad:
        print(f"FAILED: {', '.join(bad)} disagree with the float64 loop", file=sys.stderr)
        return 1
    if not err <= tol:  # also catches NaN
        print(f"FAILED: {label} disagrees with the float64 loop", file=sys.stderr)
        return 1
    print("OK: the parallel solution matches the sequential loops")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment (a) of the DeepPCR paper: MLP forward/backward speed-ups over L and w.

For a grid of depths ``L`` and widths ``w``, a random tanh MLP runs forward as Newton-PCR
and as the sequential loops (the eager loop under ``torch.no_grad`` with a preallocated
output, the plain list-and-stack loop, and on CUDA the loop captured in a CUDA graph), and
backward as the adjoint solve and as autograd through the loop. Each speed-up is against
the fastest sequential loop of that cell, which the table names. The speed-ups are
printed, written as JSON and drawn as two heatmaps like the paper's (``--plot DIR``).

Run time on a 2-core AMD EPYC (torch 2.13, CPU, float32): ``--small`` (L = 16, 64, 256;
w = 1, 4) about 6 s; the default grid (L = 2^4..2^12, w = 1..16) about 1 minute.
On a GPU, ``--device cuda --full`` runs the paper's grid (L = 2^4..2^14, w = 2^0..2^7).

Usage::

    python examples/mlp_speedup_grid.py --small --plot out/
    python examples/mlp_speedup_grid.py --device cuda --full --json grid.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    print("this example needs torch: pip install torch")
    sys.exit(0)

from pcrsolve.bench.paper import (
    MLP_LOOP,
    SIZES,
    format_speedup,
    machine_label,
    mlp_speedup_grid,
    plot_grid,
    slower_note,
)

#: short names of the baselines for the table
SHORT = {MLP_LOOP: "loop", "eager loop (no_grad, list + stack)": "loop+stack",
         "eager loop in a CUDA graph": "graph", "torch eager loop": "loop (AA)",
         "numba @njit loop": "numba", "Python math.tanh loop": "floats",
         "jax.lax.scan (jit)": "jax", "autograd through eager loop": "autograd",
         "reverse VJP loop (analytic J^T)": "VJP loop"}


def main() -> int:
    """Run the grid; exit 1 if a cell's states or gradients disagree with the loop."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", help="tiny grid (CI)")
    size.add_argument("--full", action="store_true", help="the paper's grid (GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plot", metavar="DIR", help="write mlp_speedup_grid.png there")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON")
    args = p.parse_args()
    grid = SIZES["small" if args.small else "full" if args.full else "medium"]
    repeat = args.repeat
    records = mlp_speedup_grid(grid["lengths"], grid["widths"], batch=args.batch,
                               device=args.device, dtype=args.dtype, repeat=repeat,
                               progress_bar=not args.small)
    print(f"tanh MLP, batch {args.batch}, {args.dtype} on {args.device} "
          f"({machine_label(args.device)}); speed-up = time of the fastest sequential "
          f"baseline / time of pcrsolve (median of {repeat}); below 1x pcrsolve is slower")
    print(f"{'L':>6} {'w':>4} {'forward':>8} {'(vs)':<11} {'backward':>8} {'(vs)':<9} "
          f"{'iters':>5}  max rel. err (states, grads)")
    for r in records:
        f, b = r["forward"], r["backward"]
        print(f"{r['L']:>6} {r['w']:>4} {format_speedup(f['speedup']):>8} "
              f"{SHORT.get(f['baseline'], f['baseline']):<11} "
              f"{format_speedup(b['speedup']):>8} {SHORT.get(b['baseline'], b['baseline']):<9} "
              f"{r['iterations']:>5}  {r['state_rel_err']:.1e}, {r['grad_rel_err']:.1e}")
    used = {r[k]["baseline"] for r in records for k in ("forward", "backward")}
    print("baselines (the fastest of every sequential loop timed, per cell): "
          + "; ".join(f"{v} = {k}" for k, v in SHORT.items() if k in used))
    skipped = {s["name"]: s["reason"] for s in records[0]["forward"]["skipped"]}
    if skipped:
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    if any(min(r["forward_speedup"], r["backward_speedup"]) < 1 for r in records):
        print(slower_note(args.device))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    if args.plot:
        os.makedirs(args.plot, exist_ok=True)
        path = os.path.join(args.plot, "mlp_speedup_grid.png")
        plot_grid(records, path, title=f"(a) MLP speed-ups, batch {args.batch}\n"
                  f"{machine_label(args.device)}, torch on {args.device}, {args.dtype}")
        print(f"wrote {path}")
    bound = 1e-3 if args.dtype == "float32" else 1e-8
    bad = [r for r in records if max(r["state_rel_err"], r["grad_rel_err"]) > bound]
    for r in bad:
        print(f"DISAGREES: L={r['L']} w={r['w']}: "
              f"{r['state_rel_err']:.2e}, {r['grad_rel_err']:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Experiment (a) of the DeepPCR paper: MLP forward/backward speed-ups over L and w.

For a grid of depths ``L`` and widths ``w``, a random tanh MLP runs forward as the eager
loop and as Newton-PCR, and backward as autograd through the loop and as the adjoint
solve. The speed-ups are printed, written as JSON and drawn as two heatmaps like the
paper's (``--plot DIR``).

Run ``python examples/mlp_speedup_grid.py --small`` for a quick CPU grid; on a GPU,
``--device cuda --full`` runs the paper's grid (L = 2^4..2^14, w = 2^0..2^7).
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

from pcrsolve.bench.paper import mlp_speedup_grid, plot_grid


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
    if args.small:
        lengths, widths, repeat = [16, 64, 256], [1, 4], 1
    elif args.full:
        lengths, widths, repeat = [2**k for k in range(4, 15)], [2**k for k in range(8)], \
            args.repeat
    else:
        lengths, widths, repeat = [2**k for k in range(4, 13, 2)], [1, 2, 4, 8, 16], \
            args.repeat
    records = mlp_speedup_grid(lengths, widths, batch=args.batch, device=args.device,
                               dtype=args.dtype, repeat=repeat, progress=not args.small)
    print(f"{'L':>6} {'w':>4} {'fwd x':>7} {'bwd x':>7} {'iters':>5}  max rel. err (states, grads)")
    for r in records:
        print(f"{r['L']:>6} {r['w']:>4} {r['forward_speedup']:>7.2f} {r['backward_speedup']:>7.2f} "
              f"{r['iterations']:>5}  {r['state_rel_err']:.1e}, {r['grad_rel_err']:.1e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)
    if args.plot:
        os.makedirs(args.plot, exist_ok=True)
        plot_grid(records, os.path.join(args.plot, "mlp_speedup_grid.png"))
        print(f"wrote {os.path.join(args.plot, 'mlp_speedup_grid.png')}")
    bound = 1e-3 if args.dtype == "float32" else 1e-8
    bad = [r for r in records if max(r["state_rel_err"], r["grad_rel_err"]) > bound]
    for r in bad:
        print(f"DISAGREES: L={r['L']} w={r['w']}: "
              f"{r['state_rel_err']:.2e}, {r['grad_rel_err']:.2e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

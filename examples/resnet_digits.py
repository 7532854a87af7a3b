"""Experiment (b) of the DeepPCR paper: training a deep residual network in parallel.

A residual network (64 blocks ``x + tanh(W x + b)`` of width 16 by default) is trained on
scikit-learn's bundled digits (no download) twice from the same initialisation and the
same mini-batches: once with ``nn.Sequential`` (the eager loop: the sequential baseline),
once with :class:`pcrsolve.adapters.torch.ParallelSequential` (Newton-PCR forward, adjoint
backward). Prints both test accuracies, the time per training step, the speed-up against
the sequential step (named) and the Newton iterations; ``--plot DIR`` draws the training
curves (loss and test accuracy against step, loss against training time).

Run time on a 2-core AMD EPYC (torch 2.13, CPU, float32): ``--small`` (16 blocks, 1
epoch) about 8 s; the default (64 blocks, 3 epochs) about 35 s.

Usage::

    python examples/resnet_digits.py --small --plot out/
    python examples/resnet_digits.py --device cuda --depth 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys

try:
    import sklearn  # noqa: F401
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    print("this example needs torch and scikit-learn: pip install torch scikit-learn")
    sys.exit(0)

from pcrsolve.bench.paper import (
    machine_label,
    plot_resnet,
    resnet_digits,
    slower_note,
    speedup_text,
)


def main() -> int:
    """Train both networks; exit 1 if their test accuracies differ by more than 1%."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="16 blocks, 1 epoch (CI)")
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--plot", metavar="DIR", help="write resnet_training.png there")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    depth, epochs = (16, 1) if args.small else (args.depth, args.epochs)
    res = resnet_digits(depth, args.width, epochs=epochs, device=args.device, dtype=args.dtype,
                        progress_bar=not args.small)
    s, q, st = res["sequential"], res["parallel"], res["step"]
    print(f"residual network: {depth} blocks of width {args.width}, {epochs} epoch(s) "
          f"({s['steps']} steps), {args.dtype} on {args.device} ({machine_label(args.device)})")
    print(f"  sequential: test accuracy {s['test_accuracy']:.4f}, "
          f"{s['step_time_s'] * 1e3:.1f} ms per training step (median)")
    print(f"  parallel:   test accuracy {q['test_accuracy']:.4f}, "
          f"{q['step_time_s'] * 1e3:.1f} ms per training step (median), Newton iterations "
          f"mean {q['newton_iterations_mean']:.1f}, max {q['newton_iterations_max']}")
    print(f"  accuracy gap {res['accuracy_gap']:.4f}; parallel training step "
          f"{speedup_text(st['speedup'], st['baseline'])}")
    if st["speedup"] < 1:
        print(slower_note(args.device))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.plot:
        os.makedirs(args.plot, exist_ok=True)
        path = os.path.join(args.plot, "resnet_training.png")
        plot_resnet(res, path, title=f"(b) ResNet on the digits, sequential vs parallel\n"
                    f"{machine_label(args.device)}, torch on {args.device}, {args.dtype}")
        print(f"wrote {path}")
    return 0 if res["accuracy_gap"] <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())

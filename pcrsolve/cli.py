"""Command line: ``python -m pcrsolve demo`` and ``python -m pcrsolve bench SUITE``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _add_problem_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch", "cupy"],
                   help="array library (default numpy)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0, help="random seed of the problem")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pcrsolve``."""
    from .bench import SUITES

    parser = argparse.ArgumentParser(
        prog="python -m pcrsolve",
        description="pcrsolve: sequential computations solved in parallel (DeepPCR).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a short tour: linear, nonlinear, MLP forward/backward")
    _add_problem_options(demo)
    demo.add_argument("--small", action="store_true", help="tiny sizes (a few seconds)")
    demo.add_argument("--plot", default=None, metavar="DIR",
                      help="write figures (speed-ups, Newton convergence) to DIR")

    bench = sub.add_parser("bench", help="time every method against the sequential loop")
    bench.add_argument("suite", choices=sorted(SUITES), help="which benchmark")
    _add_problem_options(bench)
    bench.add_argument("--structure", default="scalar",
                       choices=["dense", "diagonal", "scalar"])
    bench.add_argument("--length", "-L", type=int, default=1 << 16, help="steps L")
    bench.add_argument("--width", "-w", type=int, default=1, help="state width w")
    bench.add_argument("--batch", "-B", type=int, default=1, help="independent chains")
    bench.add_argument("--reverse", action="store_true", help="reverse direction")
    bench.add_argument("--repeat", type=int, default=5, help="timed runs per method")
    bench.add_argument("--methods", nargs="*", default=None, help="subset of methods")
    bench.add_argument("--mode", nargs="*", default=None,
                       choices=["newton", "quasi", "picard", "jacobi", "sequential"],
                       help="Newton modes to time (bench newton; default newton quasi)")
    bench.add_argument("--tol", type=float, default=None,
                       help="Newton tolerance (default: from the dtype)")
    bench.add_argument("--json", default=None, metavar="FILE", help="write results as JSON")
    bench.add_argument("--size", default="small", choices=["tiny", "small", "medium", "full"],
                       help="bench paper / gpu: problem sizes (full is meant for a GPU)")
    bench.add_argument("--cases", nargs="*", default=None,
                       help="bench gpu: subset of cases (diagonal, diagonal-prime, dense, "
                       "newton, adjoint, gru, ddpm)")
    bench.add_argument("--no-peers", action="store_true",
                       help="bench gpu: skip torch associative_scan, accelerated-scan, jax")
    bench.add_argument("--plot", default=None, metavar="DIR", help="bench paper: figures")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pcrsolve``."""
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.command == "demo":
        from .bench.demo import run_demo

        return run_demo(opts)
    if opts.command == "bench":
        from .bench.harness import SUITES, write_json

        if opts.length < 0 or opts.width < 1 or opts.batch < 1 or opts.repeat < 1:
            parser.error("--length must be >= 0; --width, --batch and --repeat >= 1")
        report = SUITES[opts.suite](opts)
        if report is not None:  # suites that print and write their own output return None
            print(report.table())
            if opts.json:
                write_json([report], opts.json)
                print(f"wrote {opts.json}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m pcrsolve demo`` and ``python -m pcrsolve bench SUITE``.

Every ``bench`` suite has its own parser (``python -m pcrsolve bench linear --help``) that
lists only the options the suite uses, each with its default. Whatever the suite, the parsed
namespace carries every attribute any suite reads (``backend``, ``device``, ``dtype``,
``seed``, ``structure``, ``length``, ``width``, ``batch``, ``reverse``, ``repeat``,
``methods``, ``mode``, ``tol``, ``json``, ``size``, ``cases``, ``no_peers``, ``plot``,
``small``, ``suite``): options a suite does not offer keep their defaults.

A missing library or device (``--backend cupy`` without CuPy, ``--device cuda`` without
CUDA, torch missing for a suite that needs it) ends the run with one line on stderr that
names what is missing and how to install it, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

_BACKENDS = ("numpy", "torch", "cupy")
_MODES = ("newton", "quasi", "picard", "jacobi", "sequential")
_GPU_CASES = "diagonal, diagonal-prime, dense, newton, adjoint, gru, ddpm"


def _at_least(low: int) -> Any:
    """An argparse type: an int ``>= low`` (argparse reports anything else with usage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {low}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


#: Every option of the command line: flags and argparse keywords, by destination.
_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "backend": (("--backend",), dict(default="numpy", choices=_BACKENDS,
                                     help="array library the problem is built in")),
    "device": (("--device",), dict(default=None, help=(
        "device for --backend torch: cpu, cuda or cuda:N (default: cuda when torch sees a "
        "GPU, else cpu)"))),
    "dtype": (("--dtype",), dict(default="float64", choices=["float32", "float64"],
                                 help="floating-point type of the states")),
    "seed": (("--seed",), dict(type=int, default=0, help="random seed of the problem")),
    "structure": (("--structure",), dict(default="scalar",
                                         choices=["dense", "diagonal", "scalar"], help=(
        "blocks A_l: dense (w x w matrices), diagonal (w numbers) or scalar (one number)"))),
    "length": (("--length", "-L"), dict(type=_at_least(0), default=1 << 16,
                                        help="number of steps L")),
    "width": (("--width", "-w"), dict(type=_at_least(1), default=1, help="state width w")),
    "batch": (("--batch", "-B"), dict(type=_at_least(1), default=1,
                                      help="independent chains solved together")),
    "reverse": (("--reverse",), dict(action="store_true",
                                     help="run the recurrence backwards (from l = L down)")),
    "repeat": (("--repeat",), dict(type=_at_least(1), default=5,
                                   help="timed runs per contender (the median is reported)")),
    "methods": (("--methods",), dict(nargs="*", default=None, metavar="METHOD", help=(
        "linear methods to time, of sequential, pcr, cr, chunked, auto (default: all)"))),
    "mode": (("--mode",), dict(nargs="*", default=None, choices=_MODES, metavar="MODE", help=(
        f"Newton modes to time, of {', '.join(_MODES)} (default: newton quasi)"))),
    "tol": (("--tol",), dict(type=float, default=None, help=(
        "Newton's relative tolerance (default: from the dtype, pcrsolve.default_tolerance)"))),
    "json": (("--json",), dict(default=None, metavar="FILE",
                               help="also write the results as JSON to FILE (default: no file)")),
    "size": (("--size",), dict(default="small", choices=["tiny", "small", "medium", "full"],
                               help="problem sizes (full is meant for a GPU)")),
    "cases": (("--cases",), dict(nargs="*", default=None, metavar="CASE", help=(
        f"cases to run, of {_GPU_CASES} (default: all)"))),
    "no_peers": (("--no-peers",), dict(action="store_true", help=(
        "skip the peer libraries (torch associative_scan, accelerated-scan, jax)"))),
    "plot": (("--plot",), dict(default=None, metavar="DIR",
                               help="write figures to DIR (default: no figures)")),
    "small": (("--small",), dict(action="store_true", help="tiny sizes (a few seconds)")),
}

_PROBLEM = ("backend", "device", "dtype", "seed")



_SIZES = ("length", "width", "batch")

#: Each suite: its one-line help, its description, its options and per-suite changes to
#: them. Suites registered in pcrsolve.bench but missing here get every option.
_SUITES: dict[str, tuple[str, str, tuple[str, ...], dict[str, dict[str, Any]]]] = {
    "linear": (
        "linear recurrences: every method against the sequential loops",
        "Time pcrsolve's linear methods (sequential, pcr, cr, chunked, auto) against every "
        "sequential loop available on this machine, on one random stable system "
        "x_l = A_l x_{l-1} + b_l, and check that they agree with a float64 loop.",
        (*_PROBLEM, "structure", *_SIZES, "reverse", "repeat", "methods", "json"),
        {},
    ),
    "newton": (
        "a nonlinear (tanh MLP) recurrence: Newton-PCR modes against the loops",
        "Time the forward pass of a random tanh MLP x_l = tanh(W_l x_{l-1} + c_l): "
        "Newton-PCR in each --mode against every sequential loop, with iterations and "
        "status.",
        (*_PROBLEM, *_SIZES, "repeat", "mode", "tol", "json"),
        {},
    ),
    "adjoint": (
        "gradients: the adjoint solve against autograd through the loop (torch)",
        "Time the backward pass of a random tanh MLP: pcrsolve's adjoint (one reverse linear "
        "solve and one batched VJP) against autograd through the loop and a reverse VJP "
        "loop. Needs torch.",
        (*_PROBLEM, *_SIZES, "repeat", "tol", "json"),
        {"backend": dict(default=None, help=(
            "array library: torch, the only one that works here (gradients come from torch "
            "autograd) (default: torch)"))},
    ),
    "paper": (
        "the DeepPCR paper's four experiments (torch)",
        "Run the DeepPCR paper's experiments with torch models: (a) tanh MLP speed-ups over "
        "depths and widths, (b) a residual network trained on the digits, (c) DDPM sampling "
        "of the digits, (d) a GRU over long sequences.",
        ("device", "dtype", "seed", "size", "repeat", "plot", "json"),
        {"device": dict(help="torch device: cpu, cuda or cuda:N (default: cpu)"),
         "repeat": dict(help="timed runs per contender, where the size does not fix it"),
         "size": dict(help="problem sizes of the experiments (full is meant for a GPU)"),
         "plot": dict(help="write the figures to DIR (default: no figures)")},
    ),
    "robust": (
        "recurrences nobody tuned for Newton: success rate per mode and globalisation",
        "Solve stable, periodic, saturating, stiff and chaotic recurrences (NumPy, float64) "
        "with each mode and globalisation, and report the success rate (CONVERGED and within "
        "1e-8 of a float64 loop, or an honest failure for chaos), iterations, time and the "
        "largest error of a CONVERGED answer.",
        ("length", "seed", "json"),
        {"length": dict(default=200, help="number of steps L of every case (at most 2000)")},
    ),
    "distributed": (
        "sequence-parallel solves across processes (torch.distributed; launch with torchrun)",
        "Time pcrsolve.distributed on P processes (gloo, one thread each): Newton on a tanh "
        "recurrence (w = 4, B = 8) and a diagonal linear recurrence (w = 1), with compute "
        "time, communication time and bytes per iteration, the same at L/16 (communication "
        "must not depend on L), against the one-process solve and the sequential loops. "
        "Launch with 'torchrun --standalone --nproc-per-node P -m pcrsolve bench "
        "distributed'; without torchrun it runs on one process. Needs torch.",
        ("dtype", "seed", "size", "length", "repeat", "tol", "cases", "json"),
        {"size": dict(help=(
            "problem sizes: tiny (Newton L = 2^10, linear L = 2^14), small and medium (the "
            "targets: 2^16 and 2^22), full (2^18 and 2^24)")),
         "length": dict(default=None, help="number of steps L of both cases (default: from "
                        "--size)"),
         "repeat": dict(default=3),
         "cases": dict(help="cases to run, of newton, linear (default: both)")},
    ),
    "gpu": (
        "every GPU target in one run (tiny sizes on a CPU) (torch)",
        "Check every GPU target: fused kernels, Newton, adjoint, GRU and DDPM against the "
        "fastest sequential loops (CUDA graphs included) and the peer libraries, with a "
        "verdict per target. On a CPU it runs at tiny sizes, to check that every contender "
        "runs.",
        ("device", "size", "repeat", "cases", "no_peers", "json"),
        {"device": dict(help=(
            "torch device: cpu, cuda or cuda:N (default: cuda when torch sees a GPU, else "
            "cpu)")),
         "size": dict(help=(
             "problem sizes: tiny checks that every contender runs; small and medium mean "
             "tiny on a CPU and full on a GPU; full is the GPU benchmark")),
         "repeat": dict(help="timed runs per contender on a GPU (at least 5; 3 at tiny size)")},
    ),
}

#: What each command needs beyond NumPy: torch always (True), or only with --backend torch.
_NEEDS_TORCH = {"adjoint": True, "paper": True, "gpu": True, "distributed": True}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """The default after every option; options without one say in words what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _program_name(argv0: str | None = None) -> str:
    """``pcrsolve`` for the console script, ``python -m pcrsolve`` otherwise."""
    argv0 = sys.argv[0] if argv0 is None and sys.argv else (argv0 or "")
    stem = os.path.splitext(argv0.replace("\\", "/").rsplit("/", 1)[-1])[0]
    return "pcrsolve" if stem in ("pcrsolve", "pcrsolve-script") else "python -m pcrsolve"


def _add_options(p: argparse.ArgumentParser, names: Sequence[str],
                 changes: dict[str, dict[str, Any]] | None = None,
                 hidden: Sequence[str] = ()) -> None:
    """Add the options ``names`` (with per-parser ``changes``); the others keep defaults.

    ``hidden`` options are accepted (old command lines keep working) but not listed.
    """
    changes = changes or {}
    for name in names:
        flags, kwargs = _OPTIONS[name]
        p.add_argument(*flags, dest=name, **{**kwargs, **changes.get(name, {})})
    for name in hidden:
        flags, kwargs = _OPTIONS[name]
        p.add_argument(*flags, dest=name, **{**kwargs, "help": argparse.SUPPRESS})
    offered = set(names) | set(hidden)
    p.set_defaults(**{name: kwargs.get("default", False)
                      for name, (_, kwargs) in _OPTIONS.items() if name not in offered})


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``python -m pcrsolve`` (or the ``pcrsolve`` script).

    Parameters
    ----------
    prog : str, optional
        The program name shown in usage and help; default from how it was called.

    Returns
    -------
    argparse.ArgumentParser
    """
    from .bench import SUITES

    parser = argparse.ArgumentParser(
        prog=prog or _program_name(),
        description="pcrsolve: sequential computations solved in parallel (DeepPCR).",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="a short tour: linear, nonlinear, MLP forward/backward",
        description="A short tour: a linear recurrence, the logistic map and a tanh MLP "
        "forward/backward, each against the sequential loop.", formatter_class=_Formatter)
    _add_options(demo, ("backend", "device", "dtype", "small", "plot"),
                 {"plot": dict(help="write figures (speed-ups, Newton convergence) to DIR "
                               "(default: no figures)")},
                 hidden=("seed",))
    demo.set_defaults(suite=None)

    bench = sub.add_parser(
        "bench", help="time every method against the sequential loop",
        description="Benchmarks: each suite times pcrsolve against the fastest sequential "
        "implementations on this machine, side by side in one run. "
        "'bench SUITE --help' lists a suite's options.", formatter_class=_Formatter)
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name in sorted(SUITES):
        short, description, names, changes = _SUITES.get(
            name, (f"the {name} suite", f"The {name} suite.", tuple(_OPTIONS), {}))
        p = suites.add_parser(name, help=short, description=description,
                              formatter_class=_Formatter)
        hidden = ("backend",) if name in ("paper", "gpu") else ()
        _add_options(p, [n for n in names if n != "small"], changes, hidden)
    return parser


def _missing(opts: argparse.Namespace) -> str | None:
    """What the run needs and this machine lacks, as one line; None if nothing."""
    command = opts.suite if opts.command == "bench" else opts.command
    backend, device = opts.backend, opts.device
    if command == "adjoint" and backend != "torch":
        return (f"gradients come from torch autograd: this suite needs --backend torch (the "
                f"default), not --backend {backend}")
    if command in ("paper", "gpu") and backend == "cupy":
        return "this suite runs torch models: --backend cupy does not apply (drop it)"
    if backend == "cupy":
        if importlib.util.find_spec("cupy") is None:
            return ("--backend cupy needs CuPy, which is not installed: pip install "
                    "cupy-cuda12x (the wheel for your CUDA version; see "
                    "https://docs.cupy.dev/en/stable/install.html)")
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver, no device: CuPy raises its own errors
            return f"--backend cupy needs a CUDA GPU; CuPy finds none ({exc})"
        if count < 1:
            return "--backend cupy needs a CUDA GPU; CuPy finds none"
        return None
    uses_torch = backend == "torch" or _NEEDS_TORCH.get(command, False)
    if uses_torch and importlib.util.find_spec("torch") is None:
        what = "this suite" if _NEEDS_TORCH.get(command, False) else "--backend torch"
        return f"{what} needs PyTorch, which is not installed: pip install torch"
    if device is None or device == "cpu":
        return None
    if not uses_torch:
        return (f"--device {device} applies to --backend torch (NumPy runs on the CPU): add "
                f"--backend torch")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"--device must be a torch device such as cpu, cuda or cuda:1; got {device!r}"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"built for CUDA {torch.version.cuda}")
            return (f"--device {device} needs a CUDA GPU, but torch {torch.__version__} "
                    f"({build}) sees none: on a machine with an NVIDIA GPU and driver, install "
                    "a CUDA build of torch (pip install torch, or the command from "
                    "https://pytorch.org/get-started/locally/), or drop --device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return (f"--device {device}: torch sees only {torch.cuda.device_count()} CUDA "
                    f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return None


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m pcrsolve`` and of the ``pcrsolve`` script.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default ``sys.argv[1:]``).
    prog : str, optional
        The program name in messages; default from how it was called.

    Returns
    -------
    int
        The exit status: 0 on success, 1 when a check disagrees, 2 for unusable options
        or a missing library or device.
    """
    parser = build_parser(prog)
    opts = parser.parse_args(argv)
    if opts.command == "bench" and opts.suite == "adjoint" and opts.backend is None:
        opts.backend = "torch"
    missing = _missing(opts)
    if missing:
        where = f"bench {opts.suite}" if opts.command == "bench" else opts.command
        print(f"{parser.prog} {where}: error: {missing}", file=sys.stderr)
        return 2
    if opts.command == "demo":
        from .bench.demo import run_demo

        return run_demo(opts)
    if opts.command == "bench":
        from .bench.harness import SUITES, write_json

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

"""The command line's errors and help: one line and exit status 2 for a missing library or
device, each suite's own ``--help``, the program's name, and the old command lines."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pcrsolve.cli import _program_name, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_CUPY = importlib.util.find_spec("cupy") is not None

#: Every attribute some suite or the demo reads from the parsed options.
ATTRIBUTES = ("backend", "device", "dtype", "seed", "structure", "length", "width", "batch",
              "reverse", "repeat", "methods", "mode", "tol", "json", "size", "cases",
              "no_peers", "plot", "small", "suite")


def _run(*args: str, hide: str | None = None) -> subprocess.CompletedProcess:
    """``python -m pcrsolve ARGS`` from the repository root; ``hide`` makes a module
    unimportable (as if not installed) in that process."""
    if hide is None:
        cmd = [sys.executable, "-m", "pcrsolve", *args]
    else:
        code = (f"import sys; sys.modules[{hide!r}] = None; sys.argv[0] = '__main__.py'; "
                f"from pcrsolve.cli import main; sys.exit(main({list(args)!r}))")
        cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def _assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- a missing library or device ------------------------------------------------------------
@pytest.mark.skipif(HAVE_CUPY, reason="CuPy is installed here: its absence cannot be checked")
@pytest.mark.parametrize("args", [["demo", "--small", "--backend", "cupy"],
                                  ["bench", "linear", "--backend", "cupy", "-L", "8"]],
                         ids=["demo", "bench-linear"])
def test_backend_cupy_without_cupy(args):
    line = _assert_one_line_error(_run(*args), "--backend cupy needs CuPy",
                                  "pip install cupy-cuda12x")
    assert line.startswith(f"python -m pcrsolve {' '.join(args[:1 + (args[0] == 'bench')])}:")


def _cuda_absent() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (to tell that CUDA is absent)")
@pytest.mark.parametrize("args", [["demo", "--small", "--backend", "torch", "--device", "cuda"],
                                  ["bench", "gpu", "--size", "tiny", "--device", "cuda"],
                                  ["bench", "paper", "--size", "tiny", "--device", "cuda:0"]],
                         ids=["demo", "bench-gpu", "bench-paper"])
def test_device_cuda_without_cuda(args):
    if not _cuda_absent():
        pytest.skip("CUDA is available here: its absence cannot be checked")
    _assert_one_line_error(_run(*args), f"--device {args[-1]} needs a CUDA GPU",
                           "sees none", "install a CUDA build of torch")


@pytest.mark.parametrize("args", [["demo", "--small", "--device", "cuda"],
                                  ["bench", "linear", "--device", "cuda", "-L", "8"]],
                         ids=["demo", "bench-linear"])
def test_device_with_numpy_backend_says_to_add_torch(args):
    _assert_one_line_error(_run(*args), "--device cuda applies to --backend torch",
                           "add --backend torch")


@pytest.mark.parametrize("args,what", [
    (["bench", "adjoint", "-L", "8"], "bench adjoint: error: this suite needs PyTorch"),
    (["bench", "paper", "--size", "tiny"], "bench paper: error: this suite needs PyTorch"),
    (["bench", "newton", "--backend", "torch", "-L", "8"],
     "bench newton: error: --backend torch needs PyTorch"),
    (["demo", "--small", "--backend", "torch"], "demo: error: --backend torch needs PyTorch"),
], ids=["adjoint", "paper", "newton", "demo"])
def test_torch_missing(args, what):
    # torch made unimportable in the child process, as if it were not installed
    _assert_one_line_error(_run(*args, hide="torch"), what, "pip install torch")


def test_adjoint_with_numpy_backend_is_one_line():
    _assert_one_line_error(_run("bench", "adjoint", "--backend", "numpy", "-L", "8"),
                           "bench adjoint: error: gradients come from torch autograd",
                           "needs --backend torch", "not --backend numpy")


@pytest.mark.skipif(not HAVE_TORCH, reason="bench adjoint needs torch")
def test_adjoint_picks_torch_when_no_backend_is_given(capsys):
    opts = build_parser().parse_args(["bench", "adjoint"])
    assert opts.backend is None  # not given: main picks torch
    assert main(["bench", "adjoint", "-L", "16", "-w", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "pcrsolve adjoint" in out and "torch" in out


def test_bad_numbers_exit_with_the_suites_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "linear", "--width", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m pcrsolve bench linear" in err
    assert "argument --width/-w: must be an integer >= 1; got 0" in err
    with pytest.raises(SystemExit):
        main(["bench", "newton", "-L", "-1"])


# -- help ----------------------------------------------------------------------------------
def test_help_names_the_program_it_was_called_as():
    out = _run("--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m pcrsolve "), out
    # the console script sets argv[0] to its own path (pip's generated wrapper)
    code = ("import sys; sys.argv[0] = '/some/env/bin/pcrsolve'; "
            "from pcrsolve.cli import main; sys.exit(main())")
    script = subprocess.run([sys.executable, "-c", code, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert script.returncode == 0 and script.stdout.startswith("usage: pcrsolve "), script
    assert _program_name("C:\\env\\Scripts\\pcrsolve.exe") == "pcrsolve"
    assert _program_name("/x/lib/python3/site-packages/pcrsolve/__main__.py") == \
        "python -m pcrsolve"


_ALL_FLAGS = {"backend": "--backend", "device": "--device", "dtype": "--dtype",
              "seed": "--seed", "structure": "--structure", "length": "--length",
              "width": "--width", "batch": "--batch", "reverse": "--reverse",
              "repeat": "--repeat", "methods": "--methods", "mode": "--mode", "tol": "--tol",
              "json": "--json", "size": "--size", "cases": "--cases", "no_peers": "--no-peers",
              "plot": "--plot", "small": "--small"}

_SUITE_OPTIONS = {
    "linear": {"backend", "device", "dtype", "seed", "structure", "length", "width", "batch",
               "reverse", "repeat", "methods", "json"},
    "newton": {"backend", "device", "dtype", "seed", "length", "width", "batch", "repeat",
               "mode", "tol", "json"},
    "adjoint": {"backend", "device", "dtype", "seed", "length", "width", "batch", "repeat",
                "tol", "json"},
    "paper": {"device", "dtype", "seed", "size", "repeat", "plot", "json"},
    "gpu": {"device", "size", "repeat", "cases", "no_peers", "json"},
    "robust": {"length", "seed", "json"},
    "distributed": {"dtype", "seed", "size", "length", "repeat", "tol", "cases", "json"},
}


def _option_entries(help_text: str) -> dict[str, str]:
    """``{flag: its help}`` from the options section of ``--help`` output."""
    section = help_text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + section)
    out = {}
    for entry in entries:
        m = re.match(r"(-[-\w]+)", entry.strip())
        if m:
            out[m.group(1)] = " ".join(entry.split())
    return out


@pytest.mark.parametrize("suite", sorted(_SUITE_OPTIONS))
def test_each_suite_has_its_own_help_listing_only_its_options(suite, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", suite, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m pcrsolve bench {suite} ")
    entries = _option_entries(text)
    listed = {name for name, flag in _ALL_FLAGS.items() if flag in entries}
    assert listed == _SUITE_OPTIONS[suite]
    for flag, entry in entries.items():
        if flag != "-h":
            assert "(default:" in entry, entry  # every option explained with its default
    if suite == "adjoint":
        assert "(default: torch)" in entries["--backend"]


def test_bench_help_lists_every_suite(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for suite in _SUITE_OPTIONS:
        assert re.search(rf"^\s+{suite}\s+\S", text, re.M), suite


# -- the old command lines parse as before --------------------------------------------------
@pytest.mark.parametrize("argv,expect", [
    (["bench", "linear", "--structure", "scalar", "-L", "1048576"],
     {"suite": "linear", "structure": "scalar", "length": 1048576, "width": 1, "batch": 1,
      "backend": "numpy", "repeat": 5}),
    (["bench", "paper", "--size", "small", "--plot", "figs", "--json", "paper.json"],
     {"suite": "paper", "size": "small", "plot": "figs", "json": "paper.json",
      "dtype": "float64", "seed": 0, "device": None}),
    (["bench", "gpu", "--cases", "diagonal", "dense", "--no-peers"],
     {"suite": "gpu", "cases": ["diagonal", "dense"], "no_peers": True, "size": "small"}),
    (["bench", "newton", "--backend", "torch", "-L", "64", "-w", "3", "-B", "2", "--repeat",
      "1", "--mode", "newton", "quasi", "--tol", "1e-9"],
     {"length": 64, "width": 3, "batch": 2, "repeat": 1, "mode": ["newton", "quasi"],
      "tol": 1e-9}),
    (["demo", "--small", "--plot", "DIR"], {"command": "demo", "small": True, "plot": "DIR"}),
    (["bench", "paper", "--backend", "torch"], {"backend": "torch"}),  # accepted, unlisted
], ids=["linear", "paper", "gpu", "newton", "demo", "paper-backend"])
def test_old_command_lines_parse_and_carry_every_attribute(argv, expect):
    opts = build_parser().parse_args(argv)
    for name in ATTRIBUTES:
        assert hasattr(opts, name), name
    for name, value in expect.items():
        assert getattr(opts, name) == value, (name, getattr(opts, name))

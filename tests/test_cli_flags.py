"""``bench linear``'s ``--reverse``, ``--methods`` and ``--backend`` flags, against a reference.

Every solve the command runs is captured (``solve_linear`` wrapped) and its states are
compared with the suite's float64 loop (``linear_problems.reference_solve``), in the
direction the flags ask for; the JSON's ``problem`` and ``rows`` must say what was run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from linear_problems import reference_solve

import pcrsolve.bench.linear as bench_linear
from pcrsolve.cli import main


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@pytest.fixture
def captured(monkeypatch):
    """Every ``(method, system, states)`` of the solves ``bench linear`` runs."""
    calls: list[tuple[str, object, object]] = []
    real = bench_linear.solve_linear

    def spy(system, *, method="auto", **kw):
        out = real(system, method=method, **kw)
        calls.append((method, system, out))
        return out

    monkeypatch.setattr(bench_linear, "solve_linear", spy)
    return calls


def run_bench(tmp_path, args: list[str]) -> dict:
    out = tmp_path / "r.json"
    assert main(["bench", "linear", "--repeat", "1", "--json", str(out), *args]) == 0
    return json.loads(out.read_text())[0]


def check_states(calls, structure: str, reverse: bool, rtol: float) -> None:
    """Each captured solve agrees with the float64 loop in the asked direction only."""
    assert calls
    for method, system, states in calls:
        A, b = to_numpy(system.A), to_numpy(system.b)
        x0 = to_numpy(system.x0)
        assert system.reverse is reverse
        ref = reference_solve(A, b, x0, structure, reverse)
        scale = np.max(np.abs(ref))
        err = np.max(np.abs(to_numpy(states) - ref)) / scale
        assert err < rtol, (method, err)
        other = reference_solve(A, b, x0, structure, not reverse)
        assert np.max(np.abs(other - ref)) / scale > 1e-3  # the direction matters here


@pytest.mark.parametrize("structure,w", [("dense", 3), ("diagonal", 2), ("scalar", 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_reverse_flag_solves_the_reverse_recurrence(tmp_path, capsys, captured, structure, w,
                                                    reverse):
    data = run_bench(tmp_path, ["--structure", structure, "-L", "40", "-w", str(w), "-B", "2",
                                "--methods", "sequential", "pcr", "cr", "chunked",
                                *(["--reverse"] if reverse else [])])
    assert data["problem"]["reverse"] is reverse
    assert data["problem"]["structure"] == structure
    check_states(captured, structure, reverse, 1e3 * np.finfo(np.float64).eps)
    for r in data["rows"]:
        if r["rel_error"] is not None:
            assert r["rel_error"] < 1e3 * np.finfo(np.float64).eps, r


def test_methods_flag_runs_exactly_those_methods(tmp_path, capsys, captured):
    data = run_bench(tmp_path, ["--structure", "diagonal", "-L", "30", "-w", "2",
                                "--methods", "cr", "auto"])
    ours = {r["name"] for r in data["rows"] if r["name"].startswith("pcrsolve ")}
    assert ours == {"pcrsolve cr", "pcrsolve auto"}
    # the repeat runs each method at least once; nothing else is solved
    assert {m for m, _, _ in captured} == {"cr", "auto"}
    auto = next(r for r in data["rows"] if r["name"] == "pcrsolve auto")
    assert auto["extra"]["chose"] in ("sequential", "pcr", "cr", "chunked", "kernel")
    check_states(captured, "diagonal", False, 1e3 * np.finfo(np.float64).eps)


def test_default_methods_are_all_of_them(tmp_path, capsys, captured):
    data = run_bench(tmp_path, ["--structure", "scalar", "-L", "20", "-w", "1"])
    ours = {r["name"] for r in data["rows"] if r["name"].startswith("pcrsolve ")}
    assert {f"pcrsolve {m}" for m in ("sequential", "pcr", "cr", "chunked", "auto")} <= ours
    check_states(captured, "scalar", False, 1e3 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True])
def test_backend_flag_runs_on_torch(tmp_path, capsys, captured, dtype, reverse):
    torch = pytest.importorskip("torch")
    data = run_bench(tmp_path, ["--backend", "torch", "--device", "cpu", "--dtype", dtype,
                                "--structure", "dense", "-L", "30", "-w", "2", "-B", "2",
                                "--methods", "sequential", "pcr", "cr",
                                *(["--reverse"] if reverse else [])])
    assert data["problem"]["backend"] == "torch"
    assert data["problem"]["device"] == "cpu"
    assert data["problem"]["dtype"] == dtype
    want = getattr(torch, dtype)
    for _, system, states in captured:
        assert isinstance(states, torch.Tensor) and states.dtype == want
        assert isinstance(system.b, torch.Tensor)
    eps = float(np.finfo(dtype).eps)
    check_states(captured, "dense", reverse, 1e3 * eps)
    for r in data["rows"]:
        if r["rel_error"] is not None:
            assert r["rel_error"] < 1e3 * eps, r


def test_backend_numpy_is_the_default(tmp_path, capsys, captured):
    data = run_bench(tmp_path, ["--structure", "diagonal", "-L", "20", "-w", "2",
                                "--methods", "pcr"])
    assert data["problem"]["backend"] == "numpy"
    assert captured
    for _, _system, states in captured:
        assert isinstance(states, np.ndarray)

"""The command line: bench suites and the demo run, agree, and write JSON."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pcrsolve.cli import main


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_bench_linear_table_and_json(tmp_path, capsys, structure):
    out = tmp_path / "r.json"
    assert main(["bench", "linear", "--structure", structure, "-L", "300", "-w", "3", "-B", "2",
                 "--repeat", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for method in ("sequential", "pcr", "cr", "chunked", "auto"):
        assert method in text
    data = json.loads(out.read_text())[0]
    assert data["problem"]["L"] == 300
    assert {r["name"] for r in data["rows"]} == {"sequential", "pcr", "cr", "chunked", "auto"}
    assert all(r["rel_error"] < 1e-12 for r in data["rows"])


def test_bench_newton_and_adjoint(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "newton", "--backend", "torch", "-L", "64", "-w", "3", "-B", "2",
                 "--repeat", "1", "--mode", "newton", "quasi"]) == 0
    text = capsys.readouterr().out
    assert "pcrsolve newton" in text and "CONVERGED" in text
    assert main(["bench", "adjoint", "--backend", "torch", "-L", "64", "-w", "3",
                 "--repeat", "1"]) == 0
    assert "pcrsolve adjoint" in capsys.readouterr().out


def test_demo_small(capsys):
    assert main(["demo", "--small"]) == 0
    text = capsys.readouterr().out
    assert "linear, scalar" in text and "logistic map" in text


def test_bad_options_exit_with_usage():
    with pytest.raises(SystemExit):
        main(["bench", "linear", "--width", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "nonsense"])


def test_demo_writes_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--small", "--plot", str(tmp_path)]) == 0
    assert (tmp_path / "demo_speedups.png").stat().st_size > 1000
    assert (tmp_path / "demo_newton.png").stat().st_size > 1000


def test_bench_paper_small(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "paper.json"
    assert main(["bench", "paper", "--size", "small", "--dtype", "float32", "--json", str(out),
                 "--plot", str(tmp_path)]) == 0
    data = json.loads(out.read_text())
    grid = data["a_mlp_grid"]
    assert {(r["L"], r["w"]) for r in grid} == {(L, w) for L in (16, 64, 256) for w in (1, 4)}
    assert all(r["state_rel_err"] < 1e-4 and r["grad_rel_err"] < 1e-3 for r in grid)
    assert data["b_resnet_digits"]["accuracy_gap"] <= 0.01
    assert data["c_digits_ddpm"]["max_abs_diff"] <= 1e-4
    assert data["c_digits_ddpm"]["status"] == "CONVERGED"
    assert data["d_gru_long_sequence"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "mlp_speedup_grid.png").exists()


def test_bench_gpu_runs_every_case_at_tiny_size(tmp_path, capsys):
    # on a CPU the GPU suite runs at tiny sizes so that it stays ready for a GPU; the CUDA
    # graph contenders are skipped with their reason, every pcrsolve contender is checked
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    has_triton = importlib.util.find_spec("triton") is not None
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--size", "tiny", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    cases = {c["case"]: c for c in data["cases"]}
    assert len(cases) == 7
    for case in cases.values():
        # CUDA-graph contenders need a GPU and the Triton kernels need Triton: those skip
        ours = [r for r in case["results"]
                if r["name"].startswith("pcrsolve") and "CUDA graph" not in r["name"]
                and (has_triton or "kernel" not in r["name"])]
        assert ours and all(r["median_s"] is not None for r in ours), case["case"]
        assert all(r["rel_error"] is None or r["rel_error"] < 1e-4 for r in ours), case["case"]
        if not data["machine"].count("GPU"):
            assert all(r["median_s"] is None for r in case["results"] if "CUDA graph" in r["name"])
        # every target gets a verdict; at tiny sizes no speed target is judged, and every
        # agreement target is met
        verdicts = {v["target"]: v["verdict"] for v in case["verdicts"]}
        assert verdicts and all(v in ("met", "not judged", "not measured")
                                for v in verdicts.values()), verdicts
        assert all(v == "met" for t, v in verdicts.items()
                   if t.startswith(("agrees", "same outputs", "samples within"))), verdicts

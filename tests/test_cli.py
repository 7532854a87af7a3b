"""The command line: bench suites and the demo run, agree, and write JSON."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pcrsolve.bench.baselines import FLOOR_NAME
from pcrsolve.cli import main


def check_reference_is_fastest_baseline(data: dict, bound: float) -> None:
    """The reported reference is the baseline row with the smallest median; every row
    (baselines included) agrees with the float64 loop; ratios are against the reference."""
    baselines = [r for r in data["rows"] if r["baseline"]]
    assert baselines, "no sequential contender was timed"
    assert data["reference"] == min(baselines, key=lambda r: r["median_s"])["name"]
    assert set(data["baselines"]) == {r["name"] for r in baselines}
    ref_time = next(r["median_s"] for r in data["rows"] if r["name"] == data["reference"])
    for r in data["rows"]:
        if r["name"] == FLOOR_NAME:  # a memory pass, not a solver: no states, no error
            assert r["rel_error"] is None and not r["baseline"], r
            continue
        assert r["rel_error"] < bound, r
        assert r["ratio_vs_reference"] == pytest.approx(ref_time / r["median_s"])
    assert data["verdict"]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_bench_linear_table_and_json(tmp_path, capsys, structure, reverse):
    out = tmp_path / "r.json"
    w = 1 if structure == "scalar" else 3
    args = ["bench", "linear", "--structure", structure, "-L", "300", "-w", str(w), "-B", "2",
            "--repeat", "2", "--json", str(out)]
    assert main(args + (["--reverse"] if reverse else [])) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())[0]
    assert data["problem"]["L"] == 300
    names = {r["name"] for r in data["rows"]}
    assert {f"pcrsolve {m}" for m in ("sequential", "pcr", "cr", "chunked", "auto")} <= names
    # the lean loop always runs on NumPy: floats for width-1 chains, ufuncs otherwise
    assert ("Python float loop" if w == 1 else "NumPy loop (in-place)") in names
    assert FLOOR_NAME in names
    check_reference_is_fastest_baseline(data, 1e-12)
    assert f"reference: {data['reference']}" in text
    assert data["verdict"] in text


def test_bench_linear_float32_errors_within_dtype_bound(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "linear", "--structure", "diagonal", "-L", "500", "-w", "2",
                 "--dtype", "float32", "--repeat", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())[0]
    check_reference_is_fastest_baseline(data, 1e-5)


def test_bench_newton_numpy_baselines(tmp_path, capsys):
    out = tmp_path / "n.json"
    assert main(["bench", "newton", "-L", "200", "-w", "1", "--repeat", "1",
                 "--mode", "newton", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())[0]
    names = {r["name"] for r in data["rows"]}
    assert {"numpy eager loop", "Python math.tanh loop", "pcrsolve newton"} <= names
    check_reference_is_fastest_baseline(data, 1e-10)
    assert "CONVERGED" in text and data["verdict"] in text


def test_bench_newton_and_adjoint(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "n.json"
    assert main(["bench", "newton", "--backend", "torch", "-L", "64", "-w", "3", "-B", "2",
                 "--repeat", "1", "--mode", "newton", "quasi", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pcrsolve newton" in text and "CONVERGED" in text
    data = json.loads(out.read_text())[0]
    assert "torch eager loop" in {r["name"] for r in data["rows"]}
    check_reference_is_fastest_baseline(data, 1e-8)  # Newton stops at the default tol
    assert main(["bench", "adjoint", "--backend", "torch", "-L", "64", "-w", "3",
                 "--repeat", "1", "--json", str(out)]) == 0
    assert "pcrsolve adjoint" in capsys.readouterr().out
    data = json.loads(out.read_text())[0]
    assert {"autograd through eager loop", "reverse VJP loop (analytic J^T)"} <= set(
        data["baselines"])
    check_reference_is_fastest_baseline(data, 1e-10)


def test_demo_small(capsys):
    assert main(["demo", "--small"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "linear recurrence" in text and "logistic map" in text and "backward" in text
    assert "<- best loop" in text and "0.0x" not in text
    # every part names its best loop and gives a verdict; a slower result says why
    assert text.count("=> ") >= 3
    if "SLOWER than the best loop" in text:  # the reason, once, as a footnote
        assert text.count("(*)") >= 2 and "On a CPU the loop wins" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "running" not in text  # progress never lands among the results


def test_demo_exit_status_flags_disagreement(monkeypatch, capsys):
    from pcrsolve.bench import demo

    real = demo.solve_linear
    monkeypatch.setattr(demo, "solve_linear", lambda system: real(system) * 1.001)
    assert main(["demo", "--small"]) == 1
    assert "DISAGREEMENT" in capsys.readouterr().out


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


def test_bench_robust_trust_region_solves_every_stable_case(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "robust", "-L", "20", "--json", str(out)]) == 0
    data = json.loads(out.read_text())[0]
    rows = {r["name"]: r for r in data["rows"]}
    assert set(rows) == {"newton/trust-region", "newton/none", "quasi/trust-region",
                         "jacobi/none"}
    # the robust default and the exact-after-L modes never fail (chaos counts as handled
    # when it is reported honestly); errors of CONVERGED answers are at rounding level
    for name in ("newton/trust-region", "quasi/trust-region", "jacobi/none"):
        ok, total = map(int, rows[name]["extra"]["success"].split("/"))
        assert ok == total == data["problem"]["cases"], rows[name]
        assert rows[name]["rel_error"] <= 1e-8
    assert "newton/trust-region" in capsys.readouterr().out


def test_untimed_rows_show_a_dash_not_a_zero_speed_up():
    from pcrsolve.bench.harness import Report, Row

    rows = [Row("loop", 2e-3, [2e-3]), Row("ours", 1e-3, [1e-3], 0.0),
            Row("  comm only", float("inf"), [float("nan")])]
    report = Report("x", {"L": 8}, rows, baselines=["loop"])
    line = next(s for s in report.table().splitlines() if "comm only" in s)
    assert "0x" not in line and "inf" not in line and line.split()[2:4] == ["-", "-"]
    data = report.to_json()
    assert [r["ratio_vs_reference"] for r in data["rows"]] == [1.0, 2.0, None]

"""``bench paper``: the four figures, and speed-ups against the fastest baseline that ran."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pcrsolve.bench.paper import FIGURES, compare, format_speedup, speedup_text, text_colour
from pcrsolve.cli import main


def _comparisons(data: dict) -> list[tuple[str, dict]]:
    """Every :func:`compare` record in the JSON of ``bench paper``, with where it is."""
    out = []
    for r in data["a_mlp_grid"]:
        out += [(f"(a) L={r['L']} w={r['w']} {k}", r[k]) for k in ("forward", "backward")]
    out.append(("(b) training step", data["b_resnet_digits"]["step"]))
    out.append(("(c) sampling", data["c_digits_ddpm"]["sampling"]))
    out.append(("(d) forward", data["d_gru_long_sequence"]["forward"]))
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    tmp = tmp_path_factory.mktemp("paper")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared small machine: no oversubscription
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["bench", "paper", "--size", "tiny", "--dtype", "float32",
                       "--json", str(tmp / "paper.json"), "--plot", str(tmp / "figs")])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return tmp, json.loads((tmp / "paper.json").read_text()), buf.getvalue()


def test_writes_four_titled_figures(tiny_run):
    import matplotlib.image

    tmp, data, out = tiny_run
    assert set(FIGURES) == {"a", "b", "c", "d"}
    for key, name in FIGURES.items():
        path = tmp / "figs" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, (name, img.shape)
        # not a blank canvas: a drawn figure has dark pixels (text, lines, images)
        assert float(img[..., :3].min()) < 0.2, name
        assert data["figures"][key] == str(path)
        assert f"wrote {path}" in out


def test_speedups_are_against_the_fastest_baseline(tiny_run):
    _, data, out = tiny_run
    comparisons = _comparisons(data)
    assert len(comparisons) == 2 * len(data["a_mlp_grid"]) + 3
    for where, c in comparisons:
        medians = {b["name"]: b["median_s"] for b in c["baselines"]}
        assert medians and all(t > 0 for t in medians.values()), where
        fastest = min(medians, key=medians.get)
        assert c["baseline"] == fastest, where
        assert c["baseline_s"] == medians[fastest], where
        assert c["speedup"] == pytest.approx(min(medians.values()) / c["pcrsolve_s"],
                                             rel=1e-12), where
    # the forward passes have more than one sequential contender; skipped ones say why
    assert len(comparisons[0][1]["baselines"]) >= 2
    assert all(s["reason"] for _, c in comparisons for s in c["skipped"])
    # the flat keys repeat the records
    for r in data["a_mlp_grid"]:
        assert r["forward_speedup"] == r["forward"]["speedup"]
        assert r["backward_speedup"] == r["backward"]["speedup"]
    # every printed speed-up names its baseline, and none reads "0.0x"
    lines = [ln for ln in out.splitlines() if ln.startswith("(")]
    assert len(lines) == 4
    assert all(" than " in ln for ln in lines)
    assert "0.0x" not in out and " 0x" not in out
    slower = any(c["speedup"] < 1 for _, c in comparisons)
    assert ("note" in data) == slower
    if slower:
        assert data["note"] in out and "bench gpu" in data["note"]


def test_tiny_run_agrees_with_the_loops(tiny_run):
    _, data, _ = tiny_run
    eps = float(np.finfo(np.float32).eps)
    assert {(r["L"], r["w"]) for r in data["a_mlp_grid"]} == {(16, 1), (16, 4), (64, 1), (64, 4)}
    for r in data["a_mlp_grid"]:
        assert r["status"] == "CONVERGED"
        assert r["state_rel_err"] < 1e3 * eps and r["grad_rel_err"] < 1e4 * eps
        assert r["baseline_rel_err"] < 1e3 * eps  # the baselines compute the same thing
    res = data["b_resnet_digits"]
    assert res["accuracy_gap"] <= 0.02
    curves = res["parallel"]["curves"]
    assert len(curves["loss"]) == res["parallel"]["steps"] == len(curves["time_s"])
    assert np.all(np.diff(curves["time_s"]) > 0)
    ddpm = data["c_digits_ddpm"]
    assert ddpm["status"] == "CONVERGED"
    assert ddpm["max_abs_diff"] <= 1e3 * eps and ddpm["lean_loop_max_abs_diff"] <= 1e3 * eps
    gru = data["d_gru_long_sequence"]
    assert gru["max_abs_diff"] <= 1e3 * eps
    assert [r["T"] for r in gru["sweep"]] == [16, 64, 256]
    assert all(r["status"] == "CONVERGED" for r in gru["sweep"])


def test_compare_picks_the_fastest_and_keeps_the_skipped():
    r = compare({"loop": 3.0, "compiled": 1.5, "graph": "needs a CUDA device"}, 0.75)
    assert r["baseline"] == "compiled" and r["speedup"] == 2.0
    assert r["skipped"] == [{"name": "graph", "reason": "needs a CUDA device"}]
    with pytest.raises(ValueError, match="baselines"):
        compare({"graph": "needs a CUDA device"}, 1.0)


@pytest.mark.parametrize("x", [123.4, 12.0, 3.14159, 1.0, 0.5, 0.049, 0.0123, 0.00042])
def test_speedups_are_never_printed_as_zero(x):
    text = format_speedup(x)
    value = float(text.rstrip("x"))
    assert value > 0 and math.isclose(value, x, rel_tol=0.06), text
    assert ("faster" in speedup_text(x, "b")) == (x >= 1)
    assert speedup_text(x, "the loop").endswith("than the loop")


def test_text_colour_by_luminance():
    cmap = pytest.importorskip("matplotlib").colormaps["RdBu"]
    assert text_colour(cmap(0.0)) == "white"    # dark red
    assert text_colour(cmap(1.0)) == "white"    # dark blue
    assert text_colour(cmap(0.5)) == "black"    # near white, the 1x centre
    assert text_colour((1.0, 1.0, 0.0, 1.0)) == "black"  # yellow
    assert text_colour((0.0, 0.0, 0.0, 1.0)) == "white"

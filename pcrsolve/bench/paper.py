"""The paper's experiments as functions: ``python -m pcrsolve bench paper`` and examples/.

(a) :func:`mlp_speedup_grid` — tanh MLP forward and backward speed-ups over a grid of
    depths ``L`` and widths ``w`` (the paper's heatmaps; :func:`plot_grid`);
(b) :func:`resnet_digits` — a deep residual network trained on scikit-learn's bundled
    digits with parallel forward and backward, against the same network trained
    sequentially from the same initialisation (:func:`plot_resnet`);
(c) :func:`digits_ddpm` — a small denoiser trained on the digits, DDPM sampled in parallel
    and sequentially with the same noise (:func:`plot_ddpm`);
(d) :func:`gru_long_sequence` — a GRU over a long sequence against ``torch.nn.GRU`` and a
    ``GRUCell`` loop, and Newton iterations against the sequence length (:func:`plot_gru`).

Every speed-up is against the *fastest* sequential implementation timed in the same
process (:func:`compare`): each experiment times several baselines (e.g. the eager loop
under ``torch.no_grad`` with preallocated outputs, and on CUDA the same loop captured in a
CUDA graph), and the JSON and the printed lines name the one that won. Times are medians
of ``repeat`` runs after one warm-up run.

``examples/`` holds a script per experiment with more options and output.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .baselines import adjoint_baselines, mlp_baselines
from .harness import Workspace, machine_description, relative_error, suite

__all__ = [
    "SIZES",
    "compare",
    "ddpm_loop",
    "digits_ddpm",
    "format_speedup",
    "gru_cell_loop",
    "gru_long_sequence",
    "machine_label",
    "mlp_loops",
    "mlp_speedup_grid",
    "plot_ddpm",
    "plot_grid",
    "plot_gru",
    "plot_resnet",
    "progress",
    "resnet_digits",
    "slower_note",
    "speedup_text",
    "text_colour",
    "train_digits_denoiser",
]

#: Problem sizes of ``bench paper --size``: (a) grid, (b) network and training, (c) DDPM
#: ``T``/training steps/samples, (d) GRU length and the lengths of the iteration sweep.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"lengths": [16, 64], "widths": [1, 4], "repeat": 1,
             "depth": 8, "epochs": 1, "max_steps": 6, "eval_every": 3,
             "ddpm": (16, 30, 4), "gru_T": 256, "gru_sweep": [16, 64, 256]},
    "small": {"lengths": [16, 64, 256], "widths": [1, 4], "repeat": 1,
              "depth": 16, "epochs": 1, "max_steps": None, "eval_every": 5,
              "ddpm": (100, 200, 8), "gru_T": 1024, "gru_sweep": [64, 256, 1024, 4096]},
    "medium": {"lengths": [2**k for k in range(4, 13, 2)], "widths": [1, 2, 4, 8, 16],
               "repeat": None, "depth": 64, "epochs": 3, "max_steps": None, "eval_every": 10,
               "ddpm": (1000, 2000, 64), "gru_T": 1 << 14,
               "gru_sweep": [2**k for k in range(6, 15, 2)]},
    "full": {"lengths": [2**k for k in range(4, 15)], "widths": [2**k for k in range(8)],
             "repeat": None, "depth": 64, "epochs": 3, "max_steps": None, "eval_every": 10,
             "ddpm": (1000, 2000, 64), "gru_T": None,  # 2**20 on CUDA, 2**14 on a CPU
             "gru_sweep": [2**k for k in range(6, 21, 2)]},
}

#: Why pcrsolve loses on a small CPU, printed once under the results when it does.
SLOWER_WHY = (
    "slower here because Newton-PCR does more total work than the loop (iterations x "
    "O(log L)-depth solves over all steps) to cut the depth of L dependent steps; that pays "
    "on wide hardware (a GPU), not on {cores} CPU cores: `python -m pcrsolve bench gpu` is "
    "where the speed targets are judged."
)


# -- helpers shared by the experiments and the examples ---------------------------------------
def progress(iterable: Iterable[Any], desc: str, enabled: bool = True,
             total: int | None = None) -> Iterable[Any]:
    """``iterable`` wrapped in a tqdm bar on stderr (``leave=False``), if tqdm is installed.

    Parameters
    ----------
    iterable : iterable
    desc : str
        The bar's label.
    enabled : bool, default True
        False returns ``iterable`` unchanged.
    total : int, optional
        Length, when ``iterable`` has none.

    Returns
    -------
    iterable
        The same items. The bar is removed when the loop ends, so results printed after
        it are never interleaved with it.
    """
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr,
                dynamic_ncols=True)


def machine_label(device: str = "cpu") -> str:
    """A short name of the hardware for figure titles: the CPU model and core count, or the
    GPU's name."""
    parts = dict(p.split(": ", 1) for p in machine_description("torch", device).split("; ")
                 if ": " in p)
    if "GPU" in parts:
        return f"GPU {parts['GPU']}"
    return f"CPU {parts.get('CPU', 'unknown')} ({os.cpu_count()} cores)"


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], repeat: int, device: Any) -> tuple[Any, float]:
    """One warm-up run, then the median wall time of ``repeat`` runs (device synchronised)."""
    out = fn()
    times = []
    for _ in range(max(1, repeat)):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def _time_gradient(loss: Any, params: list[Any], repeat: int, device: Any) -> tuple[Any, float]:
    """Median time of ``d loss / d params`` (the graph is kept for the repeats)."""
    import torch

    return _median_time(lambda: torch.autograd.grad(loss, params, retain_graph=True), repeat,
                        device)


def _cuda_graphed(fn: Callable[[], Any], device: str) -> Callable[[], Any] | str:
    """``fn`` (reading fixed input tensors) captured in a CUDA graph, or why it cannot be.

    Returns
    -------
    callable or str
        A function that replays the graph and returns the (static) output tensor; or the
        reason it is skipped (no CUDA device, capture failed).
    """
    import torch

    if torch.device(device).type != "cuda":
        return "needs a CUDA device"
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = fn()
    except Exception as exc:  # a baseline that cannot run is reported, not fatal
        return f"capture failed: {type(exc).__name__}: {exc}"

    def replay() -> Any:
        graph.replay()
        return out

    return replay


def compare(baselines: dict[str, float | str], contender_s: float) -> dict[str, Any]:
    """The speed-up of one pcrsolve time against the fastest sequential baseline.

    Parameters
    ----------
    baselines : dict
        Baseline name -> median seconds, or -> a string saying why it was skipped.
    contender_s : float
        pcrsolve's median seconds.

    Returns
    -------
    dict
        ``baselines`` (``[{"name", "median_s"}]``, the ones that ran), ``skipped``
        (``[{"name", "reason"}]``), ``baseline`` (the fastest one's name), ``baseline_s``,
        ``pcrsolve_s`` and ``speedup = baseline_s / pcrsolve_s``.

    Examples
    --------
    >>> r = compare({"loop": 2.0, "compiled loop": 1.0, "graph": "needs a CUDA device"}, 0.5)
    >>> r["baseline"], r["speedup"]
    ('compiled loop', 2.0)
    """
    ran = [{"name": k, "median_s": float(v)} for k, v in baselines.items()
           if not isinstance(v, str)]
    if not ran:
        raise ValueError("`baselines`: no baseline ran; got only skipped ones "
                         f"{list(baselines)}")
    skipped = [{"name": k, "reason": v} for k, v in baselines.items() if isinstance(v, str)]
    best = min(ran, key=lambda r: r["median_s"])
    return {"baselines": ran, "skipped": skipped, "baseline": best["name"],
            "baseline_s": best["median_s"], "pcrsolve_s": float(contender_s),
            "speedup": best["median_s"] / contender_s if contender_s > 0 else math.inf}


def format_speedup(x: float) -> str:
    """A speed-up as text with enough digits to be read: ``"12x"``, ``"1.8x"``, ``"0.31x"``,
    ``"0.012x"`` (never ``"0.0x"``)."""
    if not math.isfinite(x):
        return f"{x}x"
    if x >= 9.95:
        return f"{x:.0f}x"
    if x >= 0.995:
        return f"{x:.1f}x"
    return f"{x:.2g}x"


def speedup_text(x: float, baseline: str) -> str:
    """``"3.1x faster than BASELINE"`` or ``"4.2x slower than BASELINE"``."""
    if x >= 1.0:
        return f"{format_speedup(x)} faster than {baseline}"
    return f"{format_speedup(1.0 / x)} slower than {baseline}"


def text_colour(rgba: tuple[float, ...]) -> str:
    """``"black"`` or ``"white"``, whichever contrasts more with a cell of colour ``rgba``.

    Uses the WCAG relative luminance ``Y`` of the sRGB colour: black text on cells with
    ``Y > 0.179`` (where black's contrast ratio beats white's), white otherwise.
    """
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(what: str, device: str, dtype: str) -> str:
    import torch

    return f"{what}\n{machine_label(device)}, torch {torch.__version__} on {device}, {dtype}"


# -- (a) MLP speed-ups over depth and width ---------------------------------------------------
def _mlp_parts(W: Any, b: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Step and analytic Jacobian of ``x_l = tanh(W_l x_{l-1} + b_l)`` (vectorized)."""
    import torch

    def step(x: Any, l: Any) -> Any:
        return torch.tanh(torch.matmul(W[l], x[..., None])[..., 0] + b[l])

    def jacobian(x: Any, l: Any) -> Any:
        return (1.0 - step(x, l) ** 2)[..., None] * W[l]

    return step, jacobian


def mlp_loops(W: Any, b: Any, x0: Any) -> dict[str, Callable[[], Any]]:
    """The sequential forward passes of ``x_l = tanh(W_l x_{l-1} + b_l)`` a user would write.

    Parameters
    ----------
    W : torch.Tensor, shape (L, w, w)
    b : torch.Tensor, shape (L, w)
    x0 : torch.Tensor, shape (B, w)

    Returns
    -------
    dict of callables
        Each returns the states ``(B, L, w)``. ``"preallocated"``: one output buffer,
        ``addmm`` and ``tanh_`` written into it in place, weights split into per-layer views
        once (like a model's parameter list); ``"stacked"``: the plain loop
        (``tanh(x @ W_l.T + b_l)``, list, ``stack``), which autograd can follow.
    """
    import torch

    Wt = [m.detach() for m in W.transpose(1, 2).unbind(0)]
    bs = [v.detach() for v in b.unbind(0)]
    L, B, w = W.shape[0], x0.shape[0], W.shape[1]

    def preallocated() -> Any:
        buf = torch.empty(L, B, w, dtype=x0.dtype, device=x0.device)
        x = x0
        for bl, Wl, o in zip(bs, Wt, buf.unbind(0), strict=True):
            torch.addmm(bl, x, Wl, out=o)
            torch.tanh_(o)
            x = o
        return buf.transpose(0, 1)

    def stacked(W: Any = W, b: Any = b) -> Any:
        out, x = [], x0
        for l in range(L):
            x = torch.tanh(torch.addmm(b[l], x, W[l].T))
            out.append(x)
        return torch.stack(out, dim=1)

    return {"preallocated": preallocated, "stacked": stacked}


#: baseline names of experiment (a)
MLP_LOOP = "eager loop (no_grad, preallocated)"
MLP_LOOP_STACKED = "eager loop (no_grad, list + stack)"
MLP_LOOP_GRAPH = "eager loop in a CUDA graph"


def mlp_speedup_grid(
    lengths: list[int], widths: list[int], *, batch: int = 8, device: str = "cpu",
    dtype: str = "float32", repeat: int = 3, tol: float | None = 1e-5, seed: int = 0,
    progress_bar: bool = False,
) -> list[dict[str, Any]]:
    """Experiment (a): forward/backward speed-ups of Newton-PCR over the fastest loop.

    For each ``(L, w)`` a random tanh MLP ``x_l = tanh(W_l x_{l-1} + b_l)`` with
    ``W_l ~ N(0, 1/w)`` runs on a batch of inputs. Forward: :func:`pcrsolve.solve`
    (analytic Jacobian) against the eager loop under ``torch.no_grad`` (preallocated
    output, in-place ``addmm``/``tanh_``; the plain list-and-stack loop; on CUDA the
    preallocated loop captured in a CUDA graph) and every contender of
    :func:`pcrsolve.bench.baselines.mlp_baselines` (numba, Python-float, jax loops where
    they apply; compilation in the untimed warm-up), the fastest of which is the baseline.
    Backward: the adjoint solve against
    :func:`pcrsolve.bench.baselines.adjoint_baselines` (autograd through the eager loop,
    the reverse loop of VJPs).

    Parameters
    ----------
    lengths, widths : list of int
        The grid.
    batch : int, default 8
    device : str, default "cpu"
    dtype : {"float32", "float64"}
    repeat : int, default 3
        Timed runs per measurement (median, after one warm-up run).
    tol : float, optional
        Newton tolerance.
    seed : int, default 0
    progress_bar : bool, default False
        Show a progress bar on stderr.

    Returns
    -------
    list of dict
        One record per cell: ``L``, ``w``; ``forward`` and ``backward``, each a
        :func:`compare` record (baselines, the fastest one's name, speed-up);
        ``forward_speedup``/``backward_speedup`` (the same numbers), iterations, status,
        the maximal relative differences of states and gradients against the loop, and
        ``baseline_rel_err``, the largest difference of any other sequential contender.
    """
    import torch

    from ..newton import solve

    dt = getattr(torch, dtype)
    records = []
    cells = [(L, w) for L in lengths for w in widths]
    for L, w in progress(cells, "(a) MLP grid", progress_bar):
        g = torch.Generator().manual_seed(seed * 1_000_003 + L * 1000 + w)
        W = (torch.randn(L, w, w, generator=g, dtype=dt) / math.sqrt(w)).to(device)
        b = (0.5 * torch.randn(L, w, generator=g, dtype=dt)).to(device)
        x0 = torch.randn(batch, w, generator=g, dtype=dt).to(device)
        W.requires_grad_(True)
        b.requires_grad_(True)
        step, jac = _mlp_parts(W, b)
        loops = mlp_loops(W, b, x0)

        ws = Workspace("torch", device, dtype)
        Wn, bn, xn = (t.detach().cpu().double().numpy() for t in (W, b, x0))
        fwd: dict[str, float | str] = {}
        with torch.no_grad():
            ref, fwd[MLP_LOOP] = _median_time(loops["preallocated"], repeat, device)
            ref = ref.clone()
            _, fwd[MLP_LOOP_STACKED] = _median_time(loops["stacked"], repeat, device)
            graphed = _cuda_graphed(loops["preallocated"], device)
            fwd[MLP_LOOP_GRAPH] = graphed if isinstance(graphed, str) else \
                _median_time(graphed, repeat, device)[1]
            # every other sequential contender of this machine (numba, float, jax loops)
            base_err = 0.0  # every contender must compute the same states
            ref_np = ref.double().cpu().numpy()
            for base in mlp_baselines(ws, Wn, bn, xn):
                states, fwd[base.name] = _median_time(base.run, repeat, device)
                base_err = max(base_err, relative_error(base.to_numpy(states), ref_np))
            sol, t_par = _median_time(lambda step=step, jac=jac, x0=x0, L=L: solve(
                step, x0, L, jacobian=jac, tol=tol, throw=False), repeat, device)
        weight = torch.randn(ref.shape, generator=g, dtype=dt).to(device)
        bwd: dict[str, float | str] = {}
        for base in adjoint_baselines(ws, W, b, x0, weight):
            bwd[base.name] = _median_time(base.run, repeat, device)[1]
        loss_par = (solve(step, x0, L, jacobian=jac, tol=tol, params=[W, b]).states
                    * weight).sum()
        grads_par, tb_par = _time_gradient(loss_par, [W, b], repeat, device)
        grads_ref = torch.autograd.grad((loops["stacked"]() * weight).sum(), [W, b])
        scale = max(float(ref.abs().max()), 1e-30)
        gdiff = max(float((a - c).abs().max() / max(float(c.abs().max()), 1e-30))
                    for a, c in zip(grads_par, grads_ref, strict=True))
        forward = compare(fwd, t_par)
        backward = compare(bwd, tb_par)
        records.append({
            "L": L, "w": w, "batch": batch, "device": device, "dtype": dtype,
            "forward": forward, "backward": backward,
            "forward_speedup": forward["speedup"], "backward_speedup": backward["speedup"],
            "iterations": sol.iterations, "status": sol.status.name,
            "state_rel_err": float((sol.states - ref).abs().max()) / scale,
            "baseline_rel_err": base_err,
            "grad_rel_err": gdiff,
        })
    return records


def plot_grid(records: list[dict[str, Any]], path: str, *, title: str | None = None) -> None:
    """Draw forward and backward speed-ups as two heatmaps (L across, w up) to ``path``.

    The colour is ``log2`` of the speed-up on a diverging map centred on 1x (blue: faster
    than the baseline, red: slower; the same scale in both panels); every cell is labelled
    with its speed-up in black or white, whichever reads better on the cell's colour.

    Parameters
    ----------
    records : list of dict
        :func:`mlp_speedup_grid`'s output.
    path : str
        The PNG to write.
    title : str, optional
        The figure's title (default: the experiment, without the machine).
    """
    from matplotlib.colors import Normalize

    plt = _pyplot()
    Ls = sorted({r["L"] for r in records})
    ws = sorted({r["w"] for r in records})
    grids = {}
    for key in ("forward", "backward"):
        grid = np.full((len(ws), len(Ls)), np.nan)
        for r in records:
            grid[ws.index(r["w"]), Ls.index(r["L"])] = r[f"{key}_speedup"]
        grids[key] = grid
    lim = max(1.0, *(float(np.nanmax(np.abs(np.log2(g)))) for g in grids.values()))
    norm, cmap = Normalize(-lim, lim), plt.get_cmap("RdBu")
    fig, axes = plt.subplots(1, 2, figsize=(max(10.0, 1.6 * len(Ls) + 4), 0.5 * len(ws) + 3.2),
                             squeeze=False, layout="constrained")
    names = {"forward": sorted({r["forward"]["baseline"] for r in records}),
             "backward": sorted({r["backward"]["baseline"] for r in records})}
    heads = {"forward": "forward: pcrsolve Newton-PCR", "backward": "backward: pcrsolve adjoint"}
    im = None
    for ax, key in zip(axes[0], ("forward", "backward"), strict=True):
        grid = grids[key]
        im = ax.imshow(np.log2(grid), origin="lower", cmap=cmap, norm=norm, aspect="auto")
        for i in range(len(ws)):
            for j in range(len(Ls)):
                v = grid[i, j]
                if not np.isnan(v):
                    ax.text(j, i, format_speedup(v), ha="center", va="center", fontsize=8,
                            color=text_colour(cmap(norm(math.log2(v)))))
        ax.set_xticks(range(len(Ls)), [f"$2^{{{int(math.log2(v))}}}$" for v in Ls])
        ax.set_yticks(range(len(ws)), [str(v) for v in ws])
        ax.set_xlabel("L (layers)")
        ax.set_ylabel("w (width)")
        ax.set_title(f"{heads[key]}\nvs fastest of: {', '.join(names[key])}", fontsize=9)
    step = max(1, math.ceil(lim / 5))  # at most about 11 labelled ticks
    ticks = np.arange(-math.floor(lim / step), math.floor(lim / step) + 1) * step
    cbar = fig.colorbar(im, ax=axes[0].tolist(), ticks=ticks)
    cbar.ax.set_yticklabels([format_speedup(2.0**t) for t in ticks])
    cbar.set_label("speed-up over the fastest sequential baseline\n(blue: faster, red: slower)")
    fig.suptitle(title or "MLP speed-ups", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- (b) training a deep residual network on the digits ---------------------------------------
def _digits(seed: int, dtype: Any, device: str) -> tuple[Any, Any, Any, Any]:
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    X = data.data.astype(np.float64) / 16.0
    y = data.target
    perm = np.random.default_rng(seed).permutation(len(X))
    cut = int(0.8 * len(X))
    tr, te = perm[:cut], perm[cut:]

    def t(a: np.ndarray, dt: Any = dtype) -> Any:
        return torch.as_tensor(a, dtype=dt, device=device)

    return t(X[tr]), t(y[tr], torch.int64), t(X[te]), t(y[te], torch.int64)


#: baseline name of experiment (b)
RESNET_BASELINE = "nn.Sequential training step (eager loop + autograd)"


def resnet_digits(
    depth: int = 64, width: int = 16, *, epochs: int = 3, batch_size: int = 64,
    lr: float = 3e-3, seed: int = 0, device: str = "cpu", dtype: str = "float32",
    max_steps: int | None = None, eval_every: int = 10, progress_bar: bool = False,
) -> dict[str, Any]:
    """Experiment (b): train a deep residual network on the digits, parallel vs sequential.

    The network is ``Linear(64, w) -> tanh -> [depth residual blocks x + tanh(W x + b)]
    -> Linear(w, 10)``. Two copies start from the same initialisation and see the same
    mini-batches; one runs its residual stack with ``nn.Sequential`` (the eager loop, the
    baseline), the other with :class:`pcrsolve.adapters.torch.ParallelSequential`
    (Newton-PCR forward, adjoint backward). Adam, cross-entropy.

    Parameters
    ----------
    depth, width : int
        Residual blocks and their width.
    epochs : int, default 3
    batch_size : int, default 64
    lr : float, default 3e-3
    seed : int, default 0
    device : str, default "cpu"
    dtype : {"float32", "float64"}
    max_steps : int, optional
        Stop each training after this many steps (for quick checks).
    eval_every : int, default 10
        Test accuracy is measured every ``eval_every`` steps (not timed) for the curves.
    progress_bar : bool, default False
        Show a progress bar on stderr.

    Returns
    -------
    dict
        Per network (``"sequential"``, ``"parallel"``): test accuracy, median time per
        training step, final loss, Newton iterations (parallel) and ``curves`` (``step``,
        ``loss``, ``time_s`` cumulative training time; ``eval_step``, ``test_accuracy``);
        ``accuracy_gap``; ``step`` (a :func:`compare` record) and ``step_speedup``.
    """
    import torch
    from torch import nn

    from ..adapters.torch import ParallelSequential, Residual

    dt = getattr(torch, dtype)
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = _digits(seed, dt, device)
    blocks = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        with torch.no_grad():
            lin.weight.mul_(0.5 / math.sqrt(depth / 16))
        blocks.append(Residual(nn.Sequential(lin, nn.Tanh())))
    stem, head = nn.Linear(64, width), nn.Linear(width, 10)
    nets = {}
    for kind in ("sequential", "parallel"):
        body = copy.deepcopy(blocks)
        mid = nn.Sequential(*body) if kind == "sequential" else ParallelSequential(body)
        nets[kind] = nn.Sequential(copy.deepcopy(stem), nn.Tanh(), mid,
                                   copy.deepcopy(head)).to(device=device, dtype=dt)
    results: dict[str, Any] = {"depth": depth, "width": width, "epochs": epochs,
                               "device": device, "dtype": dtype}
    order = np.random.default_rng(seed + 1)
    batches = [order.permutation(len(Xtr)) for _ in range(epochs)]
    starts = [(e, s) for e in range(epochs) for s in range(0, len(Xtr), batch_size)]
    if max_steps is not None:
        starts = starts[:max_steps]

    def accuracy(net: Any) -> float:
        with torch.no_grad():
            return float((net(Xte).argmax(-1) == yte).to(torch.float64).mean())

    for kind, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        step_times, iters, losses = [], [], []
        curves: dict[str, list[Any]] = {"step": [], "loss": [], "time_s": [], "eval_step": [],
                                        "test_accuracy": []}
        for k, (epoch, start) in enumerate(progress(starts, f"(b) {kind} training",
                                                    progress_bar), 1):
            idx = torch.as_tensor(batches[epoch][start:start + batch_size], device=device)
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            _sync(device)
            step_times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            if kind == "parallel":
                iters.append(net[2].last_solution.iterations)
            curves["step"].append(k)
            curves["loss"].append(losses[-1])
            curves["time_s"].append(sum(step_times))
            if k % eval_every == 0 or k == len(starts):
                curves["eval_step"].append(k)
                curves["test_accuracy"].append(accuracy(net))
        # the first step carries one-off costs (allocations, first autograd graph)
        timed = step_times[1:] or step_times
        results[kind] = {"test_accuracy": curves["test_accuracy"][-1],
                         "step_time_s": statistics.median(timed), "final_loss": losses[-1],
                         "steps": len(starts), "curves": curves}
        if iters:
            results[kind]["newton_iterations_mean"] = float(np.mean(iters))
            results[kind]["newton_iterations_max"] = int(np.max(iters))
    results["accuracy_gap"] = abs(results["parallel"]["test_accuracy"]
                                  - results["sequential"]["test_accuracy"])
    results["step"] = compare({RESNET_BASELINE: results["sequential"]["step_time_s"]},
                              results["parallel"]["step_time_s"])
    results["step_speedup"] = results["step"]["speedup"]
    return results


def plot_resnet(res: dict[str, Any], path: str, *, title: str | None = None) -> None:
    """Training curves of :func:`resnet_digits`: loss vs step, test accuracy vs step, loss
    vs training time, sequential and parallel overlaid; written to ``path`` (PNG)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    style = {"sequential": {"color": "tab:gray", "lw": 2.2, "label": "sequential "
                            "(nn.Sequential)"},
             "parallel": {"color": "tab:blue", "lw": 1.2, "ls": "--",
                          "label": "parallel (pcrsolve ParallelSequential)"}}
    for kind in ("sequential", "parallel"):
        c = res[kind]["curves"]
        axes[0].plot(c["step"], c["loss"], **style[kind])
        axes[1].plot(c["eval_step"], c["test_accuracy"], marker="o", ms=3, **style[kind])
        axes[2].plot(c["time_s"], c["loss"], **style[kind])
    axes[0].set(xlabel="training step", ylabel="training loss (cross-entropy)",
                title="loss vs step")
    axes[1].set(xlabel="training step", ylabel="test accuracy",
                title=f"test accuracy (gap at the end {res['accuracy_gap']:.3f})")
    st = res["step"]
    axes[2].set(xlabel="training time (s, evaluation excluded)",
                ylabel="training loss (cross-entropy)",
                title="loss vs training time")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    it = res["parallel"].get("newton_iterations_mean")
    sub = f"{res['depth']} residual blocks of width {res['width']}, {res['epochs']} epoch(s)" + (
        f", {it:.1f} Newton iterations per forward on average" if it is not None else "") + (
        f"; parallel training step {speedup_text(st['speedup'], st['baseline'])}")
    fig.suptitle(f"{title or 'ResNet on the digits'}\n{sub}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- (c) DDPM on the digits ------------------------------------------------------------------
def _denoiser_class() -> Any:
    import torch

    class DigitsDenoiser(torch.nn.Module):
        """``eps(x, t)``: an MLP on the image and a sinusoidal embedding of the timestep.

        Vectorized as :mod:`pcrsolve.adapters.diffusion` expects: ``x`` of shape
        ``(..., n, 64)`` and ``t`` of shape ``(n,)``; the time embedding ``(n, hidden)``
        broadcasts over the leading dims.
        """

        def __init__(self, dim: int = 64, hidden: int = 256, emb: int = 32) -> None:
            super().__init__()
            self.emb = emb
            self.inp = torch.nn.Linear(dim, hidden)
            self.time = torch.nn.Linear(emb, hidden)
            self.mid = torch.nn.Linear(hidden, hidden)
            self.out = torch.nn.Linear(hidden, dim)

        def embed(self, t: Any) -> Any:
            half = self.emb // 2
            freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
            ang = t.to(self.inp.weight.dtype)[:, None] * freqs.to(self.inp.weight.dtype)
            return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)

        def forward(self, x: Any, t: Any) -> Any:
            h = torch.nn.functional.silu(self.inp(x) + self.time(self.embed(t)))
            h = torch.nn.functional.silu(self.mid(h))
            return self.out(h)

    return DigitsDenoiser


def train_digits_denoiser(data: Any, schedule: Any, steps: int, seed: int, *,
                          progress_bar: bool = False) -> Any:
    """Standard DDPM training of a small MLP noise predictor on the digits.

    Parameters
    ----------
    data : torch.Tensor, shape (N, 64)
        Images scaled to [-1, 1].
    schedule : pcrsolve.adapters.diffusion.NoiseSchedule
    steps : int
        Adam steps on mini-batches of 256 (noise of ``x_t = sqrt(abar) x0 + sqrt(1-abar) e``).
    seed : int
    progress_bar : bool, default False
        Show a progress bar on stderr.

    Returns
    -------
    torch.nn.Module
        ``eps(x, t)`` with gradients switched off.
    """
    import torch

    torch.manual_seed(seed)
    model = _denoiser_class()().to(device=data.device, dtype=data.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    abar = torch.tensor(schedule.alpha_bars, dtype=data.dtype, device=data.device)
    for _ in progress(range(steps), "training the denoiser", progress_bar):
        x0 = data[torch.randint(len(data), (256,), device=data.device)]
        t = torch.randint(1, schedule.T + 1, (256,), device=data.device)
        e = torch.randn_like(x0)
        a = abar[t - 1][:, None]
        loss = torch.mean((model(a.sqrt() * x0 + (1 - a).sqrt() * e, t) - e) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.requires_grad_(False)
    return model


def ddpm_loop(model: Any, x_T: Any, schedule: Any, z: Any) -> Callable[[], Any]:
    """The lean sequential DDPM sampler, one denoiser call per step.

    Coefficients are Python floats, timesteps prepared once, the output preallocated.

    Parameters
    ----------
    model : callable
        ``eps(x, t)`` as :func:`pcrsolve.adapters.diffusion.sample` takes it.
    x_T : torch.Tensor, shape (n, D)
    schedule : pcrsolve.adapters.diffusion.NoiseSchedule
    z : torch.Tensor, shape (n, T, D)
        The pre-sampled noise, as :func:`~pcrsolve.adapters.diffusion.sample` takes it.

    Returns
    -------
    callable
        ``loop() -> (n, T, D)``: the trajectory, laid out as ``sample``'s ``states``.
    """
    import torch

    from ..adapters.diffusion import plan_sampler

    plan = plan_sampler(schedule, "ddpm")
    S, (n, D) = plan.steps, x_T.shape
    ts = torch.tensor(plan.timesteps, dtype=torch.int64, device=x_T.device)
    t_steps = [ts[i:i + 1] for i in range(S)]
    zs = z.unbind(-2)

    def loop() -> Any:
        out = torch.empty(n, S, D, dtype=x_T.dtype, device=x_T.device)
        x = x_T
        for i, o in enumerate(out.unbind(1)):
            eps = model(x[:, None, :], t_steps[i])[:, 0, :]
            torch.add(x * plan.scale[i], eps, alpha=plan.eps_coef[i], out=o)
            if plan.noise_coef[i] != 0.0:
                o.add_(zs[i], alpha=plan.noise_coef[i])
            x = o
        return out

    return loop


#: baseline names of experiment (c)
DDPM_LOOP = "sampling loop (no_grad, preallocated)"
DDPM_ADAPTER = "pcrsolve.adapters.diffusion.sample_sequential"
DDPM_GRAPH = "sampling loop in a CUDA graph"


def digits_ddpm(
    T: int = 1000, train_steps: int = 2000, samples: int = 64, *, device: str = "cpu",
    dtype: str = "float32", repeat: int = 1, seed: int = 0, progress_bar: bool = False,
) -> dict[str, Any]:
    """Experiment (c): DDPM sampling of the digits, Newton-PCR vs the fastest loop, same noise.

    A small MLP noise predictor is trained on the digits (:func:`train_digits_denoiser`),
    then ``samples`` images are drawn with ancestral DDPM from the same ``x_T`` and the
    same per-step noise: by :func:`pcrsolve.adapters.diffusion.sample` (the "gaussian"
    Jacobian) and by the sequential baselines (a lean loop, the adapter's reference loop,
    and on CUDA the lean loop in a CUDA graph).

    Parameters
    ----------
    T : int, default 1000
        Diffusion steps.
    train_steps : int, default 2000
        Adam steps of the denoiser's training.
    samples : int, default 64
    device : str, default "cpu"
    dtype : {"float32", "float64"}
    repeat : int, default 1
        Timed runs (median, after one warm-up run).
    seed : int, default 0
    progress_bar : bool, default False
        Show progress bars on stderr.

    Returns
    -------
    dict
        ``sampling`` (a :func:`compare` record), ``speedup``, ``iterations``, ``status``,
        ``max_abs_diff`` (final samples, parallel vs the adapter's loop), the samples of
        both (``samples_sequential``/``samples_parallel``, nested lists ``(n, 64)``) and a
        ``summary`` line.
    """
    import torch
    from sklearn.datasets import load_digits

    from ..adapters.diffusion import NoiseSchedule, sample, sample_sequential

    dt = getattr(torch, dtype)
    images = torch.as_tensor(load_digits().data / 8.0 - 1.0, dtype=dt, device=device)
    schedule = NoiseSchedule.linear(T)
    model = train_digits_denoiser(images, schedule, train_steps, seed, progress_bar=progress_bar)
    g = torch.Generator().manual_seed(seed + 1)
    x_T = torch.randn(samples, 64, generator=g, dtype=dt).to(device)
    z = torch.randn(samples, T, 64, generator=g, dtype=dt).to(device)
    base: dict[str, float | str] = {}
    lean = ddpm_loop(model, x_T, schedule, z)
    stages = ["lean loop", "adapter loop", "CUDA graph", "pcrsolve"]
    with torch.no_grad():
        for stage in progress(stages, "(c) DDPM sampling", progress_bar):
            if stage == "lean loop":
                lean_out, base[DDPM_LOOP] = _median_time(lean, repeat, device)
            elif stage == "adapter loop":
                seq, base[DDPM_ADAPTER] = _median_time(
                    lambda: sample_sequential(model, x_T, schedule, noise=z), repeat, device)
            elif stage == "CUDA graph":
                graphed = _cuda_graphed(lean, device)
                base[DDPM_GRAPH] = graphed if isinstance(graphed, str) else \
                    _median_time(graphed, repeat, device)[1]
            else:
                sol, t_par = _median_time(
                    lambda: sample(model, x_T, schedule, noise=z, throw=False), repeat, device)
    diff = float((sol.states[..., -1, :] - seq[..., -1, :]).abs().max())
    cmp = compare(base, t_par)
    return {"T": T, "samples": samples, "train_steps": train_steps, "sampling": cmp,
            "speedup": cmp["speedup"], "iterations": sol.iterations,
            "status": sol.status.name, "max_abs_diff": diff,
            "lean_loop_max_abs_diff": float((lean_out - seq).abs().max()),
            "samples_sequential": seq[..., -1, :].double().cpu().tolist(),
            "samples_parallel": sol.states[..., -1, :].double().cpu().tolist(),
            "summary": f"(c) DDPM on the digits, T={T}, {samples} samples: "
                       f"{speedup_text(cmp['speedup'], cmp['baseline'])}; "
                       f"{sol.iterations} Newton iterations, samples agree to {diff:.1e}"}


def plot_ddpm(res: dict[str, Any], path: str, *, title: str | None = None,
              max_samples: int = 32) -> None:
    """Grids of the sequential and the parallel samples of :func:`digits_ddpm`, side by
    side, with times and the Newton iteration count; written to ``path`` (PNG)."""
    plt = _pyplot()
    seq = np.asarray(res["samples_sequential"])[:max_samples]
    par = np.asarray(res["samples_parallel"])[:max_samples]
    n = len(seq)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig = plt.figure(layout="constrained", figsize=(2 * cols * 0.85 + 0.6, rows * 0.85 + 1.9))
    halves = fig.subfigures(1, 2, wspace=0.04)
    cmp = res["sampling"]
    heads = (
        f"sequential: {res['T']} denoiser calls\n{cmp['baseline']}\n{cmp['baseline_s']:.3g} s",
        f"parallel: pcrsolve Newton-PCR\n{res['iterations']} iterations ({res['status']})\n"
        f"{cmp['pcrsolve_s']:.3g} s, {speedup_text(cmp['speedup'], 'sequential')}",
    )
    for sub, data, text in zip(halves, (seq, par), heads, strict=True):
        axes = sub.subplots(rows, cols, squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                ax.imshow(np.clip(data[i], -1, 1).reshape(8, 8), cmap="gray_r", vmin=-1, vmax=1)
        sub.suptitle(text, fontsize=8.5)
    fig.suptitle(f"{title or 'DDPM samples of the digits'}\nsame x_T and noise; "
                 f"max |parallel - sequential| = {res['max_abs_diff']:.1e}", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- (d) a GRU over a long sequence ------------------------------------------------------------
def gru_cell_loop(cell: Any, u: Any, h0: Any) -> Callable[[], Any]:
    """``h_t = cell(u_t, h_{t-1})`` one step at a time, output preallocated.

    Parameters
    ----------
    cell : torch.nn.GRUCell (or any ``cell(u_t, h) -> h``)
    u : torch.Tensor, shape (B, T, I)
    h0 : torch.Tensor, shape (B, H)

    Returns
    -------
    callable
        ``loop() -> (B, T, H)``, the outputs ``h_1 .. h_T``.
    """
    import torch

    us = u.unbind(1)

    def loop() -> Any:
        out = torch.empty(*h0.shape[:-1], len(us), h0.shape[-1], dtype=h0.dtype,
                          device=h0.device)
        h = h0
        for ut, o in zip(us, out.unbind(-2), strict=True):
            h = cell(ut, h)
            o.copy_(h)
        return out

    return loop


#: baseline name of experiment (d)
GRU_CELL_LOOP = "GRUCell eager loop (no_grad, preallocated)"


def gru_long_sequence(
    T: int = 1 << 14, *, hidden: int = 8, input_size: int = 4, batch: int = 16,
    sweep: list[int] | None = None, device: str = "cpu", dtype: str = "float32",
    repeat: int = 3, seed: int = 0, hh_scale: float = 0.5, progress_bar: bool = False,
) -> dict[str, Any]:
    """Experiment (d): a GRU over ``T`` steps, pcrsolve vs ``torch.nn.GRU`` and a cell loop.

    ``weight_hh`` is scaled by ``hh_scale`` so that the recurrence contracts. The forward
    pass of :func:`pcrsolve.adapters.rnn.run_cell` is timed against ``torch.nn.GRU`` (its
    C++/cuDNN time loop) and a ``GRUCell`` loop, the fastest being the baseline; then the
    Newton iterations are counted for every length in ``sweep``.

    Parameters
    ----------
    T : int
        Sequence length of the timed run.
    hidden, input_size, batch : int
    sweep : list of int, optional
        Lengths at which to count iterations (default ``[T]``).
    device : str, default "cpu"
    dtype : {"float32", "float64"}
    repeat : int, default 3
    seed : int, default 0
    hh_scale : float, default 0.5
    progress_bar : bool, default False

    Returns
    -------
    dict
        ``forward`` (a :func:`compare` record), ``speedup``, ``iterations``, ``status``,
        ``max_abs_diff``; ``trace`` (batch element 0: ``t``, the sequential and parallel
        outputs of the first hidden units for the first 256 steps, and the largest error
        over batch and units at every step); ``sweep`` (``T``, ``iterations``, ``status``,
        ``time_s``); ``summary``.
    """
    import torch

    from ..adapters.rnn import run_cell

    dt = getattr(torch, dtype)
    torch.manual_seed(seed)
    cell = torch.nn.GRUCell(input_size, hidden, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_hh.mul_(hh_scale)  # a contracting recurrence
    cell = cell.to(device=device, dtype=dt)
    gru = torch.nn.GRU(input_size, hidden, batch_first=True, device=device, dtype=dt)
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(batch, T, input_size, generator=g, dtype=torch.float64).to(device, dt)
    h0 = torch.randn(batch, hidden, generator=g, dtype=torch.float64).to(device, dt)
    gru_name = "torch.nn.GRU (cuDNN)" if torch.device(device).type == "cuda" else \
        "torch.nn.GRU (ATen C++ time loop)"
    base: dict[str, float | str] = {}
    sweep = sorted({s for s in (sweep or [T]) if s <= T})
    rows = []
    stages = ["nn.GRU", "cell loop", "pcrsolve"] + [f"T={s}" for s in sweep]
    with torch.no_grad():
        for stage in progress(stages, "(d) GRU", progress_bar):
            if stage == "nn.GRU":
                ref, base[gru_name] = _median_time(lambda: gru(u, h0[None])[0], repeat, device)
            elif stage == "cell loop":
                _, base[GRU_CELL_LOOP] = _median_time(gru_cell_loop(cell, u, h0), repeat, device)
            elif stage == "pcrsolve":
                sol, t_par = _median_time(lambda: run_cell(cell, u, h0, throw=False), repeat,
                                          device)
            else:
                s = int(stage[2:])
                r, t_s = _median_time(lambda s=s: run_cell(cell, u[:, :s], h0, throw=False),
                                      1, device)
                rows.append({"T": s, "iterations": r.iterations, "status": r.status.name,
                             "time_s": t_s})
    err = (sol.outputs - ref).abs()
    diff = float(err.max())
    n_show = min(T, 256)
    cmp = compare(base, t_par)
    return {"T": T, "hidden": hidden, "batch": batch, "forward": cmp, "speedup": cmp["speedup"],
            "iterations": sol.iterations, "status": sol.status.name, "max_abs_diff": diff,
            "trace": {"t": list(range(1, n_show + 1)),
                      "sequential": ref[0, :n_show, :3].double().cpu().tolist(),
                      "parallel": sol.outputs[0, :n_show, :3].double().cpu().tolist(),
                      "abs_err": err.amax(dim=(0, 2)).double().cpu().tolist()},
            "sweep": rows,
            "summary": f"(d) GRU hidden {hidden}, batch {batch}, T={T}: "
                       f"{speedup_text(cmp['speedup'], cmp['baseline'])}; "
                       f"{sol.iterations} Newton iterations, outputs agree to {diff:.1e}"}


def plot_gru(res: dict[str, Any], path: str, *, title: str | None = None) -> None:
    """Figure of :func:`gru_long_sequence`: parallel and sequential outputs overlaid, the
    error along the sequence, and Newton iterations against ``T``; written to ``path``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    tr = res["trace"]
    seq, par = np.asarray(tr["sequential"]), np.asarray(tr["parallel"])
    for j in range(seq.shape[1]):
        c = f"C{j}"
        axes[0].plot(tr["t"], seq[:, j], color=c, lw=2.5, alpha=0.45,
                     label="sequential (nn.GRU)" if j == 0 else None)
        axes[0].plot(tr["t"], par[:, j], color=c, lw=1.0, ls="--",
                     label="parallel (pcrsolve)" if j == 0 else None)
    axes[0].set(xlabel="time step t", ylabel="hidden state h_t[j], j = 0, 1, 2",
                title=f"outputs, batch element 0, first {len(tr['t'])} steps")
    axes[0].legend(fontsize=8)
    err = np.maximum(np.asarray(tr["abs_err"]), np.finfo(np.float64).tiny)
    axes[1].semilogy(np.arange(1, len(err) + 1), err, lw=0.8)
    axes[1].set(xlabel="time step t", ylabel="max |parallel - sequential| over batch, units",
                title=f"agreement over all T = {res['T']} steps")
    Ts = [r["T"] for r in res["sweep"]]
    its = [r["iterations"] for r in res["sweep"]]
    axes[2].plot(Ts, its, marker="o")
    axes[2].set_xscale("log", base=2)
    axes[2].set_ylim(0, max([*its, 1]) + 2)
    axes[2].set(xlabel="sequence length T", ylabel="Newton iterations to converge",
                title="iterations vs sequence length")
    for ax in axes:
        ax.grid(alpha=0.3)
    cmp = res["forward"]
    fig.suptitle(f"{title or 'GRU over a long sequence'}\nhidden {res['hidden']}, batch "
                 f"{res['batch']}: pcrsolve {speedup_text(cmp['speedup'], cmp['baseline'])}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: the figures of ``bench paper --plot DIR``, one per experiment
FIGURES = {"a": "mlp_speedup_grid.png", "b": "resnet_training.png", "c": "ddpm_samples.png",
           "d": "gru_long_sequence.png"}


def slower_note(device: str) -> str:
    """The one line printed under the results when pcrsolve lost somewhere: why."""
    import torch

    if torch.device(device).type == "cuda":
        return ("note: where pcrsolve is slower, the problem is too small to fill the GPU; "
                "larger L, batch or --size full are where the parallel depth pays off.")
    return "note: pcrsolve is " + SLOWER_WHY.format(cores=os.cpu_count())


@suite("paper")
def run_paper(opts: Any) -> None:
    """``python -m pcrsolve bench paper``: experiments (a)-(d) at ``--size``; JSON + figures.

    Sizes are :data:`SIZES` (``tiny`` is a seconds-long check). Speed-ups are against the
    fastest sequential baseline of each measurement, which the output names.
    """
    import importlib.util
    import json

    if importlib.util.find_spec("torch") is None:  # pragma: no cover - depends on the env
        raise SystemExit("bench paper needs torch (pip install torch)")
    import torch

    if getattr(opts, "backend", "numpy") == "cupy":
        raise SystemExit("bench paper runs torch models (pass --device cuda for the GPU); "
                         "--backend cupy is not supported")
    device = opts.device or "cpu"
    size = SIZES[opts.size]
    repeat = size["repeat"] or opts.repeat
    dtype, seed = opts.dtype, opts.seed
    out: dict[str, Any] = {"machine": machine_description("torch", device), "size": opts.size,
                           "device": device, "dtype": dtype, "repeat": repeat}
    print(out["machine"])
    print(f"speed-ups: pcrsolve against the fastest sequential implementation timed in this "
          f"run (median of {repeat} run(s) after a warm-up)")
    if opts.plot:
        os.makedirs(opts.plot, exist_ok=True)
    figures: dict[str, str] = {}

    def figure(key: str, draw: Callable[..., None], data: Any, what: str) -> None:
        if opts.plot:
            path = os.path.join(opts.plot, FIGURES[key])
            draw(data, path, title=_title(what, device, dtype))
            figures[key] = path

    speedups: list[float] = []
    grid = mlp_speedup_grid(size["lengths"], size["widths"], device=device, dtype=dtype,
                            repeat=repeat, seed=seed, progress_bar=True)
    out["a_mlp_grid"] = grid
    best_f = max(grid, key=lambda r: r["forward_speedup"])
    best_b = max(grid, key=lambda r: r["backward_speedup"])
    n_slow = sum(r["forward_speedup"] < 1 for r in grid)
    print(f"(a) MLP grid, {len(grid)} cells (L x w): best forward "
          f"{speedup_text(best_f['forward_speedup'], best_f['forward']['baseline'])} "
          f"(L={best_f['L']}, w={best_f['w']}; slower in {n_slow} of {len(grid)} cells); "
          f"best backward "
          f"{speedup_text(best_b['backward_speedup'], best_b['backward']['baseline'])} "
          f"(L={best_b['L']}, w={best_b['w']})")
    speedups += [r["forward_speedup"] for r in grid] + [r["backward_speedup"] for r in grid]
    figure("a", plot_grid, grid, "(a) MLP forward and backward speed-ups")

    res = resnet_digits(size["depth"], 16, epochs=size["epochs"], device=device, dtype=dtype,
                        seed=seed, max_steps=size["max_steps"], eval_every=size["eval_every"],
                        progress_bar=True)
    out["b_resnet_digits"] = res
    st = res["step"]
    print(f"(b) residual network, {res['depth']} blocks, {res['sequential']['steps']} training "
          f"steps: test accuracy sequential {res['sequential']['test_accuracy']:.4f} vs "
          f"parallel {res['parallel']['test_accuracy']:.4f}; training step "
          f"{speedup_text(st['speedup'], st['baseline'])}")
    speedups.append(st["speedup"])
    figure("b", plot_resnet, res, "(b) ResNet training on the digits, sequential vs parallel")

    T, train_steps, n = size["ddpm"]
    out["c_digits_ddpm"] = digits_ddpm(T, train_steps, n, device=device, dtype=dtype,
                                       seed=seed, progress_bar=True)
    print(out["c_digits_ddpm"]["summary"])
    speedups.append(out["c_digits_ddpm"]["speedup"])
    figure("c", plot_ddpm, out["c_digits_ddpm"], f"(c) DDPM on the digits, T = {T}")

    gru_T = size["gru_T"] or (1 << 20 if torch.device(device).type == "cuda" else 1 << 14)
    out["d_gru_long_sequence"] = gru_long_sequence(
        gru_T, sweep=size["gru_sweep"], device=device, dtype=dtype,
        repeat=1 if opts.size == "tiny" else max(repeat, 3),
        seed=seed, progress_bar=True)
    print(out["d_gru_long_sequence"]["summary"])
    speedups.append(out["d_gru_long_sequence"]["speedup"])
    figure("d", plot_gru, out["d_gru_long_sequence"], "(d) GRU over a long sequence")

    if any(s < 1 for s in speedups):
        out["note"] = slower_note(device)
        print(out["note"])
    out["figures"] = figures
    for path in figures.values():
        print(f"wrote {path}")
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(f"wrote {opts.json}")

"""The paper's experiments as functions: ``python -m pcrsolve bench paper`` and examples/.

(a) :func:`mlp_speedup_grid` — tanh MLP forward and backward speed-ups over a grid of
    depths ``L`` and widths ``w`` (the paper's heatmaps);
(b) :func:`resnet_digits` — a deep residual network trained on scikit-learn's bundled
    digits with parallel forward and backward, against the same network trained
    sequentially from the same initialisation;
(c) :func:`digits_ddpm` — a small denoiser trained on the digits, DDPM sampled in parallel
    and sequentially with the same noise;
(d) :func:`gru_long_sequence` — a GRU over a long sequence against ``torch.nn.GRU``.

``examples/`` holds a script per experiment with more options and output.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import numpy as np

from .harness import suite

__all__ = [
    "digits_ddpm",
    "gru_long_sequence",
    "mlp_speedup_grid",
    "plot_grid",
    "resnet_digits",
    "train_digits_denoiser",
]


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Any, repeat: int, device: Any) -> tuple[Any, float]:
    out = fn()
    times = []
    for _ in range(repeat):
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


def mlp_speedup_grid(
    lengths: list[int], widths: list[int], *, batch: int = 8, device: str = "cpu",
    dtype: str = "float32", repeat: int = 3, tol: float | None = 1e-5, progress: bool = False,
) -> list[dict[str, Any]]:
    """Experiment (a): forward/backward speed-ups of Newton-PCR over the eager loop.

    For each ``(L, w)`` a random tanh MLP ``x_l = tanh(W_l x_{l-1} + b_l)`` with
    ``W_l ~ N(0, 1/w)`` runs on a batch of inputs; the forward is timed as the eager loop
    vs :func:`pcrsolve.solve` (analytic Jacobian), the backward as autograd through the
    loop vs the adjoint solve.

    Parameters
    ----------
    lengths, widths : list of int
        The grid.
    batch : int, default 8
    device : str, default "cpu"
    dtype : {"float32", "float64"}
    repeat : int, default 3
        Timed runs per measurement (median).
    tol : float, optional
        Newton tolerance.
    progress : bool, default False
        Show a tqdm progress bar.

    Returns
    -------
    list of dict
        One record per cell: ``L``, ``w``, times in seconds, speed-ups, iterations and the
        maximal relative differences of states and gradients.
    """
    import torch

    from ..newton import solve
    from .newton import mlp_functions

    dt = getattr(torch, dtype)
    cells = [(L, w) for L in lengths for w in widths]
    if progress:
        from tqdm import tqdm

        cells = tqdm(cells, desc="MLP grid")
    records = []
    for L, w in cells:
        g = torch.Generator().manual_seed(L * 1000 + w)
        W = (torch.randn(L, w, w, generator=g, dtype=dt) / math.sqrt(w)).to(device)
        b = (0.5 * torch.randn(L, w, generator=g, dtype=dt)).to(device)
        x0 = torch.randn(batch, w, generator=g, dtype=dt).to(device)
        W.requires_grad_(True)
        b.requires_grad_(True)

        fns = mlp_functions(W, b)
        step, jac = fns["step"], fns["jacobian"]

        def loop(fns: Any = fns, x0: Any = x0) -> Any:
            return fns["loop"](x0)

        with torch.no_grad():
            ref, t_loop = _median_time(loop, repeat, device)
            sol, t_par = _median_time(lambda step=step, jac=jac, x0=x0, L=L: solve(
                step, x0, L, jacobian=jac, tol=tol, throw=False), repeat, device)
        weight = torch.randn(ref.shape, generator=g, dtype=dt).to(device)
        loss_loop = (loop() * weight).sum()
        loss_par = (solve(step, x0, L, jacobian=jac, tol=tol, params=[W, b]).states
                    * weight).sum()
        grads_loop, tb_loop = _time_gradient(loss_loop, [W, b], repeat, device)
        grads_par, tb_par = _time_gradient(loss_par, [W, b], repeat, device)
        scale = max(float(ref.abs().max()), 1e-30)
        gdiff = max(float((a - c).abs().max() / max(float(c.abs().max()), 1e-30))
                    for a, c in zip(grads_par, grads_loop, strict=True))
        records.append({
            "L": L, "w": w, "batch": batch, "device": device, "dtype": dtype,
            "forward_loop_s": t_loop, "forward_pcr_s": t_par,
            "forward_speedup": t_loop / t_par,
            "backward_loop_s": tb_loop, "backward_pcr_s": tb_par,
            "backward_speedup": tb_loop / tb_par,
            "iterations": sol.iterations, "status": sol.status.name,
            "state_rel_err": float((sol.states - ref).abs().max()) / scale,
            "grad_rel_err": gdiff,
        })
    return records


def plot_grid(records: list[dict[str, Any]], path: str) -> None:
    """Draw forward and backward speed-ups as two heatmaps (log2 L by log2 w) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ls = sorted({r["L"] for r in records})
    ws = sorted({r["w"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in zip(axes, ("forward_speedup", "backward_speedup"),
                              ("forward: Newton-PCR vs loop", "backward: adjoint vs autograd"),
                              strict=True):
        grid = np.full((len(ws), len(Ls)), np.nan)
        for r in records:
            grid[ws.index(r["w"]), Ls.index(r["L"])] = r[key]
        lim = max(1.0, float(np.nanmax(np.abs(np.log2(grid)))))
        im = ax.imshow(np.log2(grid), origin="lower", cmap="RdBu", vmin=-lim, vmax=lim,
                       aspect="auto")
        for i in range(len(ws)):
            for j in range(len(Ls)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(Ls)), [f"$2^{{{int(math.log2(v))}}}$" for v in Ls])
        ax.set_yticks(range(len(ws)), [str(v) for v in ws])
        ax.set_xlabel("L (layers)")
        ax.set_ylabel("w (width)")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="log2 speed-up")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def resnet_digits(
    depth: int = 64, width: int = 16, *, epochs: int = 3, batch_size: int = 64,
    lr: float = 3e-3, seed: int = 0, device: str = "cpu", dtype: str = "float32",
    progress: bool = False,
) -> dict[str, Any]:
    """Experiment (b): train a deep residual network on the digits, parallel vs sequential.

    The network is ``Linear(64, w) -> tanh -> [depth residual blocks x + tanh(W x + b)]
    -> Linear(w, 10)``. Two copies start from the same initialisation and see the same
    mini-batches; one runs its residual stack with ``nn.Sequential``, the other with
    :class:`pcrsolve.adapters.torch.ParallelSequential` (Newton-PCR forward, adjoint
    backward). Adam, cross-entropy.

    Returns
    -------
    dict
        Test accuracies, time per training step (median), Newton iterations.
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
    for kind, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        step_times, iters = [], []
        it = range(epochs)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc=f"{kind} training")
        for epoch in it:
            perm = torch.as_tensor(batches[epoch], device=device)
            for start in range(0, len(Xtr), batch_size):
                idx = perm[start:start + batch_size]
                _sync(device)
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
                _sync(device)
                step_times.append(time.perf_counter() - t0)
                if kind == "parallel":
                    iters.append(net[2].last_solution.iterations)
        with torch.no_grad():
            acc = float((net(Xte).argmax(-1) == yte).to(torch.float64).mean())
        results[kind] = {"test_accuracy": acc, "step_time_s": statistics.median(step_times),
                         "final_loss": float(loss.detach())}
        if iters:
            results[kind]["newton_iterations_mean"] = float(np.mean(iters))
            results[kind]["newton_iterations_max"] = int(np.max(iters))
    results["accuracy_gap"] = abs(results["parallel"]["test_accuracy"]
                                  - results["sequential"]["test_accuracy"])
    results["step_speedup"] = (results["sequential"]["step_time_s"]
                               / results["parallel"]["step_time_s"])
    return results


@suite("paper")
def run_paper(opts: Any) -> None:
    """``python -m pcrsolve bench paper``: experiments (a)-(d) at ``--size``; JSON + figures."""
    import importlib.util
    import json
    import os

    from .harness import machine_description

    if importlib.util.find_spec("torch") is None:
        raise SystemExit("bench paper needs torch (pip install torch)")
    device = opts.device or "cpu"
    small = opts.size == "small"
    out: dict[str, Any] = {"machine": machine_description("torch", device), "size": opts.size}
    print(out["machine"])
    if small:
        lengths, widths = [16, 64, 256], [1, 4]
    elif opts.size == "full":
        lengths, widths = [2**k for k in range(4, 15)], [2**k for k in range(8)]
    else:
        lengths, widths = [2**k for k in range(4, 13, 2)], [1, 2, 4, 8, 16]
    grid = mlp_speedup_grid(lengths, widths, device=device, dtype=opts.dtype,
                            repeat=1 if small else opts.repeat, progress=True)
    out["a_mlp_grid"] = grid
    best = max(grid, key=lambda r: r["forward_speedup"])
    best_b = max(grid, key=lambda r: r["backward_speedup"])
    print(f"(a) MLP grid: best forward speed-up {best['forward_speedup']:.2f}x "
          f"(L={best['L']}, w={best['w']}), best backward {best_b['backward_speedup']:.2f}x "
          f"(L={best_b['L']}, w={best_b['w']})")
    res = resnet_digits(16 if small else 64, 16, epochs=1 if small else 3, device=device,
                        dtype=opts.dtype, progress=True)
    out["b_resnet_digits"] = res
    print(f"(b) residual network, {res['depth']} blocks: test accuracy sequential "
          f"{res['sequential']['test_accuracy']:.4f} vs parallel "
          f"{res['parallel']['test_accuracy']:.4f}; step speed-up {res['step_speedup']:.2f}x")
    for key, fn in _EXTRA_EXPERIMENTS.items():
        out[key] = fn(small, device, opts.dtype)
        print(out[key]["summary"])
    if opts.plot:
        os.makedirs(opts.plot, exist_ok=True)
        path = os.path.join(opts.plot, "mlp_speedup_grid.png")
        plot_grid(grid, path)
        print(f"wrote {path}")
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(f"wrote {opts.json}")


#: experiments (c) and (d), registered by name: ``fn(small, device, dtype) -> dict`` with
#: a ``"summary"`` line.
_EXTRA_EXPERIMENTS: dict[str, Any] = {}


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


def train_digits_denoiser(data: Any, schedule: Any, steps: int, seed: int) -> Any:
    """Standard DDPM training of a small MLP noise predictor on the digits.

    Parameters
    ----------
    data : torch.Tensor, shape (N, 64)
        Images scaled to [-1, 1].
    schedule : pcrsolve.adapters.diffusion.NoiseSchedule
    steps : int
        Adam steps on mini-batches of 256 (noise of ``x_t = sqrt(abar) x0 + sqrt(1-abar) e``).
    seed : int

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
    for _ in range(steps):
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


def digits_ddpm(small: bool, device: str, dtype: str) -> dict[str, Any]:
    """Experiment (c): DDPM sampling of the digits, Newton-PCR vs the loop, same noise."""
    import torch
    from sklearn.datasets import load_digits

    from ..adapters.diffusion import NoiseSchedule, sample, sample_sequential

    T, steps, n = (100, 200, 8) if small else (1000, 2000, 64)
    dt = getattr(torch, dtype)
    images = torch.as_tensor(load_digits().data / 8.0 - 1.0, dtype=dt, device=device)
    schedule = NoiseSchedule.linear(T)
    model = train_digits_denoiser(images, schedule, steps, 0)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(n, 64, generator=g, dtype=dt).to(device)
    z = torch.randn(n, T, 64, generator=g, dtype=dt).to(device)
    with torch.no_grad():
        seq, t_seq = _median_time(lambda: sample_sequential(model, x_T, schedule, noise=z), 1,
                                  device)
        sol, t_par = _median_time(lambda: sample(model, x_T, schedule, noise=z, throw=False),
                                  1, device)
    diff = float((sol.states[..., -1, :] - seq[..., -1, :]).abs().max())
    return {"T": T, "samples": n, "train_steps": steps, "sequential_s": t_seq,
            "parallel_s": t_par, "speedup": t_seq / t_par, "iterations": sol.iterations,
            "status": sol.status.name, "max_abs_diff": diff,
            "summary": f"(c) DDPM on the digits, T={T}, {n} samples: speed-up "
                       f"{t_seq / t_par:.2f}x, {sol.iterations} iterations, samples agree to "
                       f"{diff:.1e}"}


# -- (d) a GRU over a long sequence ------------------------------------------------------------
def gru_long_sequence(small: bool, device: str, dtype: str) -> dict[str, Any]:
    """Experiment (d): a GRU (hidden 8, batch 16) over ``T`` steps vs ``torch.nn.GRU``."""
    import torch

    from ..adapters.rnn import run_cell

    T = 1024 if small else (1 << 20 if torch.device(device).type == "cuda" else 1 << 14)
    H, In, B = 8, 4, 16
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(In, H)
    with torch.no_grad():
        cell.weight_hh.mul_(0.5)  # a contracting recurrence
    cell = cell.to(device=device, dtype=dt)
    gru = torch.nn.GRU(In, H, batch_first=True, device=device, dtype=dt)
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    u = torch.randn(B, T, In, generator=g, dtype=dt).to(device)
    h0 = torch.randn(B, H, generator=g, dtype=dt).to(device)
    with torch.no_grad():
        ref, t_ref = _median_time(lambda: gru(u, h0[None])[0], 3, device)
        sol, t_par = _median_time(lambda: run_cell(cell, u, h0, throw=False), 3, device)
    diff = float((sol.outputs - ref).abs().max())
    return {"T": T, "hidden": H, "batch": B, "cudnn_or_loop_s": t_ref, "parallel_s": t_par,
            "speedup": t_ref / t_par, "iterations": sol.iterations, "status": sol.status.name,
            "max_abs_diff": diff,
            "summary": f"(d) GRU hidden {H}, batch {B}, T={T}: speed-up over torch.nn.GRU "
                       f"{t_ref / t_par:.2f}x, {sol.iterations} iterations, outputs agree to "
                       f"{diff:.1e}"}


_EXTRA_EXPERIMENTS["c_digits_ddpm"] = digits_ddpm
_EXTRA_EXPERIMENTS["d_gru_long_sequence"] = gru_long_sequence

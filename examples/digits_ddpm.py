"""DDPM on 8x8 digits: the 1000-step sampler run in parallel by pcrsolve vs the plain loop.

Trains a small MLP noise predictor ``eps(x, t)`` (torch) on scikit-learn's bundled digits
(1797 images of 8x8 pixels, scaled to [-1, 1]; nothing is downloaded), then draws samples
with ancestral DDPM twice from the same starting noise ``x_T`` and the same pre-sampled
per-step noise ``z``:

* sequentially, ``T`` denoiser calls one after another;
* in parallel, as one recurrence of ``T`` steps solved by :func:`pcrsolve.solve` (through
  :func:`pcrsolve.adapters.diffusion.sample`), with the free "gaussian" Jacobian.

It prints the wall times of pcrsolve and of the sequential baselines (a lean loop with a
preallocated output, and the adapter's reference loop), the speed-up against the fastest
of them (named), the largest difference between the two sets of samples, the iterations
each Jacobian option ("gaussian", "scheduler", "diagonal", "full") needs, and two quality
measures: the distance of each sample to its nearest training image, and the confidence
of a digits classifier (logistic regression) on the samples, each next to the same
measure for real held-out digits and for noise. It exits with status 1 if the parallel
and sequential samples differ by more than the tolerance (1e-4 in float32, 1e-8 in
float64).

Progress (training, sampling, the Jacobian options) is shown on stderr while it runs.

Run time on a 2-core AMD EPYC (torch 2.13, CPU, float32): ``--small`` about 9 s; the
default (T = 1000, 2000 training steps, 64 samples) about 2 minutes.

Run::

    python examples/digits_ddpm.py                 # T = 1000, float32
    python examples/digits_ddpm.py --small         # tiny training, T = 100 (CI)
    python examples/digits_ddpm.py --plot out/     # also writes out/digits_ddpm.png
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from pcrsolve.adapters.diffusion import NoiseSchedule, sample, sample_sequential
from pcrsolve.bench.harness import best_time
from pcrsolve.bench.paper import (
    compare,
    ddpm_loop,
    machine_label,
    plot_ddpm,
    progress,
    slower_note,
    speedup_text,
    train_digits_denoiser,
)


def nn_distance(samples: np.ndarray, train: np.ndarray) -> float:
    """Mean over samples of the RMS pixel distance to the nearest training image."""
    d2 = (samples**2).sum(1)[:, None] + (train**2).sum(1)[None, :] - 2 * samples @ train.T
    return float(np.sqrt(np.maximum(d2.min(axis=1), 0) / samples.shape[1]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny training and T = 100 (CI)")
    ap.add_argument("--T", type=int, default=None, help="diffusion steps (default 1000)")
    ap.add_argument("--samples", type=int, default=None, help="number of samples")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--jacobian-samples", type=int, default=None,
                    help="samples used to count iterations of the 'diagonal' and 'full' "
                         "options (their D JVPs per iteration are expensive)")
    ap.add_argument("--plot", metavar="DIR", default=None, help="write DIR/digits_ddpm.png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    T = args.T or (100 if args.small else 1000)
    n_samples = args.samples or (8 if args.small else 64)
    train_steps = args.train_steps or (200 if args.small else 2000)
    n_jac = args.jacobian_samples or (1 if args.small else 2)
    dtype = getattr(torch, args.dtype)
    tol = 1e-4 if args.dtype == "float32" else 1e-8

    digits = load_digits()
    images = digits.data / 8.0 - 1.0  # pixel values 0..16 -> [-1, 1]
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(images))
    held_out, train_idx = perm[:300], perm[300:]
    data = torch.as_tensor(images[train_idx], dtype=dtype)
    schedule = NoiseSchedule.linear(T)
    print(f"digits: {len(train_idx)} training images of 64 pixels; T = {T}, dtype {args.dtype}, "
          f"torch threads {torch.get_num_threads()}")

    model, t_train = best_time(
        lambda: train_digits_denoiser(data, schedule, train_steps, args.seed, progress_bar=True))
    print(f"trained the denoiser for {train_steps} steps in {t_train:.1f} s")

    gen = torch.Generator().manual_seed(args.seed + 1)
    x_T = torch.randn(n_samples, 64, generator=gen, dtype=dtype)
    z = torch.randn(n_samples, T, 64, generator=gen, dtype=dtype)

    lean = ddpm_loop(model, x_T, schedule, z)
    times = {}
    with torch.no_grad():
        for stage in progress(["lean loop", "adapter loop", "pcrsolve"], "sampling"):
            if stage == "lean loop":
                _, times["sampling loop (no_grad, preallocated)"] = best_time(lean, repeat=3)
            elif stage == "adapter loop":
                seq, times["adapter loop (sample_sequential)"] = best_time(
                    lambda: sample_sequential(model, x_T, schedule, noise=z), repeat=3)
            else:
                sol, t_par = best_time(lambda: sample(model, x_T, schedule, noise=z,
                                                      jacobian="gaussian", throw=False),
                                       repeat=2)
    cmp = compare(times, t_par)
    diff_final = float((sol.states[..., -1, :] - seq[..., -1, :]).abs().max())
    diff_traj = float((sol.states - seq).abs().max())
    print(f"\n{n_samples} samples, {T}-step DDPM, same x_T and noise (best of 3 runs):")
    for name, t in times.items():
        print(f"  {name:38s} {t:8.3f} s  ({T} denoiser calls on {n_samples} images)")
    print(f"  {'pcrsolve, gaussian Jacobian':38s} {t_par:8.3f} s  ({sol.iterations} iterations, "
          f"{sol.status.name})")
    print(f"  pcrsolve is {speedup_text(cmp['speedup'], cmp['baseline'])}")
    if cmp["speedup"] < 1:
        print(f"  {slower_note('cpu')}")
    print(f"  max |parallel - sequential|: samples {diff_final:.2e}, whole trajectory "
          f"{diff_traj:.2e} (tolerance {tol:g})")

    cap = 100
    print(f"\niterations per Jacobian option ({n_jac} sample(s), default tolerance, "
          f"at most {cap} iterations):")
    counts, lines = {}, []
    with torch.no_grad():
        for jac in progress(("gaussian", "scheduler", "diagonal", "full"), "Jacobian options"):
            s, t = best_time(lambda jac=jac: sample(model, x_T[:n_jac], schedule, noise=z[:n_jac],
                                                jacobian=jac, throw=False,
                                                max_iter=min(cap, T)))
            d = float((s.states - seq[:n_jac]).abs().max())
            counts[jac] = s.iterations
            lines.append(f"  {jac:10s} {s.iterations:4d} iterations  {t:8.2f} s  "
                         f"{s.status.name:9s} max diff {d:.1e}")
    print("\n".join(lines))

    x = sol.states[..., -1, :].double().numpy().clip(-1, 1)
    train_np, held_np = images[train_idx], images[held_out]
    noise_np = rng.uniform(-1, 1, size=x.shape)
    clf = LogisticRegression(max_iter=2000).fit(train_np, digits.target[train_idx])
    conf = {k: float(clf.predict_proba(v).max(axis=1).mean())
            for k, v in (("samples", x), ("held-out", held_np[:n_samples]), ("noise", noise_np))}
    dist = {k: nn_distance(v, train_np)
            for k, v in (("samples", x), ("held-out", held_np[:n_samples]), ("noise", noise_np))}
    print("\nquality (samples | real held-out digits | uniform noise):")
    print(f"  nearest-training-image RMS distance  {dist['samples']:.3f} | "
          f"{dist['held-out']:.3f} | {dist['noise']:.3f}")
    print(f"  classifier confidence                {conf['samples']:.3f} | "
          f"{conf['held-out']:.3f} | {conf['noise']:.3f}")
    labels = np.bincount(clf.predict(x), minlength=10)
    print(f"  predicted classes of the samples     {labels.tolist()}")

    if args.plot:
        out = pathlib.Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        res = {"T": T, "sampling": cmp, "iterations": sol.iterations, "status": sol.status.name,
               "max_abs_diff": diff_final, "samples_sequential": seq[..., -1, :].double().numpy(),
               "samples_parallel": sol.states[..., -1, :].double().numpy()}
        plot_ddpm(res, str(out / "digits_ddpm.png"), max_samples=64,
                  title=f"DDPM samples of the digits, T = {T}\n"
                        f"{machine_label('cpu')}, torch on cpu, {args.dtype}")
        print(f"\nwrote {out / 'digits_ddpm.png'}")

    ok = diff_final <= tol and sol.converged
    print(f"\n{'OK' if ok else 'FAIL'}: parallel and sequential samples agree to {diff_final:.1e} "
          f"(tolerance {tol:g}); iterations {counts}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

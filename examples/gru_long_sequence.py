"""A GRU over a long sequence with pcrsolve, checked against ``torch.nn.GRU``.

Experiment (d) of the paper harness: a GRU cell (hidden size 8, batch 16) run over a
sequence of ``T`` time steps,

    h_t = GRUCell(u_t, h_{t-1}),   t = 1..T,

by the sequential baselines, ``torch.nn.GRU`` (the time loop, in C++/cuDNN) and a
``GRUCell`` loop under ``torch.no_grad`` with a preallocated output, and by
:func:`pcrsolve.adapters.rnn.run_cell`: Newton's method on the whole trajectory, each
iteration one batched evaluation of the cell at all ``T`` steps, its analytic Jacobian
and one ``O(log T)``-depth linear solve. The two share the same weights. With
``--backward`` (on by default) the gradient of a loss with respect to the inputs, ``h0``
and every GRU parameter is compared too: autograd through ``nn.GRU`` against pcrsolve's
adjoint solve (one reverse linear recurrence, no iterations).

Weights: PyTorch's default initialisation, with ``weight_hh`` scaled by
``--hh-scale`` (0.5 by default) so that the recurrence is **contracting** (``|d h_t / d
h_{t-1}| < 1``). Newton then needs a handful of iterations whatever ``T`` is, and the
adjoint (backward) recurrence is well conditioned: over ``T = 10^6`` steps an expanding
or marginal GRU makes both the parallel iteration and any float32 gradient meaningless.

Prints times, iterations, the largest differences and each speed-up against the fastest
sequential baseline (named; when pcrsolve is slower, one line says why); exits with
status 1 if the outputs differ by more than 1e-4 (float32; 1e-10 in float64) or the
gradients by more than 1e-3 relative (1e-8). Without PyTorch it says so and exits with status 0.

Progress is shown on stderr while the contenders run.

Run time on a 2-core AMD EPYC (torch 2.13, CPU, float32): ``--small`` about 5 s; the
default (T = 2**14, forward and backward) about 1 minute on an idle machine (the forward
part alone 28 s), several minutes when other jobs share the two cores.

Usage::

    python examples/gru_long_sequence.py                       # T = 2**14 on the CPU
    python examples/gru_long_sequence.py --small               # T = 256, for CI
    python examples/gru_long_sequence.py --device cuda --T 1048576
    python examples/gru_long_sequence.py --no-backward --dtype float64
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pcrsolve.bench.harness import best_time
from pcrsolve.bench.paper import compare, gru_cell_loop, progress, slower_note, speedup_text

DEFAULT_T, SMALL_T = 2**14, 256


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> tuple[Any, float]:
    """Best wall time of ``repeat`` runs (see :func:`pcrsolve.bench.harness.best_time`)."""
    return best_time(fn, repeat, sync)


def max_rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max(1, max|b|)``."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=None,
                        help=f"sequence length (default {DEFAULT_T}; {SMALL_T} with --small)")
    parser.add_argument("--hidden", type=int, default=8, help="hidden size H")
    parser.add_argument("--input-size", type=int, default=4, help="input size")
    parser.add_argument("--batch", type=int, default=16, help="batch size B")
    parser.add_argument("--small", action="store_true", help="T = 256, for CI")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--jacobian", choices=("analytic", "autodiff"), default="analytic")
    parser.add_argument("--hh-scale", type=float, default=0.5,
                        help="factor on weight_hh (< 1 makes the GRU contracting)")
    parser.add_argument("--backward", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare gradients (default: on)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timing repetitions, best taken (default 3, 1 with --small)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (torch.set_num_threads); on a small, busy "
                        "machine 1 avoids thread contention")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("this example needs PyTorch (pip install torch); skipping")
        return 0
    from pcrsolve.adapters.rnn import run_cell

    T = args.T or (SMALL_T if args.small else DEFAULT_T)
    H, I, B = args.hidden, args.input_size, args.batch
    repeat = args.repeat or (1 if args.small else 3)
    if min(T, H, I, B, repeat) < 1:
        parser.error("--T, --hidden, --input-size, --batch and --repeat must be >= 1")
    dtype, device = getattr(torch, args.dtype), args.device
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))

    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(args.seed)
    cell = torch.nn.GRUCell(I, H, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_hh.mul_(args.hh_scale)
    cell = cell.to(device=device, dtype=dtype)
    gru = torch.nn.GRU(I, H, batch_first=True, device=device, dtype=dtype)
    gru.load_state_dict({f"{k}_l0": v for k, v in cell.state_dict().items()})
    gen = torch.Generator().manual_seed(args.seed + 1)
    u = torch.randn(B, T, I, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    print(f"GRU: T = {T} time steps, hidden {H}, input {I}, batch {B}, {args.dtype} on "
          f"{device} ({torch.get_num_threads()} CPU threads), weight_hh x {args.hh_scale}, "
          f"{args.jacobian} Jacobian")

    # --- forward -------------------------------------------------------------------------
    gru_name = "torch.nn.GRU (cuDNN)" if torch.device(device).type == "cuda" else \
        "torch.nn.GRU (ATen C++ loop)"
    base = {}
    with torch.no_grad():
        for stage in progress(["warm-up", "nn.GRU", "GRUCell loop", "pcrsolve"], "forward"):
            if stage == "warm-up":
                run_cell(cell, u[:, : min(T, 16)], h0)
                gru(u[:, : min(T, 16)], h0[None])
            elif stage == "nn.GRU":
                ref, base[gru_name] = timed(lambda: gru(u, h0[None])[0], sync, repeat)
            elif stage == "GRUCell loop":
                _, base["GRUCell loop (no_grad, preallocated)"] = timed(
                    gru_cell_loop(cell, u, h0), sync, repeat)
            else:
                sol, t_pcr = timed(lambda: run_cell(cell, u, h0, jacobian=args.jacobian,
                                                    throw=False), sync, repeat)
    fwd = compare(base, t_pcr)
    d_out = float((sol.outputs - ref).abs().max())
    for name, t in base.items():
        print(f"forward:  {name:48s} {t * 1e3:10.2f} ms")
    print(f"forward:  {'pcrsolve (Newton-PCR)':48s} {t_pcr * 1e3:10.2f} ms   "
          f"{sol.status.name}, {sol.iterations} Newton iterations ({sol.linear_method}), "
          f"max |output diff| {d_out:.2e}")
    print(f"forward:  pcrsolve is {speedup_text(fwd['speedup'], fwd['baseline'])}")
    speedups = [fwd["speedup"]]

    out_tol = 1e-4 if dtype == torch.float32 else 1e-10
    grad_tol = 1e-3 if dtype == torch.float32 else 1e-8
    failed = not sol.converged or d_out > out_tol
    if not sol.converged:
        print(f"not converged: {sol.status.message}")

    # --- forward + backward --------------------------------------------------------------
    if args.backward and sol.converged:
        weight = torch.randn(B, T, H, generator=gen, dtype=torch.float64).to(device=device,
                                                                             dtype=dtype)
        u.requires_grad_()
        h0.requires_grad_()
        names = ["u", "h0", *(k for k, _ in cell.named_parameters())]

        def grads_gru() -> list[Any]:
            params = {f"{k}_l0": v for k, v in cell.named_parameters()}
            out, hn = torch.func.functional_call(gru, params, (u, h0[None]))
            loss = (out * weight).sum() + (hn**2).sum()
            return list(torch.autograd.grad(loss, [u, h0, *cell.parameters()]))

        def grads_pcr() -> list[Any]:
            s = run_cell(cell, u, h0, jacobian=args.jacobian)
            loss = (s.outputs * weight).sum() + (s.h_n**2).sum()
            return list(torch.autograd.grad(loss, [u, h0, *cell.parameters()]))

        for stage in progress(["warm-up", "nn.GRU", "pcrsolve"], "forward + backward"):
            if stage == "warm-up":
                grads_pcr()
            elif stage == "nn.GRU":
                g_ref, t_loop_bw = timed(grads_gru, sync, repeat)
            else:
                g_pcr, t_pcr_bw = timed(grads_pcr, sync, repeat)
        bwd = compare({f"autograd through {gru_name}": t_loop_bw}, t_pcr_bw)
        speedups.append(bwd["speedup"])
        print(f"fwd+bwd:  {'autograd through ' + gru_name:48s} {t_loop_bw * 1e3:10.2f} ms")
        print(f"fwd+bwd:  {'pcrsolve (Newton-PCR + adjoint)':48s} {t_pcr_bw * 1e3:10.2f} ms")
        print(f"fwd+bwd:  pcrsolve is {speedup_text(bwd['speedup'], bwd['baseline'])}")
        diffs = {n: max_rel_diff(g, r) for n, g, r in zip(names, g_pcr, g_ref, strict=True)}
        print("gradients: max rel diff " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
        failed = failed or max(diffs.values()) > grad_tol

    if min(speedups) < 1:
        print(slower_note(device))
    if failed:
        print(f"FAILED: outputs differ by more than {out_tol:.0e}, gradients by more than "
              f"{grad_tol:.0e} relative, or status {sol.status.name}")
        return 1
    print(f"OK: outputs agree to {d_out:.1e} (tolerance {out_tol:.0e})"
          + (f", gradients to {grad_tol:.0e} relative" if args.backward else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

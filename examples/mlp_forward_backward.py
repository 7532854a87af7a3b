"""A deep tanh MLP run forward and backward with pcrsolve, checked against the torch loop.

The network is ``L`` layers of width ``w``,

    x_l = tanh(W_l x_{l-1} + b_l),   l = 1..L,

on a batch of ``B`` inputs ``x_0``. The forward pass is the nonlinear recurrence solved by
Newton's method on the whole trajectory (:func:`pcrsolve.solve`, DeepPCR): a few
iterations, each one batched evaluation of all layers (their Jacobians from
``torch.func.jvp``) and one ``O(log L)``-depth linear solve. Passing ``params=[W, b]``
makes the states differentiable: ``loss.backward()`` then runs the adjoint method, one
reverse *linear* recurrence ``lambda_l = J_{l+1}^T lambda_{l+1} + dloss/dx_l`` solved in
parallel plus one batched vector-Jacobian product, instead of backpropagating through
the Newton iterations.

The script compares the states and the gradients of ``W``, ``b`` and ``x0`` with
autograd through the plain torch loop, prints iterations, differences and timings, and
exits with status 1 if they disagree by more than a tolerance derived from the dtype. The
forward pass is timed against every sequential loop this machine has
(``pcrsolve.bench.baselines``: torch's eager loop, numba and jax when installed) and the
speed-up is against the fastest. It needs PyTorch; without it, it says so and exits with
status 0. Real run time on a 2-core AMD EPYC (torch 2.13 CPU, numba 0.68): about 50 s by
default, about 10 s with ``--small`` (imports and numba compilation included).

Usage::

    python examples/mlp_forward_backward.py                    # L = 1024, w = 16, B = 8
    python examples/mlp_forward_backward.py --small            # a quick check for CI
    python examples/mlp_forward_backward.py --dtype float32 --device cuda -L 4096
    python examples/mlp_forward_backward.py --jacobian autodiff --mode quasi
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pcrsolve
from pcrsolve.bench.baselines import mlp_baselines, mlp_reference
from pcrsolve.bench.harness import Workspace, best_time

DEFAULT = {"length": 1024, "width": 16, "batch": 8}
SMALL = {"length": 64, "width": 4, "batch": 2}


def make_network(torch: Any, length: int, width: int, dtype: Any, device: str,
                 seed: int) -> tuple[Any, Any]:
    """Weights ``W`` of shape ``(L, w, w)`` (``N(0, 0.8^2 / w)``) and biases ``b`` ``(L, w)``.

    Both are leaf tensors that require grad.
    """
    gen = torch.Generator().manual_seed(seed)
    W = 0.8 * torch.randn(length, width, width, generator=gen, dtype=torch.float64) / width**0.5
    b = 0.5 * torch.randn(length, width, generator=gen, dtype=torch.float64)
    return (W.to(device=device, dtype=dtype).requires_grad_(),
            b.to(device=device, dtype=dtype).requires_grad_())


def make_step(torch: Any, W: Any, b: Any) -> tuple[Callable[[Any, Any], Any],
                                                    Callable[[Any, Any], Any]]:
    """The vectorized step and its analytic Jacobian.

    Returns
    -------
    step : callable
        ``step(x_prev, l)``: ``x_prev`` ``(..., n, w)`` and indices ``l`` ``(n,)`` to
        ``(..., n, w)``. (A broadcast ``W[l] @ x[..., None]``: on CPU ``einsum`` is faster
        when called plainly but an order of magnitude slower under ``torch.func.jvp``.)
    jacobian : callable
        ``jacobian(x_prev, l)``: dense blocks ``diag(1 - x_l^2) W_l``, ``(..., n, w, w)``.
    """

    def step(x: Any, l: Any) -> Any:
        return torch.tanh((W[l] @ x[..., None])[..., 0] + b[l])

    def jacobian(x: Any, l: Any) -> Any:
        return (1.0 - step(x, l) ** 2)[..., None] * W[l]

    return step, jacobian


def loop(torch: Any, W: Any, b: Any, x0: Any) -> Any:
    """The reference forward pass: the plain loop, states of shape ``(B, L, w)``."""
    out, x = [], x0
    for l in range(W.shape[0]):
        x = torch.tanh(x @ W[l].T + b[l])
        out.append(x)
    return torch.stack(out, dim=-2)


def loss_of(states: Any, target: Any) -> Any:
    """A loss that touches every layer: ``sum_l <target_l, x_l> + |x_L|^2``."""
    return (states * target).sum() + (states[..., -1, :] ** 2).sum()


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> tuple[Any, float]:
    """Best wall time of ``repeat`` runs (see :func:`pcrsolve.bench.harness.best_time`)."""
    return best_time(fn, repeat, sync)


def max_rel_diff(a: Any, b: Any) -> float:
    """``max|a - b| / max(1, max|b|)``."""
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-L", "--length", type=int, default=None, help="layers L")
    parser.add_argument("-w", "--width", type=int, default=None, help="width w")
    parser.add_argument("-B", "--batch", type=int, default=None, help="batch size B")
    parser.add_argument("--small", action="store_true", help="tiny sizes for CI")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--mode", choices=("newton", "quasi"), default="newton",
                        help="Jacobian mode of the forward solve")
    parser.add_argument("--jacobian", choices=("analytic", "autodiff"), default="analytic",
                        help="the layers' Jacobians: the formula diag(1 - x^2) W, or "
                        "torch.func.jvp (w JVPs per iteration, no formula needed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=None,
                        help="timing repetitions, best taken (default 3, 1 with --small)")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("this example needs PyTorch (pip install torch); skipping")
        return 0

    sizes = SMALL if args.small else DEFAULT
    L = args.length or sizes["length"]
    w = args.width or sizes["width"]
    B = args.batch or sizes["batch"]
    repeat = args.repeat or (1 if args.small else 3)
    if min(L, w, B, repeat) < 1:
        parser.error("--length, --width, --batch and --repeat must be >= 1")
    dtype = getattr(torch, args.dtype)
    device = args.device

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    W, b = make_network(torch, L, w, dtype, device, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x0 = torch.randn(B, w, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    x0.requires_grad_()
    target = torch.randn(B, L, w, generator=gen, dtype=torch.float64).to(device=device,
                                                                         dtype=dtype)
    step, jacobian = make_step(torch, W, b)
    opts: dict[str, Any] = {"mode": args.mode}
    if args.jacobian == "analytic":
        opts["jacobian"] = jacobian
    print(f"tanh MLP: L = {L} layers, width w = {w}, batch B = {B}, {args.dtype} on {device}, "
          f"mode = {args.mode!r}, {args.jacobian} Jacobian")

    # --- forward only (no gradients) --------------------------------------------------------
    with torch.no_grad():
        pcrsolve.solve(step, x0.detach(), min(L, 8), **opts)  # warm-up
        ref, _ = timed(lambda: loop(torch, W, b, x0), sync, 1)
        sol, t_pcr = timed(lambda: pcrsolve.solve(step, x0.detach(), L, **opts),
                           sync, repeat)
    d_states = max_rel_diff(sol.states, ref)
    # every sequential forward loop this machine has (torch eager, numba, jax, a float
    # loop for w = 1), checked against a float64 loop; the speed-up is against the fastest
    ws = Workspace("torch", device, args.dtype)
    to64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    ref64 = mlp_reference(to64(W), to64(b), to64(x0))
    loops = []
    for base in mlp_baselines(ws, to64(W), to64(b), to64(x0)):
        base.run()  # warm-up, untimed: compiles numba/jax
        out, t = timed(base.run, sync, repeat)
        err = float(abs(base.to_numpy(out) - ref64).max() / abs(ref64).max())
        loops.append((base.name, t, err))
    best_name, t_loop, _ = min(loops, key=lambda row: row[1])
    print("forward:")
    for name, t, err in loops:
        mark = "  <- best loop" if name == best_name else ""
        print(f"  {name:26s} {t * 1e3:9.2f} ms   rel err {err:.1e}{mark}")
    up = t_loop / t_pcr
    print(f"  {'pcrsolve ' + args.mode:26s} {t_pcr * 1e3:9.2f} ms   "
          f"{sol.status.name}, {sol.iterations} iterations, max rel diff {d_states:.2e}")
    print(f"  => pcrsolve is {up:.1f}x faster than the best loop ({best_name})" if up >= 1 else
          f"  => pcrsolve is {1 / up:.1f}x SLOWER than the best loop ({best_name}): on a CPU"
          "\n     the loop wins; Newton's parallel depth pays on a GPU")

    # --- forward + backward ---------------------------------------------------------------
    leaves = (W, b, x0)

    def grads_loop() -> list[Any]:
        loss = loss_of(loop(torch, W, b, x0), target)
        return list(torch.autograd.grad(loss, leaves))

    def grads_pcr() -> list[Any]:
        for t in leaves:
            t.grad = None
        states = pcrsolve.solve(step, x0, L, params=[W, b], **opts).states
        loss_of(states, target).backward()  # adjoint: one reverse linear solve + one VJP
        return [t.grad for t in leaves]

    grads_pcr()  # warm-up: the first backward pays one-off costs (autograd, caches)
    g_ref, t_loop_bw = timed(grads_loop, sync, repeat)
    g_pcr, t_pcr_bw = timed(grads_pcr, sync, repeat)
    up = t_loop_bw / t_pcr_bw
    print(f"fwd+bwd (vs autograd through the torch loop, the fwd+bwd baseline timed here;\n"
          f"         `python -m pcrsolve bench adjoint` also times a reverse VJP loop):\n"
          f"  autograd through loop {t_loop_bw * 1e3:9.2f} ms   pcrsolve {t_pcr_bw * 1e3:9.2f} ms"
          f"   {up:.1f}x {'faster' if up >= 1 else 'slower'}" if up >= 1 else
          f"fwd+bwd (vs autograd through the torch loop, the fwd+bwd baseline timed here;\n"
          f"         `python -m pcrsolve bench adjoint` also times a reverse VJP loop):\n"
          f"  autograd through loop {t_loop_bw * 1e3:9.2f} ms   pcrsolve {t_pcr_bw * 1e3:9.2f} ms"
          f"   {1 / up:.1f}x slower")
    diffs = {name: max_rel_diff(g, r)
             for name, g, r in zip(("W", "b", "x0"), g_pcr, g_ref, strict=True)}
    print("gradients: max rel diff " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))

    # Tolerance from the dtype: the solve stops at about default_tolerance (a
    # sqrt(eps)-sized update, so the states are accurate to a few ulps); rounding in the
    # L-step loop and in the log(L)-level reduction grows like sqrt(L) ulps.
    eps = float(torch.finfo(dtype).eps)
    tol = max(10.0 * pcrsolve.default_tolerance(dtype, _namespace(x0)), 10.0 * eps * L**0.5)
    worst = max(d_states, *diffs.values(), *[e for _, _, e in loops])
    if not sol.converged or worst > tol:
        print(f"FAILED: max rel diff {worst:.2e} exceeds the tolerance {tol:.1e} "
              f"(or status {sol.status.name})")
        return 1
    print(f"OK: states and gradients agree with the loop to {worst:.1e} (tolerance {tol:.1e})")
    return 0


def _namespace(x: Any) -> Any:
    """The Array API namespace of ``x`` (what :func:`pcrsolve.default_tolerance` takes)."""
    import array_api_compat

    return array_api_compat.array_namespace(x)


if __name__ == "__main__":
    sys.exit(main())

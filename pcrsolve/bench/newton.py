"""``bench newton`` and ``bench adjoint``: a tanh MLP recurrence, parallel vs the loop.

The recurrence is ``x_l = tanh(W_l x_{l-1} + b_l)`` with ``W_l ~ N(0, 1/w)``, a batch of
``B`` chains. The sequential contenders (:mod:`pcrsolve.bench.baselines`) are the eager
loop a user writes first, an in-place NumPy loop, a ``math.tanh`` float loop (``w = 1``),
numba and ``jax.lax.scan`` where installed; the speed-up column is against the fastest.
pcrsolve gets the analytic Jacobian ``diag(1 - x_l^2) W_l`` (dense for "newton", its
diagonal for "quasi") the way an adapter supplies it: ``value_and_jacobian``, the value and
the blocks of a trial in one call. The row ``pcrsolve <mode>, step + jacobian`` is the
same solve with a separate ``jacobian`` that recomputes the step (an extra evaluation of
all ``L`` steps per iteration): the two differ only in that cost, with the same iterates.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..factored import Factored
from ..newton import solve
from .baselines import adjoint_baselines, mlp_baselines, mlp_reference
from .harness import (
    Report,
    Row,
    Workspace,
    machine_description,
    measure,
    median,
    relative_error,
    suite,
)

__all__ = ["SLOWER_REASON_ADJOINT", "SLOWER_REASON_NEWTON", "mlp_functions", "run_adjoint",
           "run_newton", "tanh_mlp"]

#: Why Newton-PCR can lose to the best loop on a CPU, in one line.
SLOWER_REASON_NEWTON = ("each Newton iteration evaluates all L steps and their Jacobians "
                        "and solves a linear system; that work pays off in depth on wide "
                        "hardware (GPU), see `bench gpu`")
#: Why the adjoint solve can lose to the reverse VJP loop on a CPU, in one line.
SLOWER_REASON_ADJOINT = ("the reverse linear solve does more work than the L-step VJP loop; "
                         "its O(log L) depth pays on wide hardware (GPU), see `bench gpu`")


def tanh_mlp(ws: Workspace, L: int, w: int, seed: int) -> tuple[Any, Any]:
    """``(W, b)`` of shapes ``(L, w, w)`` and ``(L, w)`` in the workspace's library."""
    rng = np.random.default_rng(seed)
    return (ws.asarray(rng.standard_normal((L, w, w)) / np.sqrt(w)),
            ws.asarray(0.5 * rng.standard_normal((L, w))))


def mlp_functions(W: Any, b: Any) -> dict[str, Any]:
    """Step, analytic Jacobians and the plain loop of ``x_l = tanh(W_l x_{l-1} + b_l)``.

    Written against the Array API, for any library.

    Parameters
    ----------
    W : array, shape (L, w, w)
    b : array, shape (L, w)

    Returns
    -------
    dict
        ``"step"`` and ``"jacobian"`` (dense) / ``"factored"`` (:class:`Factored`, for the
        fused kernel) / ``"diag"`` (diagonal) for :func:`pcrsolve.solve`, the same blocks
        with the step's value in one call (``"value_and_jacobian"``, ``"value_and_diag"``),
        and ``"loop"``:
        ``loop(x0) -> (..., L, w)``, the loop a user writes first.
    """
    xp = array_api_compat.array_namespace(W, b)

    def step(x: Any, l: Any) -> Any:
        Wl = xp.take(W, l, axis=0)
        return xp.tanh(xp.matmul(Wl, x[..., None])[..., 0] + xp.take(b, l, axis=0))

    def jacobian(x: Any, l: Any) -> Any:
        return (1.0 - step(x, l) ** 2)[..., None] * xp.take(W, l, axis=0)

    def factored(x: Any, l: Any) -> Factored:
        return Factored(1.0 - step(x, l) ** 2, xp.take(W, l, axis=0))

    def diag_jacobian(x: Any, l: Any) -> Any:
        return (1.0 - step(x, l) ** 2) * xp.linalg.diagonal(xp.take(W, l, axis=0))

    def value_and_jacobian(x: Any, l: Any) -> tuple[Any, Any]:
        Wl = xp.take(W, l, axis=0)
        y = xp.tanh(xp.matmul(Wl, x[..., None])[..., 0] + xp.take(b, l, axis=0))
        return y, (1.0 - y**2)[..., None] * Wl

    def value_and_diag(x: Any, l: Any) -> tuple[Any, Any]:
        Wl = xp.take(W, l, axis=0)
        y = xp.tanh(xp.matmul(Wl, x[..., None])[..., 0] + xp.take(b, l, axis=0))
        return y, (1.0 - y**2) * xp.linalg.diagonal(Wl)

    def loop(x0: Any) -> Any:
        out, x = [], x0
        for l in range(W.shape[0]):
            x = xp.tanh(xp.matmul(x, xp.matrix_transpose(W[l, ...])) + b[l, ...])
            out.append(x)
        return xp.stack(out, axis=-2)

    return {"step": step, "jacobian": jacobian, "factored": factored, "diag": diag_jacobian,
            "value_and_jacobian": value_and_jacobian, "value_and_diag": value_and_diag,
            "loop": loop}


def _problem(opts: Any, ws: Workspace) -> dict[str, Any]:
    return {"backend": ws.backend, "device": str(ws.device), "dtype": opts.dtype,
            "L": opts.length, "w": opts.width, "batch": opts.batch, "repeat": opts.repeat}


def _mlp_numpy(opts: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, c, x0)`` of the bench's tanh MLP as NumPy float64 arrays (same draws as
    :func:`tanh_mlp`)."""
    rng = np.random.default_rng(opts.seed)
    W = rng.standard_normal((opts.length, opts.width, opts.width)) / np.sqrt(opts.width)
    c = 0.5 * rng.standard_normal((opts.length, opts.width))
    x0 = np.random.default_rng(opts.seed + 1).standard_normal((opts.batch, opts.width))
    return W, c, x0


@suite("newton")
def run_newton(opts: Any) -> Report:
    """Every sequential loop vs Newton-PCR in each requested mode (forward pass)."""
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    Wn, cn, x0n = _mlp_numpy(opts)
    W, b, x0 = ws.asarray(Wn), ws.asarray(cn), ws.asarray(x0n)
    fns = mlp_functions(W, b)
    tol = opts.tol
    modes = opts.mode or ["newton", "quasi"]
    ref = mlp_reference(Wn, cn, x0n)
    rows, baselines, notes = [], [], []
    for base in mlp_baselines(ws, Wn, cn, x0n):
        out, times, peak = measure(ws, base.run, opts.repeat)
        rows.append(Row(base.name, median(times), times,
                        relative_error(base.to_numpy(out), ref), peak))
        baselines.append(base.name)
        notes.append(f"  {base.name}: {base.note}")
    for mode in modes:
        kw: dict[str, Any] = {"mode": mode, "tol": tol, "throw": False}
        variants = [(f"pcrsolve {mode}", kw)]
        if mode in ("newton", "quasi"):
            blocks = {"newton": ("jacobian", "value_and_jacobian", "dense"),
                      "quasi": ("diag", "value_and_diag", "diagonal")}[mode]
            kw.update(jacobian=fns[blocks[0]], jacobian_structure=blocks[2])
            variants = [(f"pcrsolve {mode}", {**kw, "value_and_jacobian": fns[blocks[1]]}),
                        (f"pcrsolve {mode}, step + jacobian", kw)]
        for name, kwv in variants:
            sol, times, peak = measure(
                ws, lambda kw=kwv: solve(fns["step"], x0, opts.length, **kw), opts.repeat)
            rows.append(Row(name, median(times), times,
                            relative_error(ws.to_numpy(sol.states), ref), peak,
                            {"iterations": sol.iterations, "status": sol.status.name,
                             "linear": sol.linear_method}))
        if len(variants) > 1:
            notes.append(f"  pcrsolve {mode}: value_and_jacobian, the step's value and "
                         "blocks in one call; ', step + jacobian': a separate jacobian "
                         "that recomputes the step")
    return Report("newton", {**_problem(opts, ws), "tol": tol}, rows,
                  machine=machine_description(ws.backend, str(ws.device)),
                  baselines=baselines, notes=notes, slower_reason=SLOWER_REASON_NEWTON)


@suite("adjoint")
def run_adjoint(opts: Any) -> Report:
    """Backward pass: autograd through the loop and a reverse VJP loop vs the adjoint solve.

    Needs torch (gradients come from autograd).
    """
    if opts.backend != "torch":
        raise SystemExit("bench adjoint needs --backend torch (gradients come from autograd)")
    import torch

    ws = Workspace(opts.backend, opts.device, opts.dtype)
    Wn, cn, x0n = _mlp_numpy(opts)
    W, b, x0 = ws.asarray(Wn), ws.asarray(cn), ws.asarray(x0n)
    W.requires_grad_(True)
    b.requires_grad_(True)
    fns = mlp_functions(W, b)
    weight = ws.asarray(np.random.default_rng(opts.seed + 2).standard_normal(
        (opts.batch, opts.length, opts.width)))
    # float64 reference: autograd through the loop in float64 (independent of pcrsolve)
    W64, b64 = (torch.as_tensor(a, dtype=torch.float64).requires_grad_(True) for a in (Wn, cn))
    loss64 = (mlp_functions(W64, b64)["loop"](torch.as_tensor(x0n))
              * weight.detach().cpu().double()).sum()
    ref = np.concatenate([g.numpy().ravel() for g in torch.autograd.grad(loss64, [W64, b64])])
    rows, baselines, notes = [], [], []
    for base in adjoint_baselines(ws, W, b, x0, weight):
        out, times, peak = measure(ws, base.run, opts.repeat)
        rows.append(Row(base.name, median(times), times,
                        relative_error(base.to_numpy(out), ref), peak))
        baselines.append(base.name)
        notes.append(f"  {base.name}: {base.note}")
    sol = solve(fns["step"], x0, opts.length, jacobian=fns["jacobian"], params=[W, b],
                tol=opts.tol)
    loss = (sol.states * weight).sum()
    grads, times, peak = measure(ws, lambda: torch.autograd.grad(loss, [W, b],
                                                                 retain_graph=True),
                                 opts.repeat)
    got = np.concatenate([ws.to_numpy(g).ravel() for g in grads])
    rows.append(Row("pcrsolve adjoint", median(times), times, relative_error(got, ref), peak,
                    {"forward iterations": sol.iterations}))
    notes.append("  pcrsolve adjoint: forward solved once, untimed; the backward's "
                 "reverse linear solve + one batched VJP")
    return Report("adjoint", {**_problem(opts, ws), "tol": opts.tol}, rows,
                  machine=machine_description(ws.backend, str(ws.device)),
                  baselines=baselines, notes=notes, slower_reason=SLOWER_REASON_ADJOINT)

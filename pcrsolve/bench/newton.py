"""``bench newton`` and ``bench adjoint``: a tanh MLP recurrence, parallel vs the loop.

The recurrence is ``x_l = tanh(W_l x_{l-1} + b_l)`` with ``W_l ~ N(0, 1/w)``, a batch of
``B`` chains. The reference is the plain loop a user writes first (eager, one step at a
time). pcrsolve gets the analytic Jacobian ``diag(1 - x_l^2) W_l`` (dense for "newton",
its diagonal for "quasi"), as an adapter would supply it.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from ..factored import Factored
from ..newton import solve
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

__all__ = ["mlp_functions", "run_adjoint", "run_newton", "tanh_mlp"]


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
        fused kernel) / ``"diag"`` (diagonal) for :func:`pcrsolve.solve`, and ``"loop"``:
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

    def loop(x0: Any) -> Any:
        out, x = [], x0
        for l in range(W.shape[0]):
            x = xp.tanh(xp.matmul(x, xp.matrix_transpose(W[l, ...])) + b[l, ...])
            out.append(x)
        return xp.stack(out, axis=-2)

    return {"step": step, "jacobian": jacobian, "factored": factored, "diag": diag_jacobian,
            "loop": loop}


def _problem(opts: Any, ws: Workspace) -> dict[str, Any]:
    return {"backend": ws.backend, "device": str(ws.device), "dtype": opts.dtype,
            "L": opts.length, "w": opts.width, "batch": opts.batch, "repeat": opts.repeat}


@suite("newton")
def run_newton(opts: Any) -> Report:
    """The eager loop vs Newton-PCR in each requested mode (forward pass)."""
    ws = Workspace(opts.backend, opts.device, opts.dtype)
    W, b = tanh_mlp(ws, opts.length, opts.width, opts.seed)
    fns = mlp_functions(W, b)
    x0 = ws.asarray(np.random.default_rng(opts.seed + 1).standard_normal((opts.batch,
                                                                            opts.width)))
    tol = opts.tol
    modes = opts.mode or ["newton", "quasi"]
    ref_out, times, peak = measure(ws, lambda: fns["loop"](x0), opts.repeat)
    ref = ws.to_numpy(ref_out)
    rows = [Row("loop (eager)", median(times), times, 0.0, peak)]
    for mode in modes:
        kw: dict[str, Any] = {"mode": mode, "tol": tol, "throw": False}
        if mode == "newton":
            kw["jacobian"] = fns["jacobian"]
        elif mode == "quasi":
            kw.update(jacobian=fns["diag"], jacobian_structure="diagonal")
        sol, times, peak = measure(ws, lambda kw=kw: solve(fns["step"], x0, opts.length, **kw),
                                   opts.repeat)
        rows.append(Row(f"pcrsolve {mode}", median(times), times,
                        relative_error(ws.to_numpy(sol.states), ref), peak,
                        {"iterations": sol.iterations, "status": sol.status.name,
                         "linear": sol.linear_method}))
    return Report("newton", {**_problem(opts, ws), "tol": tol}, rows, "loop (eager)",
                  machine_description(ws.backend, str(ws.device)))


@suite("adjoint")
def run_adjoint(opts: Any) -> Report:
    """Backward pass: autograd through the eager loop vs the adjoint solve (torch)."""
    if opts.backend != "torch":
        raise SystemExit("bench adjoint needs --backend torch (gradients come from autograd)")
    import torch

    ws = Workspace(opts.backend, opts.device, opts.dtype)
    W, b = tanh_mlp(ws, opts.length, opts.width, opts.seed)
    W.requires_grad_(True)
    b.requires_grad_(True)
    fns = mlp_functions(W, b)
    x0 = ws.asarray(np.random.default_rng(opts.seed + 1).standard_normal((opts.batch,
                                                                            opts.width)))
    weight = torch.randn(opts.batch, opts.length, opts.width, dtype=ws.dtype,
                         device=ws.device)

    def backward_of(states: Any) -> Any:
        loss = (states * weight).sum()

        def run() -> Any:
            return torch.autograd.grad(loss, [W, b], retain_graph=True)

        return run

    loop_grads, times, peak = measure(ws, backward_of(fns["loop"](x0)), opts.repeat)
    rows = [Row("autograd through loop", median(times), times, 0.0, peak)]
    ref = np.concatenate([ws.to_numpy(g).ravel() for g in loop_grads])
    sol = solve(fns["step"], x0, opts.length, jacobian=fns["jacobian"], params=[W, b],
                tol=opts.tol)
    grads, times, peak = measure(ws, backward_of(sol.states), opts.repeat)
    got = np.concatenate([ws.to_numpy(g).ravel() for g in grads])
    rows.append(Row("pcrsolve adjoint", median(times), times, relative_error(got, ref), peak,
                    {"forward iterations": sol.iterations}))
    return Report("adjoint", {**_problem(opts, ws), "tol": opts.tol}, rows,
                  "autograd through loop", machine_description(ws.backend, str(ws.device)))

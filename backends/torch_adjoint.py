"""Gradients through a Newton-PCR solution for torch: the adjoint method.

With the converged states ``X`` and the loss gradient ``G_l = dloss/dx_l``, the adjoint
states satisfy the *linear* reverse recurrence

    lam_L = G_L,   lam_l = J_{l+1}^T lam_{l+1} + G_l,   J_l = df_l/dx (x_{l-1}),

the transpose of the Newton system at the solution: one parallel linear solve, no Newton
iterations and no tape through them. Then one batched VJP of all steps at once,
``sum_l (df_l/d(x_{l-1}, theta))^T lam_l``, gives the gradients of ``x0`` (its ``l = 1``
term) and of the parameters.

Both are plain torch operations, so with ``create_graph=True`` the gradients are
themselves differentiable (gradient penalties, Hessian-vector products, meta-learning):
the Jacobian blocks then come from reverse-mode autodiff of the step (``w`` VJPs), the
transposed solve takes the differentiable generic path, and derivatives with respect to
the states flow back through this adjoint once more. Without ``create_graph`` nothing
is taped and the backward costs what it did. A step whose own backward is
once-differentiable gets first-order gradients, and a clear error on a second backward.
"""

from __future__ import annotations

from typing import Any

import torch

from .torch_params import param_list

__all__ = ["adjoint_gradients", "adjoint_solve"]


class _Adjoint(torch.autograd.Function):
    """``x0, params -> X`` by a tape-free solve; its backward is the adjoint solve.

    The backward is built from differentiable torch operations (a linear solve of the
    transposed system and a VJP of the batched step), so when it runs with
    ``create_graph=True`` its result is itself differentiable: gradient penalties,
    Hessian-vector products and higher derivatives work. The saved states ``X`` are
    this function's output, so derivatives of the backward with respect to them flow
    back through this function once more.
    """

    @staticmethod
    def forward(ctx: Any, run: Any, x0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        sol = run(x0.detach())
        ctx.run = run
        ctx.save_for_backward(x0, sol.states)
        return sol.states

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        x0, X = ctx.saved_tensors
        # grad mode is on inside backward exactly when the caller asked for create_graph
        return (None, *adjoint_gradients(ctx.run, x0, X, G,
                                         create_graph=torch.is_grad_enabled()))


def adjoint_gradients(run: Any, x0: torch.Tensor, X: torch.Tensor, G: torch.Tensor, *,
                      create_graph: bool = False) -> list[torch.Tensor | None]:
    """Gradients of ``sum(G * X)`` with respect to ``x0`` and ``run.params``.

    Parameters
    ----------
    run : _Run
        The forward solve (its step, Jacobian options and parameters).
    x0 : torch.Tensor, shape (..., w)
    X : torch.Tensor, shape (..., L, w)
        The solution.
    G : torch.Tensor, shape (..., L, w)
        ``dloss/dX``.
    create_graph : bool, default False
        Build the result from differentiable operations (for second-order gradients).
        Then the Jacobian blocks come from reverse-mode autodiff of the step evaluated
        for the VJP (``w`` batched VJPs with ``create_graph``), whatever ``jacobian`` or
        ``jvp`` the forward solve used, so that they are differentiable functions of the
        states and parameters; a user ``jacobian`` need not be. Otherwise everything runs
        without a tape, with the forward solve's Jacobian source.

    Returns
    -------
    list
        ``[dx0, dparam_0, ...]`` (``None`` for a parameter the step does not use).
    """
    import pcrsolve

    step, params = run.step, run.params
    # the step was run in the working dtype (float32 for half-precision states)
    work = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
    if not create_graph:
        x0, X, G = x0.detach(), X.detach(), G.detach()
    X, G = X.to(work), G.to(work)
    Xprev = torch.cat([x0.to(work).expand(*X.shape[:-2], X.shape[-1])[..., None, :],
                       X[..., :-1, :]], dim=-2)
    idx = torch.arange(X.shape[-2], device=X.device)
    # The step is differentiated at a detached copy Z of the states: the VJP and the
    # Jacobian are *partial* derivatives at fixed states (the states depend on the
    # parameters themselves, through this very adjoint). Under create_graph, _AtPoint
    # then hands derivatives with respect to Z on to the states.
    Z = Xprev.detach().requires_grad_(True)
    with torch.enable_grad():
        out = step(Z, idx)
        J = _reverse_jacobian(out, Z) if create_graph else None
    if J is None:
        J, _ = run.jacobian(Xprev, idx)
    system = pcrsolve.BidiagonalSystem(J, G, structure="dense", check_finite=False)
    # the backward system is dense whatever the forward mode: let "auto" choose for it
    # (under create_graph its blocks require grad, which keeps the differentiable path)
    lam = pcrsolve.solve_linear(system.transpose(G))
    wanted = [p for p in params if p.requires_grad]  # (a given tensor may not need one)
    with torch.enable_grad():
        found = iter(torch.autograd.grad(out, [Z, *wanted], grad_outputs=lam,
                                         allow_unused=True, create_graph=create_graph))
    grads = [next(found)] + [next(found) if p.requires_grad else None for p in params]
    if grads[0] is None:  # a step that ignores its state
        grads[0] = torch.zeros_like(Z)
    if create_graph:
        grads = _AtPoint.reattach(Xprev, Z, grads)
        if _has_once_differentiable(J):
            grads = _Refuse.wrap(grads)
    gx0 = grads[0][..., 0, :]
    # sum over batch dims that x0 was broadcast along
    while gx0.ndim > x0.ndim:
        gx0 = gx0.sum(0)
    for d in range(x0.ndim):
        if x0.shape[d] == 1 and gx0.shape[d] != 1:
            gx0 = gx0.sum(d, keepdim=True)
    return [gx0.to(x0.dtype), *grads[1:]]


class _AtPoint(torch.autograd.Function):
    """Values computed at a detached leaf ``Z``, reattached to the tensor ``Y`` it stands for.

    Forward: the values themselves. Backward: the cotangents go on to the values' own
    graph (their dependence on everything but ``Z``) and, through ``Z``'s graph, to ``Y``:
    ``dY = (d values / dZ)^T v``. Under create_graph that derivative is again reattached,
    so derivatives of every order see the values as functions of ``Y``.
    """

    @staticmethod
    def reattach(Y: torch.Tensor, Z: torch.Tensor,
                 values: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``values`` (computed from the leaf ``Z``) as differentiable functions of ``Y``."""
        pos = [i for i, v in enumerate(values) if v is not None and v.requires_grad]
        if not pos:
            return values
        tied = _AtPoint.apply(Y, Z, *(values[i] for i in pos))
        out = list(values)
        for i, t in zip(pos, tied, strict=True):
            out[i] = t
        return out

    @staticmethod
    def forward(ctx: Any, Y: torch.Tensor, Z: torch.Tensor,
                *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(Y)
        ctx.Z, ctx.values = Z, values  # with their graphs: backward differentiates them
        return tuple(v.clone() for v in values)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[Any, ...]:
        (Y,) = ctx.saved_tensors
        pairs = [(v, c) for v, c in zip(ctx.values, cotangents, strict=True)
                 if c is not None]
        create = torch.is_grad_enabled()
        dZ = torch.autograd.grad([v for v, _ in pairs], ctx.Z, [c for _, c in pairs],
                                 retain_graph=True, create_graph=create, allow_unused=True,
                                 materialize_grads=True)[0]
        if create:
            dZ = _AtPoint.reattach(Y, ctx.Z, [dZ])[0]
        return (dZ, None, *cotangents)


_ONCE_MESSAGE = (
    "pcrsolve.solve: a second-order gradient through the solution needs a step whose own "
    "backward is differentiable, and `step` uses an operation marked once_differentiable "
    "(a custom autograd.Function); first-order gradients are fine. Give that operation a "
    "differentiable backward, or differentiate only once."
)


class _Refuse(torch.autograd.Function):
    """Identity on first-order gradients that must not be differentiated again."""

    @staticmethod
    def wrap(values: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """``values`` whose every use in a further backward raises :data:`_ONCE_MESSAGE`."""
        pos = [i for i, v in enumerate(values) if v is not None and v.requires_grad]
        out = list(values)
        if pos:
            for i, t in zip(pos, _Refuse.apply(*(values[i] for i in pos)), strict=True):
                out[i] = t
        return out

    @staticmethod
    def forward(ctx: Any, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(v.clone() for v in values)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[Any, ...]:
        raise RuntimeError(_ONCE_MESSAGE)


def _has_once_differentiable(t: torch.Tensor) -> bool:
    """Whether ``t``'s graph holds the mark (``DelayedError``) of a once-differentiable op.

    torch's own mark only fires on a path to the requested inputs, which a gradient with
    respect to the parameters may not take: the adjoint checks for it and refuses instead.
    """
    seen: set[Any] = set()
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if type(node).__name__ in ("Error", "DelayedError"):
            return True
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def _reverse_jacobian(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Dense blocks ``d out_l / d x_l``, ``(..., L, w, w)``, differentiable (create_graph).

    Row ``i`` of every block is the VJP with ``e_i``: ``w`` backward calls of the batched
    step. Reverse mode needs only what the VJP itself needs (no forward-mode AD), and
    plain calls rather than a vmapped one (``is_grads_batched``) keep the marks of
    once-differentiable operations, which vmap drops silently.
    """
    w = out.shape[-1]
    # the basis requires grad (a dummy leaf) so that a step whose backward is
    # once_differentiable marks the rows, and double backward raises instead of
    # silently treating them as constants
    eye = torch.eye(w, dtype=out.dtype, device=out.device).requires_grad_(True)
    rows = [torch.autograd.grad(out, x, grad_outputs=eye[i].expand_as(out), create_graph=True,
                                retain_graph=True, materialize_grads=True)[0]
            for i in range(w)]
    return torch.stack(rows, dim=-2)


class _Run:
    """The forward solve as a callable of ``x0``, remembering what the backward needs."""

    def __init__(self, solve_impl: Any, step: Any, length: int, params: list[torch.Tensor],
                 options: dict) -> None:
        self.solve_impl, self.step, self.length = solve_impl, step, length
        self.params, self.options = params, options
        self.solution = None

    def __call__(self, x0: torch.Tensor) -> Any:
        with torch.no_grad():
            self.solution = self.solve_impl(self.step, x0, self.length, **self.options)
        return self.solution

    def jacobian(self, Xprev: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Dense Jacobian blocks at the solution (exact gradients whatever the mode)."""
        from pcrsolve.factored import Factored
        from pcrsolve.jacobians import jacobian_provider

        opts = self.options
        with torch.no_grad():
            if opts["jacobian"] is not None and opts["jacobian_structure"] == "dense":
                J = opts["jacobian"](Xprev, idx)
                if isinstance(J, Factored):  # the transposed solve takes dense blocks
                    J = J.dense(_namespace(Xprev))
                return J, "dense"
            if opts["jvp"] is not None:
                jac = jacobian_provider(opts["jvp"], "dense", _namespace(Xprev))
            else:
                from .torch_backend import TorchBackend

                jac = TorchBackend(_namespace(Xprev)).jacobian(self.step, "dense")
            return jac(Xprev, idx), "dense"


def _namespace(x: torch.Tensor) -> Any:
    import array_api_compat

    return array_api_compat.array_namespace(x)


def adjoint_solve(
    solve_impl: Any, step: Any, x0: torch.Tensor, length: int, params: Any, options: dict
) -> Any:
    """Solve, returning a Solution whose ``states`` carry an adjoint-method gradient.

    Parameters
    ----------
    solve_impl : callable
        The backend-independent solver (``pcrsolve.newton._solve_impl``).
    step : callable
    x0 : torch.Tensor, shape (..., w)
    length : int
    params : sequence of torch.Tensor or torch.nn.Module or None
    options : dict
        The remaining keyword arguments of :func:`pcrsolve.solve`.

    Returns
    -------
    pcrsolve.Solution
    """
    plist = param_list(params)
    run = _Run(solve_impl, step, length, plist, options)
    states = _Adjoint.apply(run, x0, *plist)
    sol = run.solution
    sol.states = states
    return sol

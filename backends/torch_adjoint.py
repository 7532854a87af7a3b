"""Gradients through a Newton-PCR solution for torch: the adjoint method.

With the converged states ``X`` and the loss gradient ``G_l = dloss/dx_l``, the adjoint
states satisfy the *linear* reverse recurrence

    lam_L = G_L,   lam_l = J_{l+1}^T lam_{l+1} + G_l,   J_l = df_l/dx (x_{l-1}),

the transpose of the Newton system at the solution: one parallel linear solve, no Newton
iterations and no tape through them. Then one batched VJP of all steps at once,
``sum_l (df_l/d(x_{l-1}, theta))^T lam_l``, gives the gradients of ``x0`` (its ``l = 1``
term) and of the parameters.
"""

from __future__ import annotations

from typing import Any

import torch

from .torch_params import param_list

__all__ = ["adjoint_solve"]


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, run: Any, x0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        sol = run(x0.detach())
        ctx.run = run
        ctx.save_for_backward(x0, sol.states)
        return sol.states

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[Any, ...]:
        import pcrsolve

        x0, X = ctx.saved_tensors
        step, jac_of, params = ctx.run.step, ctx.run.jacobian, ctx.run.params
        # the step was run in the working dtype (float32 for half-precision states)
        work = torch.float32 if X.dtype in (torch.float16, torch.bfloat16) else X.dtype
        X, G = X.to(work), G.to(work)
        Xprev = torch.cat([x0.detach().to(work).expand(*X.shape[:-2], X.shape[-1])[..., None, :],
                           X[..., :-1, :]], dim=-2)
        idx = torch.arange(X.shape[-2], device=X.device)
        J, structure = jac_of(Xprev, idx)
        system = pcrsolve.BidiagonalSystem(J, G, structure=structure, check_finite=False)
        # the backward system is dense whatever the forward mode: let "auto" choose for it
        lam = pcrsolve.solve_linear(system.transpose(G))
        with torch.enable_grad():
            Xp = Xprev.detach().requires_grad_(True)
            out = step(Xp, idx)
            grads = torch.autograd.grad(out, [Xp, *params], grad_outputs=lam,
                                        allow_unused=True)
        gx0 = grads[0][..., 0, :]
        # sum over batch dims that x0 was broadcast along
        while gx0.ndim > x0.ndim:
            gx0 = gx0.sum(0)
        for d in range(x0.ndim):
            if x0.shape[d] == 1 and gx0.shape[d] != 1:
                gx0 = gx0.sum(d, keepdim=True)
        return (None, gx0.to(x0.dtype), *grads[1:])


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

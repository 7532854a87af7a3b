"""Newton-PCR captured in one CUDA graph (torch): small problems without launch overhead.

A dynamic :func:`pcrsolve.solve` launches a few dozen kernels per iteration and reads a few
scalars back to the host to decide whether to go on. For small problems on a GPU those
launches and round trips cost more than the arithmetic. :class:`CapturedNewton` records a
fixed number of iterations (:func:`pcrsolve.iterate`, which never synchronises) in one
CUDA graph once, and then replays it for new initial states: one launch per solve.
"""

from __future__ import annotations

from typing import Any

import torch

from pcrsolve.errors import InputError

__all__ = ["CapturedNewton"]


class CapturedNewton:
    """A fixed number of Newton-PCR iterations recorded in one CUDA graph.

    Parameters
    ----------
    step : callable
        As in :func:`pcrsolve.solve`. The tensors it closes over are captured by address:
        update them in place (``.copy_()``, optimiser steps) and the replays see the new
        values; rebinding them to new tensors is not seen.
    x0 : torch.Tensor, shape (..., w)
        An example initial state: later calls must match its shape, dtype and device.
    length : int
        ``L``.
    iterations : int
        Iterations per solve (e.g. a :func:`pcrsolve.solve`'s ``iterations`` on a
        representative input, plus a margin). Check results with :func:`pcrsolve.residual`.
    check : bool, default True
        Also compute, inside the graph, every chain's largest residual
        ``max_l |f_l(x_{l-1}) - x_l|`` (one more step evaluation): after a call,
        :attr:`residual` holds it on the device and :meth:`converged` compares it with a
        tolerance, one host synchronisation only when asked.
    **kwargs
        ``jacobian``, ``jacobian_structure``, ``jvp``, ``mode``, ``linear_method`` as in
        :func:`pcrsolve.iterate`.

    Attributes
    ----------
    residual : torch.Tensor, shape (...), or None
        After a call with ``check=True``: the largest residual of each chain.

    Notes
    -----
    On a CPU (or any non-CUDA device) nothing is captured and each call runs
    :func:`pcrsolve.iterate` eagerly, so code using this class runs everywhere.

    Examples
    --------
    >>> import torch
    >>> from pcrsolve.backends.torch_graphs import CapturedNewton
    >>> W = torch.randn(64, 4, 4) / 4
    >>> step = lambda x, l: torch.tanh((W[l] @ x.unsqueeze(-1)).squeeze(-1))
    >>> solver = CapturedNewton(step, torch.zeros(8, 4), 64, iterations=10)
    >>> solver(torch.randn(8, 4)).shape
    torch.Size([8, 64, 4])
    >>> solver.converged(1e-5)
    True
    """

    def __init__(self, step: Any, x0: torch.Tensor, length: int, iterations: int, *,
                 check: bool = True, **kwargs: Any) -> None:
        from array_api_compat import array_namespace

        import pcrsolve
        from pcrsolve.namespace import working_dtype

        if not isinstance(x0, torch.Tensor):
            raise InputError(f"`x0` must be a torch.Tensor; got {type(x0).__name__}")

        def run(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if not check:
                return pcrsolve.iterate(step, z, length, iterations, **kwargs), None
            # the states in the working dtype (float32 for half precision), as the step
            # sees them: the residual measures convergence, not the output's rounding
            zw = z.to(working_dtype({"x0": z}, array_namespace(z))[0])
            X = pcrsolve.iterate(step, zw, length, iterations, **kwargs)
            res = pcrsolve.residual(step, zw, X).abs().amax(dim=(-2, -1))
            return X.to(z.dtype), res

        self._run = run
        self._x0 = x0.detach().clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self._out: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.residual: torch.Tensor | None = None
        if self._x0.device.type == "cuda":
            with torch.no_grad():
                side = torch.cuda.Stream(self._x0.device)
                side.wait_stream(torch.cuda.current_stream(self._x0.device))
                with torch.cuda.stream(side):
                    self._run(self._x0)  # warm-up: compilation, autotuning, allocations
                torch.cuda.current_stream(self._x0.device).wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self._out = self._run(self._x0)

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """The states ``(..., L, w)`` after the captured iterations from ``x0``."""
        if (not isinstance(x0, torch.Tensor) or x0.shape != self._x0.shape
                or x0.dtype != self._x0.dtype or x0.device != self._x0.device):
            got = (f"shape {tuple(x0.shape)}, {x0.dtype} on {x0.device}"
                   if isinstance(x0, torch.Tensor) else type(x0).__name__)
            raise InputError(
                f"`x0` must match the captured example (shape {tuple(self._x0.shape)}, "
                f"{self._x0.dtype} on {self._x0.device}); got {got}"
            )
        if self.graph is None:
            with torch.no_grad():
                X, self.residual = self._run(x0)
            return X
        self._x0.copy_(x0)
        self.graph.replay()
        assert self._out is not None
        X, res = self._out
        self.residual = None if res is None else res.clone()
        return X.clone()

    def converged(self, tol: float) -> bool:
        """Whether every chain of the last call has residual ``<= tol`` (one host sync).

        Parameters
        ----------
        tol : float
            Absolute tolerance on ``max_l |f_l(x_{l-1}) - x_l|``.

        Raises
        ------
        InputError
            Before any call, or when built with ``check=False``.
        """
        if self.residual is None:
            raise InputError("`converged` needs a call first, and a solver built with "
                             "check=True")
        return bool((self.residual <= tol).all())

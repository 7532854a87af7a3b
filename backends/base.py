"""The backend interface: what an array library adds beyond the Array API.

A :class:`Backend` is looked up from an array namespace through the registry in
:mod:`pcrsolve.backends`. The base class works for any Array-API namespace (it is what
``array_api_strict`` and unknown libraries get); subclasses add device handling,
synchronisation for timing, memory accounting, automatic differentiation and kernels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Backend", "CostModel", "MemoryTracker"]


@dataclass(frozen=True)
class CostModel:
    """Rough per-backend constants that ``method="auto"`` uses to choose a solver.

    Attributes
    ----------
    step_overhead : float
        Seconds of fixed cost per step of a loop (interpreter + kernel launches).
    level_overhead : float
        Seconds of fixed cost per level (phase) of a parallel reduction.
    block_overhead : float
        Seconds per dense block in a batched matrix product (small-matrix inefficiency).
    seq_flop_time : float
        Seconds per multiply-add of one step's matrix-vector product in a loop.
    par_flop_time : float
        Seconds per multiply-add of a batched dense block product.
    elementwise_time : float
        Seconds per element of a batched elementwise update, copies included.
    loop_overhead : float
        Seconds of fixed cost of one call of the sequential loop (argument handling, output
        allocation), paid once whatever ``L`` is.
    """

    step_overhead: float = 2.5e-6
    level_overhead: float = 6e-6
    block_overhead: float = 6e-8
    seq_flop_time: float = 1e-9
    par_flop_time: float = 1.5e-10
    elementwise_time: float = 2.5e-9
    loop_overhead: float = 0.0


class MemoryTracker:
    """Measures the peak memory allocated between :meth:`start` and :meth:`stop`.

    The base tracker measures nothing: :meth:`stop` returns ``None`` ("not available").
    """

    def start(self) -> None:
        """Begin tracking (resets the peak)."""

    def stop(self) -> int | None:
        """Stop tracking and return the peak number of bytes allocated, or ``None``."""
        return None


class Backend:
    """What pcrsolve knows about one array library.

    Parameters
    ----------
    xp : module
        The Array-API namespace (as returned by ``array_api_compat.array_namespace``).
    """

    #: Registry name of the library ("numpy", "torch", "cupy", "array_api_strict", ...).
    name: str = "generic"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def __repr__(self) -> str:
        return f"<pcrsolve backend {self.name!r}>"

    # -- devices and timing -------------------------------------------------------------
    def is_accelerator(self, device: Any) -> bool:
        """Whether ``device`` is a GPU (or other accelerator) rather than the host CPU."""
        return False

    def synchronize(self, device: Any) -> None:
        """Block until all work queued on ``device`` has finished (for honest timings)."""

    def timer(self) -> float:
        """A monotonic clock in seconds; call :meth:`synchronize` before reading it."""
        return time.perf_counter()

    def host_floats(self, values: Any) -> list[float]:
        """A 1-d array's values as Python floats, in one device-to-host transfer.

        Parameters
        ----------
        values : array, shape (n,)

        Returns
        -------
        list of float
        """
        return [float(values[i]) for i in range(values.shape[0])]

    def memory_tracker(self, device: Any) -> MemoryTracker:
        """A tracker of peak memory on ``device`` (may measure nothing)."""
        return MemoryTracker()

    def quiet_float_errors(self) -> contextlib.AbstractContextManager[Any]:
        """Silence overflow/invalid warnings inside a solve that checks finiteness itself."""
        return contextlib.nullcontext()

    # -- fused kernels --------------------------------------------------------------------------
    def fast_linear(self, system: Any) -> Any:
        """A fused kernel solving ``system`` (a callable of no arguments), or None.

        A fast path is an optimisation of a core algorithm, never a different answer; the
        tests compare it with the generic path.
        """
        return None

    def compiled_factored(self, blocks: Any, b: Any) -> Any:
        """A compiled CPU kernel for factored blocks (as :meth:`fast_factored`), or None.

        Unlike :meth:`fast_factored` (the accelerator kernels, which ``"auto"`` takes on
        accelerators only), ``"auto"`` takes this one wherever it applies: it never forms
        the dense blocks, so it is never slower than materialising them.
        """
        return None

    def fast_factored(self, blocks: Any, b: Any) -> Any:
        """A fused kernel for ``x_l = J_l x_{l-1} + b_l`` with factored ``J`` (or None).

        Parameters
        ----------
        blocks : pcrsolve.factored.Factored
            ``J_l = diag(scale_l) weight_l + identity I``, never materialised by the kernel.
        b : array, shape (..., L, w)

        Returns
        -------
        callable or None
            A callable of no arguments returning ``x`` of shape ``(..., L, w)``.
        """
        return None

    def sequential_linear(self, A: Any, b: Any, x0: Any, structure: Any) -> Any:
        """The sequential loop of a forward system in a form lean for this library, or None.

        ``method="sequential"`` is the reference every parallel solver is compared with, so
        it must not be slower than the loop a user would write: a backend may run it with
        plain Python floats (tiny states) or with in-place per-step updates into a
        preallocated output. ``None`` (the default) means: use the generic Array-API loop.

        Parameters
        ----------
        A : array, shape (..., L, w, w) / (..., L, w) / (..., L)
            Forward-oriented blocks (batch dimensions broadcastable against ``b``'s).
        b : array, shape (..., L, w)
        x0 : array, shape (..., w)
        structure : pcrsolve.blocks.Structure

        Returns
        -------
        array of shape (..., L, w), or None
        """
        return None

    def cyclic_reduction(self, A: Any, b: Any, x0: Any, structure: Any) -> Any:
        """Cyclic reduction of a forward system in a form lean for this library, or None.

        The same algorithm as :func:`pcrsolve.linear.cr.solve_cr` (the same pairing of
        equations), run with the library's own means: preallocated level buffers, in-place
        updates and strided writes instead of the fresh arrays and ``stack`` interleaving
        the Array API allows. ``None`` (the default) means: use the generic Array-API
        reduction.

        Parameters
        ----------
        A : array, shape (..., L, w, w) / (..., L, w) / (..., L)
            Forward-oriented blocks in the working dtype (batch dimensions broadcastable
            against ``b``'s).
        b : array, shape (..., L, w)
        x0 : array, shape (..., w)
        structure : pcrsolve.blocks.Structure

        Returns
        -------
        array of shape (..., L, w), or None
        """
        return None

    # -- solver selection -----------------------------------------------------------------
    def cost_model(self, device: Any) -> CostModel:
        """Constants for ``method="auto"`` on ``device``."""
        return CostModel()

    # -- automatic differentiation (overridden by libraries that have it) ------------------
    #: Whether :meth:`jvp` and :meth:`jacobian` use the library's own autodiff.
    has_autodiff: bool = False

    def requires_grad(self, x: Any) -> bool:
        """Whether ``x`` takes part in the library's gradient tape."""
        return False

    def jvp(self, step: Any) -> Any:
        """``jvp(x_prev, l, v)`` of ``step`` by the library's forward-mode autodiff."""
        raise NotImplementedError(f"the {self.name} backend has no automatic differentiation")

    def jacobian(self, step: Any, structure: str) -> Any:
        """``jac(x_prev, l)``: Jacobian blocks of ``step`` by the library's autodiff.

        The base version assembles them from :meth:`jvp` with ``w`` JVPs in one call.
        """
        from pcrsolve.jacobians import jacobian_provider

        return jacobian_provider(self.jvp(step), structure, self.xp)

    def value_and_jacobian(self, step: Any, structure: str) -> Any:
        """``pair(x_prev, l) -> (f, blocks)`` in one evaluation of ``step``, or None.

        What the Newton loop uses when the user supplies no Jacobian, so that an iteration
        evaluates the step once rather than once for its value and once inside the
        autodiff. None (the base version): the loop calls ``step`` and :meth:`jacobian`.
        """
        return None

    def check_no_hidden_grad(self, step: Any, x0: Any, params: Any = None) -> None:
        """Raise if ``step`` depends on tensors that require grad but not in ``params``."""

    def differentiable_solve(
        self, solve_impl: Any, step: Any, x0: Any, length: int, params: Any, options: dict
    ) -> Any:
        """Run ``solve_impl`` so that its states are differentiable (adjoint method)."""
        raise NotImplementedError(f"the {self.name} backend has no automatic differentiation")

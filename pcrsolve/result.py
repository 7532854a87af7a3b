"""The outcome of a nonlinear solve: :class:`Solution` and :class:`Status`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Solution", "Status"]


class Status(enum.Enum):
    """How a solve ended. Each member's ``message`` says what it means and what to try.

    Examples
    --------
    >>> from pcrsolve import Status
    >>> Status.MAX_ITER.message.split(";")[0]
    'the iteration did not converge within max_iter iterations'
    """

    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"
    FALLBACK = "fallback"

    @property
    def message(self) -> str:
        """What happened, and what to try next."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.CONVERGED: "converged: the residual max|f_l(x_{l-1}) - x_l| and the last "
    "update fell below atol + rtol * max|X| for every batch element",
    Status.MAX_ITER: "the iteration did not converge within max_iter iterations; raise "
    "max_iter (mode='newton' is exact after at most L iterations), use mode='newton' instead "
    "of a cheaper Jacobian mode, warm-start with init=, or pass fallback=True to finish "
    "with the sequential loop",
    Status.DIVERGED: "the residual grew by more than the divergence limit; the recurrence may "
    "be expanding or chaotic (parallel iteration does not pay off there): try damping=True, "
    "a warm start (init=), mode='newton', or fallback=True",
    Status.NONFINITE: "NaN or Inf appeared in the iterates or in the step function's output; "
    "check the step function on the states it was given, try damping=True, or pass "
    "fallback=True",
    Status.FALLBACK: "the parallel iteration failed (see fallback_reason) and the states were "
    "computed by the sequential loop instead",
}


@dataclass
class Solution:
    """The trajectory and an honest account of how it was obtained.

    Attributes
    ----------
    states : array, shape (..., L, w)
        ``x_1 .. x_L`` (``x0`` is not repeated).
    status : Status
        How the solve ended; ``status.message`` explains it.
    iterations : int
        Newton (or Picard/Jacobi) iterations performed: linear solves, not counting a
        fallback loop.
    residuals : list of float
        ``max |X - f(X_prev)|`` over all steps and batch elements, before the first
        iteration and after each one.
    updates : list of float
        ``max |X_new - X|`` of each iteration.
    converged_mask : array of bool, shape batch, or None
        Which batch elements met the tolerance (``None`` for the sequential mode).
    mode : str
        The Jacobian mode used.
    linear_method : str
        The linear solver used in each iteration ("auto" resolved).
    fallback_reason : Status or None
        Why the sequential loop was used, when ``status`` is ``FALLBACK``.
    """

    states: Any
    status: Status
    iterations: int
    residuals: list[float] = field(default_factory=list)
    updates: list[float] = field(default_factory=list)
    converged_mask: Any = None
    mode: str = "newton"
    linear_method: str = "auto"
    fallback_reason: Status | None = None

    @property
    def converged(self) -> bool:
        """Whether ``states`` solve the recurrence to the requested tolerance."""
        return self.status in (Status.CONVERGED, Status.FALLBACK)

    def __repr__(self) -> str:
        shape = tuple(getattr(self.states, "shape", ()))
        last = f"{self.residuals[-1]:.2e}" if self.residuals else "n/a"
        return (
            f"Solution(status={self.status.name}, iterations={self.iterations}, "
            f"mode={self.mode!r}, states shape={shape}, final residual={last})"
        )

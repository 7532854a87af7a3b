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
    Status.CONVERGED: "converged: the residual max|f_l(x_{l-1}) - x_l|, the last update and "
    "the error estimate fell below atol + rtol * max|X| for every batch element",
    Status.MAX_ITER: "the iteration did not converge within max_iter iterations; raise "
    "max_iter (every mode is exact after at most L iterations), use mode='newton' instead "
    "of a cheaper Jacobian mode, warm-start with init=, or pass fallback=True to finish "
    "with the sequential loop",
    Status.DIVERGED: "the residual grew by more than the divergence limit; the recurrence may "
    "be expanding or chaotic (parallel iteration does not pay off there): use the default "
    "globalisation='trust-region' instead of 'none', a warm start (init=), or fallback=True",
    Status.NONFINITE: "NaN or Inf appeared in the iterates or in the step function's output; "
    "check the step function on the states it was given (the sequential loop may overflow "
    "too), or pass fallback=True",
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
    globalisation : str
        ``"trust-region"`` or ``"none"``: how steps were accepted.
    lm_steps : int
        Levenberg–Marquardt trial steps taken (0 when every Newton step was accepted).
    note : str
        A diagnostic sentence (e.g. on chaos) for a solve that did not converge, or "".
    lyapunov_exponent : float or None
        (property) An estimate of the recurrence's largest Lyapunov exponent per step
        along the last iterate, from the Jacobians the solve used (the dense ones for
        ``mode="newton"``, their diagonals for ``"quasi"``; ``None`` for the other modes).
        Positive means chaos: no parallel method matches the loop beyond about
        ``log(1/eps) / lyapunov_exponent`` steps. Computed on first access (an
        ``O(L w^3)`` tree reduction), largest over the batch.
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
    globalisation: str = "none"
    lm_steps: int = 0
    note: str = ""
    _lyapunov: Any = field(default=None, repr=False, compare=False)

    def set_lyapunov(self, compute: Any) -> None:
        """Give the callable that computes :attr:`lyapunov_exponent` on first access."""
        self._lyapunov = compute

    @property
    def lyapunov_exponent(self) -> float | None:
        """The largest Lyapunov exponent per step along the solution (see the class doc)."""
        if callable(self._lyapunov):
            self._lyapunov = float(self._lyapunov())
        return self._lyapunov

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

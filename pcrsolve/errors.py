"""Exceptions raised by pcrsolve.

Every exception names the offending argument, what it got and what was expected.
The hierarchy lets callers catch broadly (:class:`PCRSolveError`) or narrowly; the
input errors also derive from the builtin exception a user would reach for first
(``ValueError`` or ``TypeError``).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendMismatchError",
    "ConvergenceError",
    "InputError",
    "InvalidSystemError",
    "NonFiniteError",
    "PCRSolveError",
    "StepFunctionError",
]


class PCRSolveError(Exception):
    """Base class of every exception raised by pcrsolve."""


class InputError(PCRSolveError, ValueError):
    """An argument has the wrong shape, dtype or value."""


class InvalidSystemError(InputError):
    """The arrays given for a :class:`~pcrsolve.BidiagonalSystem` do not form a valid system."""


class NonFiniteError(InputError):
    """An input holds NaN or Inf values."""


class BackendMismatchError(InputError, TypeError):
    """Arguments come from different array libraries or live on different devices."""


class StepFunctionError(InputError):
    """A user-supplied step, Jacobian or JVP function returned something unusable."""


class ConvergenceError(PCRSolveError, RuntimeError):
    """An iterative solve did not converge.

    Attributes
    ----------
    solution : pcrsolve.Solution
        The partial solution, with its status, iterations and residual history.
    """

    def __init__(self, message: str, solution: Any) -> None:
        super().__init__(message)
        self.solution = solution

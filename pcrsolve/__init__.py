"""pcrsolve: run sequential computations in parallel.

A computation of ``L`` steps in which each step depends only on the one before it is
rewritten as one block-bidiagonal system and solved in O(log L) parallel depth by
(Newton's method with) parallel cyclic reduction, on any Array-API library.
"""

from __future__ import annotations

from .errors import (
    BackendMismatchError,
    ConvergenceError,
    InputError,
    InvalidSystemError,
    NonFiniteError,
    PCRSolveError,
    StepFunctionError,
)
from .linear import METHODS, choose_method, solve_linear
from .system import BidiagonalSystem

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "BackendMismatchError",
    "BidiagonalSystem",
    "ConvergenceError",
    "InputError",
    "InvalidSystemError",
    "NonFiniteError",
    "PCRSolveError",
    "StepFunctionError",
    "choose_method",
    "solve_linear",
]

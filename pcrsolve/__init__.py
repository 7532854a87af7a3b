"""pcrsolve: run sequential computations in parallel.

A computation of ``L`` steps in which each step depends only on the one before it is
rewritten as one block-bidiagonal system and solved in O(log L) parallel depth by
(Newton's method with) parallel cyclic reduction, on any Array-API library.
"""

from __future__ import annotations

from . import _source_tree  # noqa: F401  (first: maps backends/ in a source checkout)
from .errors import (
    BackendMismatchError,
    ConvergenceError,
    InputError,
    InvalidSystemError,
    NonFiniteError,
    PCRSolveError,
    StepFunctionError,
)
from .factored import Factored
from .fixed import iterate, residual
from .linear import METHODS, choose_method, solve_linear
from .newton import MODES, default_tolerance, solve
from .result import Solution, Status
from .steps import vectorize_step
from .system import BidiagonalSystem
from .tridiagonal import TridiagonalSystem, solve_tridiagonal

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "MODES",
    "BackendMismatchError",
    "BidiagonalSystem",
    "ConvergenceError",
    "Factored",
    "InputError",
    "InvalidSystemError",
    "NonFiniteError",
    "PCRSolveError",
    "Solution",
    "Status",
    "StepFunctionError",
    "TridiagonalSystem",
    "choose_method",
    "default_tolerance",
    "iterate",
    "residual",
    "solve",
    "solve_linear",
    "solve_tridiagonal",
    "vectorize_step",
]

"""Benchmarks: ``python -m pcrsolve bench SUITE``. Each suite compares, in one run, the
sequential loop with every parallel method on the same problem."""

from __future__ import annotations

from . import distributed, gpu, linear, newton, paper, robust  # noqa: F401  (register the suites)
from .harness import SUITES, Report, Row, Workspace, measure, suite

__all__ = ["SUITES", "Report", "Row", "Workspace", "measure", "suite"]

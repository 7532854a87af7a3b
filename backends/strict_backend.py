"""array_api_strict: the minimal Array-API implementation the core is tested against."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .base import Backend

__all__ = ["StrictBackend"]


class StrictBackend(Backend):
    """Backend for ``array_api_strict`` (no extras: it proves the core is portable)."""

    name = "array_api_strict"

    def quiet_float_errors(self) -> contextlib.AbstractContextManager[Any]:
        # array_api_strict computes with NumPy underneath, which warns on overflow
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

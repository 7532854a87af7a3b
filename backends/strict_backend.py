"""array_api_strict: the minimal Array-API implementation the core is tested against."""

from __future__ import annotations

from .base import Backend

__all__ = ["StrictBackend"]


class StrictBackend(Backend):
    """Backend for ``array_api_strict`` (no extras: it proves the core is portable)."""

    name = "array_api_strict"

"""Backend registry: from an array namespace to what that array library adds.

Backends are found by the *name* of the namespace, so looking one up never imports a
library that the caller has not already imported: solving with NumPy does not import
torch or cupy. Each entry is imported on first use.

Examples
--------
>>> import numpy as np
>>> import array_api_compat
>>> from pcrsolve.backends import get_backend
>>> get_backend(array_api_compat.array_namespace(np.zeros(3))).name
'numpy'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import Backend, CostModel, MemoryTracker

__all__ = [
    "Backend",
    "CostModel",
    "MemoryTracker",
    "get_backend",
    "namespace_name",
    "register_backend",
]

# name -> "module:ClassName" (imported lazily) or a factory already registered.
_ENTRIES: dict[str, str | Callable[[Any], Backend]] = {
    "numpy": "pcrsolve.backends.numpy_backend:NumpyBackend",
    "torch": "pcrsolve.backends.torch_backend:TorchBackend",
    "cupy": "pcrsolve.backends.cupy_backend:CupyBackend",
    "array_api_strict": "pcrsolve.backends.strict_backend:StrictBackend",
}
_CACHE: dict[tuple[str, int], Backend] = {}


def namespace_name(xp: Any) -> str:
    """The registry name of an Array-API namespace.

    ``array_api_compat.numpy`` and ``numpy`` are both ``"numpy"``; ``jax.numpy`` is
    ``"jax"``.

    Parameters
    ----------
    xp : module
        An array namespace.

    Returns
    -------
    str
    """
    name = getattr(xp, "__name__", type(xp).__name__)
    if name.startswith("array_api_compat."):
        name = name[len("array_api_compat.") :]
    return name.split(".")[0]


def register_backend(name: str, factory: str | Callable[[Any], Backend]) -> None:
    """Register (or replace) the backend used for the namespace called ``name``.

    Parameters
    ----------
    name : str
        Namespace name as returned by :func:`namespace_name`.
    factory : str or callable
        ``"module:Class"`` imported on first use, or a callable taking the namespace.
    """
    _ENTRIES[name] = factory
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def get_backend(xp: Any) -> Backend:
    """The :class:`Backend` for namespace ``xp`` (generic if the library is unknown).

    Parameters
    ----------
    xp : module
        An Array-API namespace.

    Returns
    -------
    Backend
    """
    name = namespace_name(xp)
    key = (name, id(xp))
    backend = _CACHE.get(key)
    if backend is None:
        entry = _ENTRIES.get(name)
        if entry is None:
            backend = Backend(xp)
            backend.name = name
        elif isinstance(entry, str):
            module_name, _, cls_name = entry.partition(":")
            backend = getattr(importlib.import_module(module_name), cls_name)(xp)
        else:
            backend = entry(xp)
        _CACHE[key] = backend
    return backend

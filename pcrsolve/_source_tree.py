"""Importing :mod:`pcrsolve` from a source checkout: map ``backends/`` to ``pcrsolve.backends``.

The backends live in the repository's top-level ``backends/`` folder, which the installed
package maps to ``pcrsolve.backends`` (``[tool.setuptools.package-dir]`` in
``pyproject.toml``). When Python imports the ``pcrsolve/`` folder straight from a checkout
(``python -m pcrsolve`` or ``python -m pytest`` at the repository root, where the current
directory comes first on ``sys.path`` and shadows any installed copy), that mapping does
not apply; this module registers the checkout's ``backends/`` under the same name. A built
package already holds its backends and is left alone.
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__: list[str] = []


def _map_source_backends() -> None:
    """Register ``<checkout>/backends`` as ``pcrsolve.backends`` unless it is there."""
    name = f"{__package__}.backends"
    if name in sys.modules:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "backends")):
        return  # a built package: the backends were installed inside it
    folder = os.path.join(os.path.dirname(here), "backends")
    init = os.path.join(folder, "__init__.py")
    if not os.path.isfile(init):
        return  # no checkout around us: leave it to the installed mapping
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    # what the import system does for a submodule it loads: make it an attribute of the
    # package, so that `import pcrsolve.backends; pcrsolve.backends.X` works
    sys.modules[__package__].backends = module


_map_source_backends()

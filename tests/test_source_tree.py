"""Importing pcrsolve straight from the checkout (no install mapping) finds its backends."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Drop every import hook an editable install adds, so that `pcrsolve` comes from the
# checkout on sys.path alone, as it does after a non-editable `pip install .` run at the
# repository root (the checkout's `pcrsolve/` shadows the installed copy).
_SCRIPT = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path.insert(0, {root!r})
import numpy as np
import pcrsolve
import pcrsolve.backends as backends
from pcrsolve.backends.numpy_backend import NumpyBackend
print(backends.__file__)
print(type(backends.get_backend(__import__("array_api_compat").array_namespace(np.ones(1)))))
x = pcrsolve.solve_linear(pcrsolve.BidiagonalSystem(np.full(3, 0.5), np.ones((3, 1)),
                                                    structure="scalar"))
print(x[:, 0].tolist())
print(pcrsolve.backends is backends)  # the package attribute, as a normal submodule import
"""


def test_checkout_maps_top_level_backends():
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=ROOT)], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert os.path.samefile(out[0], os.path.join(ROOT, "backends", "__init__.py"))
    assert "NumpyBackend" in out[1]
    # x_1 = 1, x_2 = 0.5 + 1, x_3 = 0.75 + 1
    assert out[2] == "[1.0, 1.5, 1.75]"
    assert out[3] == "True"

"""Sphinx configuration for the pcrsolve documentation.

Build with warnings as errors::

    python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib.util

import pcrsolve

project = "pcrsolve"
author = "the pcrsolve developers"
copyright = "2024, the pcrsolve developers"
version = release = pcrsolve.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

# -- numpydoc / autodoc -------------------------------------------------------------------
numpydoc_show_class_members = False  # api.rst lists members explicitly
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc documents the types; avoid duplicate signatures
# The adapters import torch and the GPU kernel modules Triton at the top; where they are not
# installed (both are optional: `pip install -e ".[docs]"` brings neither) autodoc documents
# those modules against stand-ins, so the html builds either way. The doctests need them.
autodoc_mock_imports = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]

# -- general ------------------------------------------------------------------------------
primary_domain = "py"
nitpicky = False
templates_path: list[str] = []
exclude_patterns = ["_build"]
root_doc = "index"
language = "en"

# -- html ---------------------------------------------------------------------------------
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"pcrsolve {release}"

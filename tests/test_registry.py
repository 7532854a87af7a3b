"""The backend registry: unknown Array-API libraries get the generic backend, and
``register_backend`` replaces an entry (string or factory) for later look-ups."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from linear_problems import random_system, reference_solve, rel_err
from nonlinear_problems import tanh_mlp
from pcrsolve.backends import Backend, get_backend, namespace_name, register_backend

import pcrsolve
from pcrsolve import backends

xps = pytest.importorskip("array_api_strict")


@pytest.fixture
def registry(monkeypatch):
    """The registry's tables, restored after the test."""
    monkeypatch.setattr(backends, "_ENTRIES", dict(backends._ENTRIES))
    monkeypatch.setattr(backends, "_CACHE", {})
    return backends


def test_namespace_names():
    assert namespace_name(types.SimpleNamespace(__name__="array_api_compat.numpy")) == "numpy"
    assert namespace_name(types.SimpleNamespace(__name__="jax.numpy")) == "jax"
    assert namespace_name(xps) == "array_api_strict"


def test_unknown_library_gets_the_generic_backend(registry):
    ns = types.SimpleNamespace(__name__="somelib.array_api")
    backend = get_backend(ns)
    assert type(backend) is Backend and backend.name == "somelib" and backend.xp is ns
    assert get_backend(ns) is backend  # cached
    assert not backend.is_accelerator("cpu") and not backend.has_autodiff
    assert backend.fast_linear(None) is None and backend.fast_factored(None, None) is None
    assert backend.host_floats(np.array([1.5, -2.0])) == [1.5, -2.0]
    assert backend.memory_tracker("cpu").stop() is None
    with pytest.raises(NotImplementedError, match="somelib"):
        backend.jvp(lambda x, l: x)


@pytest.mark.parametrize("structure", ["dense", "diagonal", "scalar"])
def test_solves_through_the_generic_backend(registry, rng, structure):
    # array_api_strict with its registry entry removed stands for an unknown library
    del registry._ENTRIES["array_api_strict"]
    assert type(get_backend(xps)) is Backend
    A, b, x0 = random_system(rng, structure, 37, 3, batch=(2,))
    system = pcrsolve.BidiagonalSystem(xps.asarray(A), xps.asarray(b), xps.asarray(x0),
                                       structure=structure)
    ref = reference_solve(A, b, x0, structure)
    for method in ("auto", "sequential", "cr", "pcr", "chunked"):
        x = np.asarray(pcrsolve.solve_linear(system, method=method))
        assert rel_err(x, ref) <= 1e-13, method
    prob = tanh_mlp(rng, L=24, w=3)
    x0 = rng.standard_normal((2, 3))
    sol = pcrsolve.solve(prob.step_for(xps.asarray), xps.asarray(x0), prob.L)
    assert sol.converged
    assert rel_err(np.asarray(sol.states), prob.reference(x0)) <= 1e-10


class _CountingBackend(Backend):
    """A generic backend whose fused-kernel hook solves by a float64 NumPy loop, counting."""

    name = "array_api_strict"
    calls = 0

    def fast_linear(self, system):
        def run():
            type(self).calls += 1
            A, b, x0 = (np.asarray(t) for t in (system.A, system.b, system.x0))
            return xps.asarray(reference_solve(A, b, x0, system.structure.name, system.reverse))

        return run


@pytest.mark.parametrize("how", ["factory", "string"])
def test_register_backend_replaces_the_entry(registry, rng, how, monkeypatch):
    get_backend(xps)  # cached under the old entry ...
    if how == "factory":
        register_backend("array_api_strict", _CountingBackend)
    else:
        monkeypatch.setitem(sys.modules, "pcrsolve_test_backend",
                            types.SimpleNamespace(Counting=_CountingBackend))
        register_backend("array_api_strict", "pcrsolve_test_backend:Counting")
    backend = get_backend(xps)  # ... and the cache is dropped on registration
    assert isinstance(backend, _CountingBackend)
    _CountingBackend.calls = 0
    A, b, x0 = random_system(rng, "diagonal", 16, 2)
    system = pcrsolve.BidiagonalSystem(xps.asarray(A), xps.asarray(b), xps.asarray(x0),
                                       structure="diagonal", reverse=True)
    x = pcrsolve.solve_linear(system, method="kernel")
    assert _CountingBackend.calls == 1
    np.testing.assert_allclose(np.asarray(x), reference_solve(A, b, x0, "diagonal", True),
                               rtol=1e-14)

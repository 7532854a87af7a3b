"""Shared fixtures: every test that takes ``backend`` runs on each array library.

NumPy, array_api_strict and torch (CPU) always run; torch CUDA and CuPy join
automatically when a GPU is present.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest


@dataclass
class BackendCase:
    """Turns NumPy float64 data into arrays of one library/device, and back."""

    name: str
    make: Callable[[np.ndarray, str], Any]
    back: Callable[[Any], np.ndarray]

    def __call__(self, a: np.ndarray, dtype: str = "float64") -> Any:
        return self.make(np.asarray(a), dtype)

    def __repr__(self) -> str:
        return self.name


def _numpy() -> BackendCase:
    return BackendCase("numpy", lambda a, dt: a.astype(dt), lambda x: np.asarray(x, np.float64))


def _strict() -> BackendCase:
    import array_api_strict as xps

    return BackendCase(
        "array_api_strict",
        lambda a, dt: xps.asarray(a.astype(dt)),
        lambda x: np.asarray(x, dtype=np.float64),
    )


def _torch(device: str) -> BackendCase:
    import torch

    return BackendCase(
        f"torch-{device}",
        lambda a, dt: torch.as_tensor(a.astype(dt), device=device),
        lambda x: x.detach().cpu().double().numpy(),
    )


def _cupy() -> BackendCase:
    import cupy

    return BackendCase("cupy", lambda a, dt: cupy.asarray(a.astype(dt)),
                       lambda x: cupy.asnumpy(x).astype(np.float64))


def _gpu_available() -> tuple[bool, bool]:
    torch_cuda = cupy_ok = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_cuda = torch.cuda.is_available()
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            cupy_ok = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            cupy_ok = False
    return torch_cuda, cupy_ok


# Triton kernels run under the interpreter on machines without a GPU (set before any
# kernel module is imported: @triton.jit reads it at decoration time).
if importlib.util.find_spec("triton") is not None and not _gpu_available()[0]:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def backend_cases() -> list[Any]:
    """The backends of this machine, as pytest params."""
    cases: list[Any] = [pytest.param(_numpy, id="numpy")]
    cases.append(pytest.param(_strict, id="array_api_strict"))
    have_torch = importlib.util.find_spec("torch") is not None
    cases.append(pytest.param(lambda: _torch("cpu"), id="torch-cpu",
                              marks=pytest.mark.skipif(not have_torch, reason="no torch")))
    torch_cuda, cupy_ok = _gpu_available()
    if torch_cuda:
        cases.append(pytest.param(lambda: _torch("cuda"), id="torch-cuda"))
    if cupy_ok:
        cases.append(pytest.param(_cupy, id="cupy"))
    return cases


@pytest.fixture(params=backend_cases())
def backend(request: pytest.FixtureRequest) -> BackendCase:
    """One array library (and device) per test instance."""
    return request.param()


# One seeding scheme: every test draws from generators seeded by (session seed, test id), so
# a run is the same every time and a failure replays exactly. The session seed defaults to 0;
# PCRSOLVE_SEED=<n> runs the suite on other data (the header prints the seed in use).
SESSION_SEED = int(os.environ.get("PCRSOLVE_SEED", "0"))


def pytest_report_header() -> str:
    return f"pcrsolve random seed: PCRSOLVE_SEED={SESSION_SEED} (set it to replay or vary a run)"


def _test_seed(request: pytest.FixtureRequest) -> int:
    return zlib.crc32(f"{SESSION_SEED}:{request.node.nodeid}".encode())


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A NumPy generator seeded by (session seed, test id)."""
    return np.random.default_rng([SESSION_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(autouse=True)
def _seed_torch(request: pytest.FixtureRequest) -> None:
    """Seed torch's global generator by (session seed, test id) before each test.

    Only when something already imported torch (importing pcrsolve with NumPy never imports
    torch, and a test checks that); a test module that uses torch imports it first.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(_test_seed(request))


def tolerance(dtype: str, L: int = 1, factor: float = 50.0) -> float:
    """A relative tolerance derived from the dtype's eps, growing slowly with L."""
    eps = float(np.finfo(dtype).eps)
    return factor * eps * max(1.0, np.log2(max(L, 2)))

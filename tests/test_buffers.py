"""The output-buffer pool of the CPU kernels: reuse only what nobody holds."""

from __future__ import annotations

import numpy as np
import pytest
from linear_problems import reference_solve
from pcrsolve.backends import buffers


@pytest.fixture(autouse=True)
def fresh_pool(monkeypatch):
    monkeypatch.delenv("PCRSOLVE_NO_BUFFER_POOL", raising=False)
    buffers.release()
    yield
    buffers.release()


def test_small_requests_bypass_the_pool():
    x = buffers.empty((10, 3), np.float64)
    assert x.shape == (10, 3) and x.dtype == np.float64 and buffers.pooled_bytes() == 0


def test_a_held_buffer_is_never_handed_out_again():
    n = buffers.POOL_MIN_BYTES // 8
    x = buffers.empty((n,), np.float64)
    x[:] = 1.0
    view = x[::2]  # a view keeps the buffer busy too
    del x
    y = buffers.empty((n,), np.float64)
    y[:] = 2.0
    assert np.all(view == 1.0) and not np.shares_memory(view, y)


def test_a_released_buffer_is_reused_for_the_same_size_and_others_are_dropped():
    n = buffers.POOL_MIN_BYTES // 8
    x = buffers.empty((n,), np.float64)
    address = x.__array_interface__["data"][0]
    del x
    # (each array is deleted before the assertion: pytest's rewritten asserts may hold
    # on to the values they inspect)
    y = buffers.empty((n // 2, 2), np.float64)  # same bytes, other shape
    got = (y.__array_interface__["data"][0], y.shape)
    del y
    assert got == (address, (n // 2, 2))
    z = buffers.empty((2 * n,), np.float32)  # same bytes, other dtype
    got = (z.__array_interface__["data"][0], z.dtype)
    del z
    assert got == (address, np.float32)
    buffers.empty((n + 1,), np.float64)  # another size: the free buffer is let go
    assert buffers.pooled_bytes() == (n + 1) * 8


def test_pool_holds_at_most_pool_size_buffers():
    n = buffers.POOL_MIN_BYTES // 8
    held = [buffers.empty((n,), np.float64) for _ in range(buffers.POOL_SIZE + 2)]
    assert buffers.pooled_bytes() == buffers.POOL_SIZE * n * 8
    for i, x in enumerate(held):
        x[:] = i
    assert all(np.all(x == i) for i, x in enumerate(held))


def test_environment_switch_turns_the_pool_off(monkeypatch):
    monkeypatch.setenv("PCRSOLVE_NO_BUFFER_POOL", "1")
    buffers.empty((buffers.POOL_MIN_BYTES,), np.uint8)
    assert buffers.pooled_bytes() == 0


def test_kernel_results_survive_later_solves(rng):
    pytest.importorskip("numba")
    from pcrsolve.backends import numba_kernels

    L = buffers.POOL_MIN_BYTES // 8 + 5
    systems = [(rng.uniform(-0.9, 0.9, (1, L)), rng.standard_normal((1, L, 1))) for _ in range(3)]
    outs = [numba_kernels.solve(A, b, None, 0, False, (1,), np.dtype("float64"))
            for A, b in systems]
    for (A, b), x in zip(systems, outs, strict=True):
        np.testing.assert_allclose(x, reference_solve(A, b, None, "scalar"), rtol=1e-12,
                                   atol=1e-12)

"""Reusable output buffers for the CPU kernels (a small caching allocator).

A fresh multi-megabyte NumPy array is a fresh ``mmap``: glibc returns allocations above its
mmap threshold (at most 32 MiB) to the kernel when they are freed, so the next one takes a
page fault for every 4 KiB page it touches (2 MiB pages where transparent huge pages are
on, at the price of zeroing them). For a memory-bound solve this costs as much as the
solve: on the 2-core EPYC, the 32 MiB output of a scalar ``L = 2^22`` chain took ~3.4 ms of
page faults against ~5 ms for the loop itself.

:func:`empty` keeps up to :data:`POOL_SIZE` buffers of at least :data:`POOL_MIN_BYTES` and
hands one out again once nothing but the pool refers to it (every array returned is a view
whose ``base`` is the pooled buffer, so a caller that keeps any view of it keeps it busy).
This is what GPU caching allocators do; it is invisible to callers except for memory: up
to :data:`POOL_SIZE` released buffers stay allocated until :func:`release` or until a
request of another size replaces them. ``PCRSOLVE_NO_BUFFER_POOL=1`` turns the pool off.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

__all__ = ["POOL_MIN_BYTES", "POOL_SIZE", "empty", "pooled_bytes", "release"]

#: Smallest request that the pool serves (smaller arrays come from NumPy's own allocator,
#: whose free lists already reuse them).
POOL_MIN_BYTES = 1 << 20

#: Most buffers the pool holds, busy or free.
POOL_SIZE = 8

_lock = threading.Lock()
_pool: list[np.ndarray] = []



def _free(i: int) -> bool:
    """Whether nothing but the pool refers to ``_pool[i]`` (the list and the argument)."""
    return sys.getrefcount(_pool[i]) == 2


def _enabled() -> bool:
    return os.environ.get("PCRSOLVE_NO_BUFFER_POOL") != "1"


def empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array, from the pool when it is large.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype

    Returns
    -------
    np.ndarray, shape ``shape``
        Its contents are arbitrary (the caller overwrites every element).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES or not _enabled():
        return np.empty(shape, dtype)
    with _lock:
        for i in range(len(_pool)):
            if _pool[i].nbytes == nbytes and _free(i):
                return _pool[i].view(dtype).reshape(shape)
        # no free buffer of this size: drop the free ones of other sizes (the caller's
        # working set has moved on), then keep the new one if there is room
        _pool[:] = [_pool[i] for i in range(len(_pool)) if not _free(i)]
        buf = np.empty(nbytes, np.uint8)
        if len(_pool) < POOL_SIZE:
            _pool.append(buf)
        return buf.view(dtype).reshape(shape)


def pooled_bytes() -> int:
    """Bytes the pool holds (busy and free buffers)."""
    with _lock:
        return sum(buf.nbytes for buf in _pool)


def release() -> None:
    """Forget every pooled buffer (busy ones stay alive with their users)."""
    with _lock:
        _pool.clear()

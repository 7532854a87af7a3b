"""Compiled CPU kernels (numba) for linear recurrences ``x_l = A_l x_{l-1} + b_l``.

The CPU counterpart of :mod:`pcrsolve.backends.triton_scan` and the CuPy kernels, behind
:meth:`NumpyBackend.fast_linear <pcrsolve.backends.numpy_backend.NumpyBackend.fast_linear>`.
This module imports numba at import time; the NumPy backend imports it lazily, the first
time a kernel is wanted, and only when numba is installed.

Algorithms (all exact rearrangements of the loop; states accumulate in float64, so a
float32 system is at least as accurate as its float32 loop):

* **Width-1 chains** (scalar blocks or ``w = 1``): a single chain ``x = a x + b`` is bound
  by the latency of one multiply-add per step, not by memory. The kernel cuts the steps
  into cache-sized blocks of ``4 m`` steps and each block into 4 sub-chains of ``m`` steps
  that run interleaved (4 independent multiply-add chains): pass 1 computes each
  sub-chain's affine transfer ``(p, y)`` from a zero state, 4 carries are composed, and
  pass 2 rescans the 4 sub-chains from their true carries, writing ``x``. Pass 2 reads
  ``a`` and ``b`` from cache, so memory sees one read of ``A`` and ``b`` and one write of
  ``x`` (the floor). ``m`` is chosen so that the 4 streams do not share cache sets.
* **Wider elementwise chains** (diagonal, scalar with ``w > 1``): one step updates ``w``
  independent chains, vectorised over the feature axis.
* **Dense blocks**: one matrix-vector product per step, unrolled for ``w <= 4``.
* **Threads**: ``prange`` over batch elements when the batch alone fills the cores (and
  the work repays a parallel region: :data:`PARALLEL_MIN_WORK`; else one thread);
  otherwise (elementwise chains only) a chunked two-pass scan across threads: thread 0
  runs the first ``f0 L`` steps from ``x0`` directly while the other threads compute the
  affine transfers of the remaining pieces from a zero state, the pieces' carries are
  composed, then every thread rescans one piece from its true carry. Dense blocks do not
  chunk across threads: a chunk's transfer costs ``w^3`` per step against the loop's
  ``w^2``, so two threads cannot repay it.

Rescanning from the true carry (rather than adding ``P_l x_carry`` through running
products) is exact for any ``|a|``: it is the loop itself, started from the right state;
running products only enter the carries, where a product below ``TINY`` is set to zero
(it multiplies a state by less than ``2^-960``: far below the rounding of any state).
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba import njit, prange

__all__ = ["dense_batch", "dense_serial", "ew_batch", "ew_chunked", "ew_serial", "num_threads",
           "solve", "w1_batch", "w1_chunked", "w1_serial"]

#: Running products of a chunk transfer below this magnitude are set to zero: they are
#: exact to far below the rounding of any state and would otherwise be subnormal, which
#: costs ~100 cycles per multiply.
TINY = 2.0 ** -960

#: Sub-chain length of the width-1 kernel: 4 interleaved sub-chains of ``SUB`` steps make
#: one block of ~17k steps (A, b and x of a float64 block: 0.4 MB, within L2), and
#: ``SUB % 512 == 72`` keeps the 4 streams 576 bytes apart in cache-set space (a multiple
#: of 4 KiB would put all 12 streams in the same L1 set).
SUB = 8 * 512 + 72
SUB_MIN = 72

#: Whether width-1 chains use the blocked 4-way interleaved scan. Off: measured on the
#: 2-core EPYC (load ~3, `python -m pcrsolve bench linear -L 4194304`) it ran 19 ms
#: against 10.4 ms for the plain loop below (the interleaved code is kept, untested,
#: for tuning on other machines; a compile-time constant: numba freezes globals).
INTERLEAVE = False


@njit(cache=True, nogil=True)
def _w1_block(a, b, out, s, m, base, d, x):  # pragma: no cover - compiled
    """Steps ``s .. s + 4m`` of one width-1 chain (1-d rows) from ``x``; returns the last state.

    Indices are unsigned and the forward and reverse loops are written out separately:
    numba then skips its negative-index wraparound test and LLVM strength-reduces the
    addresses (either costs as much as the arithmetic).
    """
    p0 = p1 = p2 = 1.0
    y0 = y1 = y2 = 0.0
    if d == 1:
        for t in range(m):
            i = np.uint64(s + t)
            u = np.float64(a[i])
            y0 = u * y0 + b[i]
            p0 *= u
            i = np.uint64(s + m + t)
            u = np.float64(a[i])
            y1 = u * y1 + b[i]
            p1 *= u
            i = np.uint64(s + 2 * m + t)
            u = np.float64(a[i])
            y2 = u * y2 + b[i]
            p2 *= u
    else:
        for t in range(m):
            i = np.uint64(base - s - t)
            u = np.float64(a[i])
            y0 = u * y0 + b[i]
            p0 *= u
            i = np.uint64(base - s - m - t)
            u = np.float64(a[i])
            y1 = u * y1 + b[i]
            p1 *= u
            i = np.uint64(base - s - 2 * m - t)
            u = np.float64(a[i])
            y2 = u * y2 + b[i]
            p2 *= u
    # the last sub-chain needs no transfer: it is rescanned from its carry only
    x0 = x
    x1 = p0 * x0 + y0
    x2 = p1 * x1 + y1
    x3 = p2 * x2 + y2
    if d == 1:
        for t in range(m):
            i = np.uint64(s + t)
            x0 = a[i] * x0 + b[i]
            out[i] = x0
            i = np.uint64(s + m + t)
            x1 = a[i] * x1 + b[i]
            out[i] = x1
            i = np.uint64(s + 2 * m + t)
            x2 = a[i] * x2 + b[i]
            out[i] = x2
            i = np.uint64(s + 3 * m + t)
            x3 = a[i] * x3 + b[i]
            out[i] = x3
    else:
        for t in range(m):
            i = np.uint64(base - s - t)
            x0 = a[i] * x0 + b[i]
            out[i] = x0
            i = np.uint64(base - s - m - t)
            x1 = a[i] * x1 + b[i]
            out[i] = x1
            i = np.uint64(base - s - 2 * m - t)
            x2 = a[i] * x2 + b[i]
            out[i] = x2
            i = np.uint64(base - s - 3 * m - t)
            x3 = a[i] * x3 + b[i]
            out[i] = x3
    return x3


@njit(cache=True, nogil=True)
def _w1_range(a, b, out, ia, ib, io, t0, t1, rev, x):  # pragma: no cover - compiled
    """Times ``t0 .. t1`` of one width-1 chain from ``x`` (blocked, 4-way interleaved)."""
    L = b.shape[1]
    base = L - 1 if rev else 0
    d = -1 if rev else 1
    x = np.float64(x)
    ar, br, orow = a[ia], b[ib], out[io]
    s = t0
    if not INTERLEAVE:
        s = t1
        if rev:
            for t in range(t0, t1):
                i = np.uint64(L - 1 - t)
                x = ar[i] * x + br[i]
                orow[i] = x
        else:
            for t in range(t0, t1):
                i = np.uint64(t)
                x = ar[i] * x + br[i]
                orow[i] = x
    while t1 - s >= 4 * SUB_MIN:
        if t1 - s >= 4 * SUB:
            m = SUB
        else:  # the largest m <= (t1 - s) / 4 with m % 512 == SUB_MIN
            m = SUB_MIN + 512 * (((t1 - s) // 4 - SUB_MIN) // 512)
        x = _w1_block(ar, br, orow, s, m, base, d, x)
        s += 4 * m
    for t in range(s, t1):
        i = np.uint64(base + d * t)
        x = ar[i] * x + br[i]
        orow[i] = x
    return x


@njit(cache=True, nogil=True)
def _w1_transfer(a, b, ia, ib, t0, t1, rev):  # pragma: no cover - compiled
    """The affine map ``(p, y)`` of times ``t0 .. t1`` of one width-1 chain (4-way ILP)."""
    L = b.shape[1]
    base = L - 1 if rev else 0
    d = -1 if rev else 1
    ar, br = a[ia], b[ib]
    n = t1 - t0
    m = n // 4
    p0 = p1 = p2 = p3 = 1.0
    y0 = y1 = y2 = y3 = 0.0
    for t in range(m):
        u = np.float64(ar[np.uint64(base + d * (t0 + t))])
        y0 = u * y0 + br[np.uint64(base + d * (t0 + t))]
        p0 *= u
        u = np.float64(ar[np.uint64(base + d * (t0 + m + t))])
        y1 = u * y1 + br[np.uint64(base + d * (t0 + m + t))]
        p1 *= u
        u = np.float64(ar[np.uint64(base + d * (t0 + 2 * m + t))])
        y2 = u * y2 + br[np.uint64(base + d * (t0 + 2 * m + t))]
        p2 *= u
        u = np.float64(ar[np.uint64(base + d * (t0 + 3 * m + t))])
        y3 = u * y3 + br[np.uint64(base + d * (t0 + 3 * m + t))]
        p3 *= u
        if (t & 31) == 31:
            if abs(p0) < TINY:
                p0 = 0.0
            if abs(p1) < TINY:
                p1 = 0.0
            if abs(p2) < TINY:
                p2 = 0.0
            if abs(p3) < TINY:
                p3 = 0.0
    # compose the four pieces, then the tail
    y = y0
    p = p0
    y = p1 * y + y1
    p = p1 * p
    y = p2 * y + y2
    p = p2 * p
    y = p3 * y + y3
    p = p3 * p
    for t in range(t0 + 4 * m, t1):
        u = np.float64(ar[np.uint64(base + d * t)])
        y = u * y + br[np.uint64(base + d * t)]
        p *= u
    if abs(p) < TINY:
        p = 0.0
    return p, y


@njit(cache=True, nogil=True, parallel=True)
def w1_batch(a, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Width-1 chains, one per batch element, ``prange`` over the batch.

    ``a``: ``(BA, L)``; ``b``: ``(Bb, L)``; ``x0``: ``(Bx,)``; ``out``: ``(B, L)``; the maps
    give each batch element's row of ``a``, ``b`` and ``x0`` (broadcasting).
    """
    L = b.shape[1]
    for i in prange(out.shape[0]):
        _w1_range(a, b, out, amap[i], bmap[i], i, 0, L, rev, x0[xmap[i]])


@njit(cache=True, nogil=True, parallel=True)
def w1_chunked(a, b, x0, out, amap, bmap, xmap, rev, T, f0):  # pragma: no cover - compiled
    """Width-1 chains, chunks of each chain across ``T`` threads (see the module notes)."""
    B = out.shape[0]
    L = b.shape[1]
    c0 = int(f0 * L)
    piece = -(-(L - c0) // T)
    P = np.ones((B, T))
    Y = np.zeros((B, T))
    X = np.zeros((B, T))
    # pass 1: thread 0 runs the first c0 steps from x0; the others the pieces' transfers
    for k in prange(T):
        for i in range(B):
            if k == 0:
                X[i, 0] = _w1_range(a, b, out, amap[i], bmap[i], i, 0, c0, rev, x0[xmap[i]])
            else:
                for q in range(k - 1, T, T - 1):
                    t0 = min(c0 + q * piece, L)
                    t1 = min(t0 + piece, L)
                    P[i, q], Y[i, q] = _w1_transfer(a, b, amap[i], bmap[i], t0, t1, rev)
    # pass 2: the carries into every piece
    for i in range(B):
        for q in range(1, T):
            X[i, q] = P[i, q - 1] * X[i, q - 1] + Y[i, q - 1]
    # pass 3: every piece rescanned from its true carry
    for q in prange(T):
        t0 = min(c0 + q * piece, L)
        t1 = min(t0 + piece, L)
        for i in range(B):
            _w1_range(a, b, out, amap[i], bmap[i], i, t0, t1, rev, X[i, q])


@njit(cache=True, nogil=True)
def _ew_range(A, sa, b, out, ia, ib, io, t0, t1, rev, x):  # pragma: no cover - compiled
    """Times ``t0 .. t1`` of ``w`` elementwise chains from ``x`` (float64, updated)."""
    L = b.shape[1]
    w = b.shape[2]
    # the stride of A across the chains is a loop invariant the compiler cannot see: one
    # loop per case, so that the inner loop over the chains is contiguous and vectorises
    # (diagonal B=8 w=16 L=2^14, quiet 2-core EPYC: 2.9 -> 2.55 ms; numba loop 2.4 ms)
    if sa == 1:
        for t in range(t0, t1):
            l = L - 1 - t if rev else t
            for j in range(w):
                v = A[ia, l, j] * x[j] + b[ib, l, j]
                x[j] = v
                out[io, l, j] = v
    else:
        for t in range(t0, t1):
            l = L - 1 - t if rev else t
            a = A[ia, l, 0]
            for j in range(w):
                v = a * x[j] + b[ib, l, j]
                x[j] = v
                out[io, l, j] = v


@njit(cache=True, nogil=True)
def _ew_transfer(A, sa, b, ia, ib, t0, t1, rev, p, y):  # pragma: no cover - compiled
    """The affine map ``(p, y)`` (set in place) of times ``t0 .. t1`` of ``w`` chains."""
    L = b.shape[1]
    w = b.shape[2]
    p[:] = 1.0
    y[:] = 0.0
    for t in range(t0, t1):
        l = L - 1 - t if rev else t
        for j in range(w):
            u = np.float64(A[ia, l, j * sa])
            y[j] = u * y[j] + b[ib, l, j]
            p[j] = u * p[j]
        if (t & 31) == 31:
            for j in range(w):
                if abs(p[j]) < TINY:
                    p[j] = 0.0


@njit(cache=True, nogil=True, parallel=True)
def ew_batch(A, sa, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Elementwise chains (``A``: ``(BA, L, w or 1)``, ``sa`` 1 or 0), ``prange`` over batch."""
    L = b.shape[1]
    w = b.shape[2]
    for i in prange(out.shape[0]):
        x = np.empty(w, np.float64)
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, L, rev, x)


@njit(cache=True, nogil=True, parallel=True)
def ew_chunked(A, sa, b, x0, out, amap, bmap, xmap, rev, T, f0):  # pragma: no cover
    """Elementwise chains, chunks of each chain across ``T`` threads."""
    B = out.shape[0]
    L = b.shape[1]
    w = b.shape[2]
    c0 = int(f0 * L)
    piece = -(-(L - c0) // T)
    P = np.ones((B, T, w))
    Y = np.zeros((B, T, w))
    X = np.zeros((B, T, w))
    for k in prange(T):
        for i in range(B):
            if k == 0:
                x = np.empty(w, np.float64)
                for j in range(w):
                    x[j] = x0[xmap[i], j]
                _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, c0, rev, x)
                X[i, 0, :] = x
            else:
                for q in range(k - 1, T, T - 1):
                    t0 = min(c0 + q * piece, L)
                    t1 = min(t0 + piece, L)
                    _ew_transfer(A, sa, b, amap[i], bmap[i], t0, t1, rev, P[i, q], Y[i, q])
    for i in range(B):
        for q in range(1, T):
            for j in range(w):
                X[i, q, j] = P[i, q - 1, j] * X[i, q - 1, j] + Y[i, q - 1, j]
    for q in prange(T):
        t0 = min(c0 + q * piece, L)
        t1 = min(t0 + piece, L)
        x = np.empty(w, np.float64)
        for i in range(B):
            x[:] = X[i, q]
            _ew_range(A, sa, b, out, amap[i], bmap[i], i, t0, t1, rev, x)


@njit(cache=True, nogil=True)
def _dense_chain(A, b, out, ia, ib, io, rev, x, y):  # pragma: no cover - compiled
    """One chain of dense blocks from ``x`` (float64 scratch ``x``, ``y`` of length w)."""
    L = b.shape[1]
    w = b.shape[2]
    if w == 2:
        x0 = x[0]
        x1 = x[1]
        for t in range(L):
            l = L - 1 - t if rev else t
            v0 = A[ia, l, 0, 0] * x0 + A[ia, l, 0, 1] * x1 + b[ib, l, 0]
            v1 = A[ia, l, 1, 0] * x0 + A[ia, l, 1, 1] * x1 + b[ib, l, 1]
            x0 = v0
            x1 = v1
            out[io, l, 0] = v0
            out[io, l, 1] = v1
    elif w == 3:
        x0 = x[0]
        x1 = x[1]
        x2 = x[2]
        for t in range(L):
            l = L - 1 - t if rev else t
            v0 = A[ia, l, 0, 0] * x0 + A[ia, l, 0, 1] * x1 + A[ia, l, 0, 2] * x2 + b[ib, l, 0]
            v1 = A[ia, l, 1, 0] * x0 + A[ia, l, 1, 1] * x1 + A[ia, l, 1, 2] * x2 + b[ib, l, 1]
            v2 = A[ia, l, 2, 0] * x0 + A[ia, l, 2, 1] * x1 + A[ia, l, 2, 2] * x2 + b[ib, l, 2]
            x0 = v0
            x1 = v1
            x2 = v2
            out[io, l, 0] = v0
            out[io, l, 1] = v1
            out[io, l, 2] = v2
    elif w == 4:
        x0 = x[0]
        x1 = x[1]
        x2 = x[2]
        x3 = x[3]
        for t in range(L):
            l = L - 1 - t if rev else t
            v0 = (A[ia, l, 0, 0] * x0 + A[ia, l, 0, 1] * x1 + A[ia, l, 0, 2] * x2
                  + A[ia, l, 0, 3] * x3 + b[ib, l, 0])
            v1 = (A[ia, l, 1, 0] * x0 + A[ia, l, 1, 1] * x1 + A[ia, l, 1, 2] * x2
                  + A[ia, l, 1, 3] * x3 + b[ib, l, 1])
            v2 = (A[ia, l, 2, 0] * x0 + A[ia, l, 2, 1] * x1 + A[ia, l, 2, 2] * x2
                  + A[ia, l, 2, 3] * x3 + b[ib, l, 2])
            v3 = (A[ia, l, 3, 0] * x0 + A[ia, l, 3, 1] * x1 + A[ia, l, 3, 2] * x2
                  + A[ia, l, 3, 3] * x3 + b[ib, l, 3])
            x0 = v0
            x1 = v1
            x2 = v2
            x3 = v3
            out[io, l, 0] = v0
            out[io, l, 1] = v1
            out[io, l, 2] = v2
            out[io, l, 3] = v3
    else:
        for t in range(L):
            l = L - 1 - t if rev else t
            for r in range(w):
                # four partial sums: independent multiply-add chains (a fixed order, so
                # the result does not depend on the vector width)
                s0 = s1 = s2 = s3 = 0.0
                c = 0
                while c + 4 <= w:
                    s0 += A[ia, l, r, c] * x[c]
                    s1 += A[ia, l, r, c + 1] * x[c + 1]
                    s2 += A[ia, l, r, c + 2] * x[c + 2]
                    s3 += A[ia, l, r, c + 3] * x[c + 3]
                    c += 4
                while c < w:
                    s0 += A[ia, l, r, c] * x[c]
                    c += 1
                y[r] = ((s0 + s1) + (s2 + s3)) + b[ib, l, r]
            for r in range(w):
                x[r] = y[r]
                out[io, l, r] = y[r]


@njit(cache=True, nogil=True, parallel=True)
def dense_batch(A, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Dense blocks ``(BA, L, w, w)``: one chain per batch element, ``prange`` over batch."""
    w = b.shape[2]
    for i in prange(out.shape[0]):
        x = np.empty(w, np.float64)
        y = np.empty(w, np.float64)
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _dense_chain(A, b, out, amap[i], bmap[i], i, rev, x, y)


# One-thread variants of the batch kernels: the same loops without a parallel region. A
# parallel region costs ~10-30 us to start on an idle machine and milliseconds on a loaded
# one (its worker threads wait for a core: 7-16 ms measured under load ~5 on the 2-core
# EPYC, for an L = 64 chain that takes 1 us), so work that one thread finishes in well under
# a millisecond, or a batch of one, never starts one.


@njit(cache=True, nogil=True)
def w1_serial(a, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """:func:`w1_batch` on the calling thread."""
    L = b.shape[1]
    for i in range(out.shape[0]):
        _w1_range(a, b, out, amap[i], bmap[i], i, 0, L, rev, x0[xmap[i]])


@njit(cache=True, nogil=True)
def ew_serial(A, sa, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """:func:`ew_batch` on the calling thread."""
    L = b.shape[1]
    w = b.shape[2]
    x = np.empty(w, np.float64)
    for i in range(out.shape[0]):
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, L, rev, x)


@njit(cache=True, nogil=True)
def dense_serial(A, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """:func:`dense_batch` on the calling thread."""
    w = b.shape[2]
    x = np.empty(w, np.float64)
    y = np.empty(w, np.float64)
    for i in range(out.shape[0]):
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _dense_chain(A, b, out, amap[i], bmap[i], i, rev, x, y)


#: Fewest multiply-adds (``B L w``, ``B L w^2`` for dense blocks) for which :func:`solve`
#: spreads a batch over threads; below it, or with a batch of one, the kernel runs on the
#: calling thread. Measured on the 2-core EPYC under load ~3-5 (one thread / ``prange``,
#: min of 15): scalar B=8 L=2^15 0.44 / 5.4 ms; diagonal B=8 w=16 L=2^14 2.7 / 8.0 ms;
#: dense B=8 w=16 L=4096 3.9 / 7.0 ms; scalar B=8 L=2^20 21 / 24 ms: a parallel region
#: starts in ~10-30 us on an idle machine but waits milliseconds for a core on a busy one,
#: so only work of ~10 ms and more (where two threads can save that much) is spread.
PARALLEL_MIN_WORK = 1 << 23


def num_threads() -> int:
    """Threads numba's parallel loops use."""
    return int(numba.get_num_threads())


#: Shortest chain (steps) that :func:`solve` splits across threads when the batch does not
#: fill them (see the measurement in :func:`solve`).
#: Measured on the 2-core EPYC (scalar, L = 2^22, float64, load ~3): chunked across two
#: threads 31 ms, one thread per chain 19 ms (blocked) / 10.4 ms (plain loop): the memory
#: bus, not the core, limits a pass on this machine (a NumPy pass runs as fast on one
#: thread as on two), so chunking across threads is never chosen by default here.
CHUNK_MIN_STEPS = 1 << 62

#: Share of the steps that thread 0 runs directly from ``x0`` in the chunked scan while the
#: other threads compute transfers (a transfer pass moves 2 of the loop's 3 streams).
FIRST_SHARE = 0.45


@functools.lru_cache(maxsize=64)
def _row_map(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """For each element of ``batch`` (C order), its row in an array of batch ``shape``.

    Cached (read-only): building it costs more than a short chain's kernel.
    """
    n = math.prod(shape)
    rows = np.arange(n, dtype=np.intp).reshape((1,) * (len(batch) - len(shape)) + shape)
    out = np.ascontiguousarray(np.broadcast_to(rows, batch).reshape(-1))
    out.flags.writeable = False
    return out


def solve(A: np.ndarray, b: np.ndarray, x0: np.ndarray | None, block_ndim: int,
          reverse: bool, batch: tuple[int, ...], work: np.dtype,
          chunk_threads: bool | None = None) -> np.ndarray:
    """Solve ``x_l = A_l x_{l-1} + b_l`` (or the reverse) with the compiled kernels.

    Parameters
    ----------
    A : np.ndarray, shape (..., L, w, w) / (..., L, w) / (..., L)
        Blocks (``block_ndim`` 2, 1, 0), batch broadcastable to ``batch``.
    b : np.ndarray, shape (..., L, w)
    x0 : np.ndarray of shape (..., w), or None (zero)
    block_ndim : int
    reverse : bool
        ``x_l = A_l x_{l+1} + b_l`` from the last step down (``x0`` after the last step).
    batch : tuple of int
        The system's broadcast batch shape.
    work : np.dtype
        float32 or float64: the dtype of the result (states accumulate in float64).
    chunk_threads : bool, optional
        Force (True) or forbid (False) the chunked scan across threads; default: when the
        batch has fewer elements than threads and chains are at least
        :data:`CHUNK_MIN_STEPS` long (elementwise blocks only).

    Returns
    -------
    np.ndarray, shape (*batch, L, w), dtype ``work``
    """
    L, w = int(b.shape[-2]), int(b.shape[-1])
    B = math.prod(batch)
    out = np.empty((B, L, w), dtype=work)
    if B == 0 or L == 0:
        return out.reshape(*batch, L, w)
    abatch = tuple(A.shape[: A.ndim - 1 - block_ndim])
    A = np.ascontiguousarray(A, dtype=work).reshape(-1, L, *A.shape[A.ndim - block_ndim:])
    bb = tuple(b.shape[:-2])
    b = np.ascontiguousarray(b, dtype=work).reshape(-1, L, w)
    if x0 is None:
        x0, xb = np.zeros((1, w), dtype=work), ()
    else:
        xb = tuple(x0.shape[:-1])
        x0 = np.ascontiguousarray(x0, dtype=work).reshape(-1, w)
    amap, bmap, xmap = _row_map(abatch, batch), _row_map(bb, batch), _row_map(xb, batch)
    T = num_threads()
    if chunk_threads is None:
        chunk_threads = B < T and L >= CHUNK_MIN_STEPS
    chunk_threads = chunk_threads and block_ndim < 2 and T > 1
    rev = bool(reverse)
    work_size = B * L * w * (w if block_ndim == 2 else 1)
    parallel = T > 1 and B > 1 and work_size >= PARALLEL_MIN_WORK
    if block_ndim == 2:
        (dense_batch if parallel else dense_serial)(A, b, x0, out, amap, bmap, xmap, rev)
    elif w == 1:
        a2, b2, o2, x2 = A.reshape(-1, L), b.reshape(-1, L), out.reshape(B, L), x0.reshape(-1)
        if chunk_threads:
            w1_chunked(a2, b2, x2, o2, amap, bmap, xmap, rev, T, FIRST_SHARE)
        else:
            (w1_batch if parallel else w1_serial)(a2, b2, x2, o2, amap, bmap, xmap, rev)
    else:
        A3 = A.reshape(-1, L, 1) if block_ndim == 0 else A
        sa = 0 if block_ndim == 0 else 1
        if chunk_threads:
            ew_chunked(A3, sa, b, x0, out, amap, bmap, xmap, rev, T, FIRST_SHARE)
        else:
            (ew_batch if parallel else ew_serial)(A3, sa, b, x0, out, amap, bmap, xmap, rev)
    return out.reshape(*batch, L, w)

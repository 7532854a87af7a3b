"""Compiled CPU kernels (numba) for linear recurrences ``x_l = A_l x_{l-1} + b_l``.

The CPU counterpart of :mod:`pcrsolve.backends.triton_scan` and the CuPy kernels, behind
:meth:`NumpyBackend.fast_linear <pcrsolve.backends.numpy_backend.NumpyBackend.fast_linear>`.
This module imports numba at import time; the NumPy backend imports it lazily, the first
time a kernel is wanted, and only when numba is installed.

Algorithms (all exact rearrangements of the loop; states accumulate in float64, so a
float32 system is at least as accurate as its float32 loop):

* **Width-1 chains** (scalar blocks or ``w = 1``): a single chain ``x = a x + b`` is bound
  by the latency of one fused multiply-add per step (~1.3 ns on the 2-core EPYC), not by
  memory. On one thread that is the plain loop.
* **Wider elementwise chains** (diagonal, scalar with ``w > 1``): one step updates ``w``
  independent chains, vectorised over the feature axis.
* **Dense blocks**: one matrix-vector product per step, unrolled for ``w <= 4``.
* **Threads**: ``prange`` over batch elements when the batch alone fills the cores (and
  the work repays a parallel region: :data:`PARALLEL_MIN_WORK`; else one thread);
  otherwise (width-1 chains from :data:`CHUNK_MIN_STEPS` steps) a pipelined split of each
  chain across the ``T`` threads. Phase 1: thread 0 scans the head (the first
  ``1 - T s`` of the steps, :func:`piece_share`) directly from ``x0`` while each other
  thread computes the affine transfer ``(p, y)`` of one of the next pieces (8 interleaved
  multiply-add chains, so bound by memory). The pieces' carries are composed. Phase 2:
  all ``T`` threads scan one piece each from its true carry. Only ``(T - 1) s`` of the
  steps are read twice, and the head needs no transfer at all. Elementwise chains with
  ``w > 1`` already keep a core busy and are not split by default
  (:data:`CHUNK_MIN_STEPS_WIDE`); dense blocks never are (a chunk's transfer costs ``w^3``
  per step against the loop's ``w^2``).
* **Output**: from :mod:`pcrsolve.backends.buffers`, which reuses released large buffers
  instead of page-faulting a fresh ``mmap`` on every call.

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

from . import buffers

__all__ = ["dense_batch", "dense_serial", "dense_summary", "ew_batch", "ew_chunked", "ew_decay",
           "ew_serial", "ew_summary", "factored_batch", "num_threads", "scan_decay", "solve",
           "solve_factored", "summary", "w1_batch", "w1_chunked", "w1_decay", "w1_serial",
           "w1_summary"]

#: LLVM fast-math flags of every kernel: only ``contract``, which fuses ``a * x + b`` into
#: one fused multiply-add (one rounding instead of two, so at least as accurate). A chain's
#: step is latency-bound, and the fused step halves its latency: scalar ``L = 2^22`` on the
#: 2-core EPYC, 8.1 -> 5.5 ms. No reassociation: results do not depend on vector widths.
_FM = {"contract"}

#: The same plus ``reassoc`` for the dot products of wide dense blocks, which LLVM then
#: splits over vector lanes (the sum's order depends on the machine's vector width, as in
#: any BLAS). Dense ``w = 64``, ``L = 4096`` on the 2-core EPYC: 7.2 ms with four fixed
#: partial sums, 6.6 ms; a ``fastmath=True`` numba loop (the baseline) 6.2 ms.
_FM_DOT = {"contract", "reassoc"}

#: Running products of a chunk transfer below this magnitude are set to zero: they are
#: exact to far below the rounding of any state and would otherwise be subnormal, which
#: costs ~100 cycles per multiply.
TINY = 2.0 ** -960

#: Piece offset of the 8-way transfer (:func:`_w1_transfer`): its streams start ``m`` steps
#: apart with ``m % 512 == SUB_ALIGN``, 576 bytes apart in cache-set space (streams a
#: multiple of 4 KiB apart alias in L1 and stall each other's loads).
SUB_ALIGN = 72


@njit(cache=True, fastmath=_FM, nogil=True)
def _w1_range(a, b, out, ia, ib, io, t0, t1, rev, x):  # pragma: no cover - compiled
    """Times ``t0 .. t1`` of one width-1 chain from ``x``; returns the last state.

    Indices are unsigned and the forward and reverse loops are written out separately:
    numba then skips its negative-index wraparound test and LLVM strength-reduces the
    addresses (either costs as much as the arithmetic).
    """
    L = b.shape[1]
    x = np.float64(x)
    ar, br, orow = a[ia], b[ib], out[io]
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
    return x


@njit(cache=True, fastmath=_FM, nogil=True)
def _w1_transfer(a, b, ia, ib, t0, t1, rev):  # pragma: no cover - compiled
    """The affine map ``(p, y)`` of times ``t0 .. t1`` of one width-1 chain (8-way ILP).

    The steps are cut into 8 pieces whose transfers run interleaved (8 independent
    multiply-add chains, so the pass is bound by memory, not by latency: 2^21 steps on the
    2-core EPYC, 1.42 ms against 1.69 ms with 4 pieces and ~1 ms to read ``a`` and ``b``),
    then composed. Products are flushed to zero below ``TINY`` every 256 steps (a
    decaying product crosses the slow subnormal range within a few dozen steps).
    """
    L = b.shape[1]
    ar, br = a[ia], b[ib]
    n = t1 - t0
    m = n // 8
    if m > 512 + SUB_ALIGN:
        m -= (m - SUB_ALIGN) % 512
    # step index of piece k at offset t: base + d * (t0 + k m + t), unsigned
    base = np.uint64(L - 1 - t0) if rev else np.uint64(t0)
    um = np.uint64(m)
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = 1.0
    y0 = y1 = y2 = y3 = y4 = y5 = y6 = y7 = 0.0
    for t in range(m):
        i = base - np.uint64(t) if rev else base + np.uint64(t)
        u = np.float64(ar[i])
        y0 = u * y0 + br[i]
        p0 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y1 = u * y1 + br[i]
        p1 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y2 = u * y2 + br[i]
        p2 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y3 = u * y3 + br[i]
        p3 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y4 = u * y4 + br[i]
        p4 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y5 = u * y5 + br[i]
        p5 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y6 = u * y6 + br[i]
        p6 *= u
        i = i - um if rev else i + um
        u = np.float64(ar[i])
        y7 = u * y7 + br[i]
        p7 *= u
        if (t & 255) == 255:
            if abs(p0) < TINY:
                p0 = 0.0
            if abs(p1) < TINY:
                p1 = 0.0
            if abs(p2) < TINY:
                p2 = 0.0
            if abs(p3) < TINY:
                p3 = 0.0
            if abs(p4) < TINY:
                p4 = 0.0
            if abs(p5) < TINY:
                p5 = 0.0
            if abs(p6) < TINY:
                p6 = 0.0
            if abs(p7) < TINY:
                p7 = 0.0
    # compose the eight pieces, then the tail
    y = y0
    p = p0
    y = p1 * y + y1
    p = p1 * p
    y = p2 * y + y2
    p = p2 * p
    y = p3 * y + y3
    p = p3 * p
    y = p4 * y + y4
    p = p4 * p
    y = p5 * y + y5
    p = p5 * p
    y = p6 * y + y6
    p = p6 * p
    y = p7 * y + y7
    p = p7 * p
    for t in range(t0 + 8 * m, t1):
        i = np.uint64(L - 1 - t) if rev else np.uint64(t)
        u = np.float64(ar[i])
        y = u * y + br[i]
        p *= u
    if abs(p) < TINY:
        p = 0.0
    return p, y


@njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def w1_batch(a, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Width-1 chains, one per batch element, ``prange`` over the batch.

    ``a``: ``(BA, L)``; ``b``: ``(Bb, L)``; ``x0``: ``(Bx,)``; ``out``: ``(B, L)``; the maps
    give each batch element's row of ``a``, ``b`` and ``x0`` (broadcasting).
    """
    L = b.shape[1]
    for i in prange(out.shape[0]):
        _w1_range(a, b, out, amap[i], bmap[i], i, 0, L, rev, x0[xmap[i]])


@njit(cache=True, nogil=True)
def _pieces(L, T, share):  # pragma: no cover - compiled
    """Cut of the pipelined scan: thread 0's head ``c`` and the piece length ``r``.

    Phase 2 scans ``T`` pieces: piece ``q`` starts at ``c + q r``; the last ends at ``L``.
    """
    r = min(int(share * L), L // T)
    return L - T * r, r


@njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def w1_chunked(a, b, x0, out, amap, bmap, xmap, rev, T, share):  # pragma: no cover
    """Width-1 chains, each split across ``T`` threads (see the module notes)."""
    B = out.shape[0]
    L = b.shape[1]
    c, r = _pieces(L, T, share)
    P = np.ones((B, T))
    Y = np.zeros((B, T))
    X = np.zeros((B, T))
    # phase 1: thread 0 scans the head from x0; thread k the transfer of piece k - 1
    for k in prange(T):
        for i in range(B):
            if k == 0:
                X[i, 0] = _w1_range(a, b, out, amap[i], bmap[i], i, 0, c, rev, x0[xmap[i]])
            else:
                t0 = c + (k - 1) * r
                P[i, k - 1], Y[i, k - 1] = _w1_transfer(a, b, amap[i], bmap[i], t0, t0 + r,
                                                        rev)
    # the carries into every piece
    for i in range(B):
        for q in range(1, T):
            X[i, q] = P[i, q - 1] * X[i, q - 1] + Y[i, q - 1]
    # phase 2: every piece scanned from its true carry
    for q in prange(T):
        t0 = c + q * r
        t1 = L if q == T - 1 else t0 + r
        for i in range(B):
            _w1_range(a, b, out, amap[i], bmap[i], i, t0, t1, rev, X[i, q])


@njit(cache=True, fastmath=_FM, nogil=True)
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


@njit(cache=True, fastmath=_FM, nogil=True)
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


@njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def ew_batch(A, sa, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Elementwise chains (``A``: ``(BA, L, w or 1)``, ``sa`` 1 or 0), ``prange`` over batch."""
    L = b.shape[1]
    w = b.shape[2]
    for i in prange(out.shape[0]):
        x = np.empty(w, np.float64)
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, L, rev, x)


@njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def ew_chunked(A, sa, b, x0, out, amap, bmap, xmap, rev, T, share):  # pragma: no cover
    """Elementwise chains, each split across ``T`` threads (as :func:`w1_chunked`)."""
    B = out.shape[0]
    L = b.shape[1]
    w = b.shape[2]
    c, r = _pieces(L, T, share)
    P = np.ones((B, T, w))
    Y = np.zeros((B, T, w))
    X = np.zeros((B, T, w))
    for k in prange(T):
        for i in range(B):
            if k == 0:
                x = np.empty(w, np.float64)
                for j in range(w):
                    x[j] = x0[xmap[i], j]
                _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, c, rev, x)
                X[i, 0, :] = x
            else:
                t0 = c + (k - 1) * r
                _ew_transfer(A, sa, b, amap[i], bmap[i], t0, t0 + r, rev, P[i, k - 1],
                             Y[i, k - 1])
    for i in range(B):
        for q in range(1, T):
            for j in range(w):
                X[i, q, j] = P[i, q - 1, j] * X[i, q - 1, j] + Y[i, q - 1, j]
    for q in prange(T):
        t0 = c + q * r
        t1 = L if q == T - 1 else t0 + r
        x = np.empty(w, np.float64)
        for i in range(B):
            x[:] = X[i, q]
            _ew_range(A, sa, b, out, amap[i], bmap[i], i, t0, t1, rev, x)


@njit(cache=True, fastmath=_FM, nogil=True)
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
        _dense_wide(A, b, out, ia, ib, io, rev, x, y)


@njit(cache=True, fastmath=_FM_DOT, nogil=True)
def _dense_wide(A, b, out, ia, ib, io, rev, x, y):  # pragma: no cover - compiled
    """:func:`_dense_chain` for ``w > 4``: each row's dot product vectorised by LLVM."""
    L = b.shape[1]
    w = b.shape[2]
    for t in range(L):
        l = L - 1 - t if rev else t
        for r in range(w):
            s = 0.0
            for c in range(w):
                s += A[ia, l, r, c] * x[c]
            y[r] = s + b[ib, l, r]
        for r in range(w):
            x[r] = y[r]
            out[io, l, r] = y[r]


@njit(cache=True, fastmath=_FM, nogil=True, parallel=True)
def dense_batch(A, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """Dense blocks ``(BA, L, w, w)``: one chain per batch element, ``prange`` over batch."""
    w = b.shape[2]
    for i in prange(out.shape[0]):
        x = np.empty(w, np.float64)
        y = np.empty(w, np.float64)
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _dense_chain(A, b, out, amap[i], bmap[i], i, rev, x, y)


# -- factored blocks J_l = diag(s_l) W_l + c I, never materialised --------------------------


@njit(cache=True, fastmath=_FM_DOT, nogil=True)
def _factored_group(scale, weight, b, out, smap, wmap, bmap, c, lo, hi):  # pragma: no cover
    """Batch elements ``lo .. hi`` from a zero state, step-major: each step's weight block
    is read once for the whole group (it is shared by the batch)."""
    L, w = b.shape[1], b.shape[2]
    X = np.zeros((hi - lo, w))
    y = np.empty(w)
    for l in range(L):
        for i in range(lo, hi):
            si, wi, bi = smap[i], wmap[i], bmap[i]
            x = X[i - lo]
            for r in range(w):
                acc = 0.0
                for k in range(w):
                    acc += weight[wi, l, r, k] * x[k]
                y[r] = scale[si, l, r] * acc + c * x[r] + b[bi, l, r]
            for r in range(w):
                x[r] = y[r]
                out[i, l, r] = y[r]


@njit(cache=True, fastmath=_FM_DOT, nogil=True, parallel=True)
def factored_batch(scale, weight, b, out, smap, wmap, bmap, c, T):  # pragma: no cover
    """:func:`_factored_group` over ``T`` groups of the batch, one per thread."""
    B = out.shape[0]
    for g in prange(T):
        _factored_group(scale, weight, b, out, smap, wmap, bmap, c, g * B // T,
                        (g + 1) * B // T)


# -- segment summaries (the reduce pass of a distributed solve) ---------------------------


@njit(cache=True, fastmath=_FM, nogil=True)
def w1_summary(a, b, x0, amap, bmap, xmap, P_out, y_out):  # pragma: no cover - compiled
    """Each width-1 chain's map ``x_L = p x_0 + y``: ``P_out[i] = p``, ``y_out[i] = x_L``."""
    L = b.shape[1]
    for i in range(P_out.shape[0]):
        p, y = _w1_transfer(a, b, amap[i], bmap[i], 0, L, False)
        P_out[i] = p
        y_out[i] = p * x0[xmap[i]] + y


@njit(cache=True, fastmath=_FM, nogil=True)
def ew_summary(A, sa, b, x0, amap, bmap, xmap, P_out, y_out):  # pragma: no cover
    """:func:`w1_summary` for ``w`` elementwise chains: ``P_out``, ``y_out`` ``(B, w)``."""
    w = b.shape[2]
    L = b.shape[1]
    for i in range(P_out.shape[0]):
        _ew_transfer(A, sa, b, amap[i], bmap[i], 0, L, False, P_out[i], y_out[i])
        for j in range(w):
            y_out[i, j] = P_out[i, j] * x0[xmap[i], j] + y_out[i, j]


@njit(cache=True, fastmath=_FM, nogil=True)
def dense_summary(A, b, x0, amap, bmap, xmap, want_A, P_out, y_out):  # pragma: no cover
    """Dense blocks: ``y_out[i]`` the last state from ``x0``; ``P_out[i] = A_L ... A_1``
    (``(B, w, w)``) if ``want_A`` (``w^3`` per step: only when a rank needs it)."""
    L, w = b.shape[1], b.shape[2]
    y = np.empty(w)
    t = np.empty(w)
    P = np.empty((w, w))
    Q = np.empty((w, w))
    for i in range(y_out.shape[0]):
        ia, ib = amap[i], bmap[i]
        for k in range(w):
            y[k] = x0[xmap[i], k]
        if want_A:
            for r in range(w):
                for k in range(w):
                    P[r, k] = 1.0 if r == k else 0.0
        for l in range(L):
            for r in range(w):
                acc = np.float64(b[ib, l, r])
                for k in range(w):
                    acc += A[ia, l, r, k] * y[k]
                t[r] = acc
            for r in range(w):
                y[r] = t[r]
            if want_A:
                for r in range(w):
                    for c in range(w):
                        acc = 0.0
                        for k in range(w):
                            acc += A[ia, l, r, k] * P[k, c]
                        Q[r, c] = acc
                for r in range(w):
                    for c in range(w):
                        P[r, c] = Q[r, c]
        for k in range(w):
            y_out[i, k] = y[k]
        if want_A:
            for r in range(w):
                for c in range(w):
                    P_out[i, r, c] = P[r, c]


# -- a segment scanned from zero while its influence decays (distributed solves) ----------
# A rank that does not know the state entering its segment yet scans it from a zero state,
# tracking the product p_l = a_l ... a_1 of its blocks. Once |p_l| < TINY (after K steps),
# the entering state z changes the later states by p_l z: nothing, to far below the
# rounding of any state (the same bound as the flushed carries of the chunked scan), so
# they are final. When z arrives, only the first K steps are scanned again. A segment
# whose product has not decayed within ``budget`` steps computes the rest as a read-only
# transfer (its states are rescanned in full later: K = L).


@njit(cache=True, fastmath=_FM, nogil=True)
def _w1_decay(a, b, out, ia, ib, io, rev, budget):  # pragma: no cover - compiled
    """One width-1 chain from zero: returns ``(p, y, K)`` (see the notes above)."""
    L = b.shape[1]
    ar, br, orow = a[ia], b[ib], out[io]
    x = 0.0
    p = 1.0
    t = 0
    while t < budget:
        i = np.uint64(L - 1 - t) if rev else np.uint64(t)
        u = np.float64(ar[i])
        x = u * x + br[i]
        orow[i] = x
        p *= u
        t += 1
        if abs(p) < TINY:
            x = _w1_range(a, b, out, ia, ib, io, t, L, rev, x)
            return 0.0, x, t
    p2, y2 = _w1_transfer(a, b, ia, ib, t, L, rev)
    return p2 * p, p2 * x + y2, L


@njit(cache=True, fastmath=_FM, nogil=True)
def w1_decay(a, b, out, amap, bmap, rev, budget, P_out, y_out):  # pragma: no cover
    """:func:`_w1_decay` per batch element; returns the largest ``K``."""
    K = 0
    for i in range(out.shape[0]):
        P_out[i], y_out[i], k = _w1_decay(a, b, out, amap[i], bmap[i], i, rev, budget)
        K = max(K, k)
    return K


@njit(cache=True, fastmath=_FM, nogil=True)
def ew_decay(A, sa, b, out, amap, bmap, rev, budget, P_out, y_out):  # pragma: no cover
    """:func:`w1_decay` for ``w`` elementwise chains (decayed once all ``w`` products are)."""
    L = b.shape[1]
    w = b.shape[2]
    p2 = np.empty(w)
    y2 = np.empty(w)
    K = 0
    for i in range(out.shape[0]):
        ia, ib = amap[i], bmap[i]
        p, x = P_out[i], y_out[i]
        p[:] = 1.0
        x[:] = 0.0
        t = 0
        decayed = False
        while t < budget and not decayed:
            l = L - 1 - t if rev else t
            for j in range(w):
                u = np.float64(A[ia, l, j * sa])
                v = u * x[j] + b[ib, l, j]
                x[j] = v
                out[i, l, j] = v
                p[j] *= u
            t += 1
            if (t & 31) == 0:
                decayed = True
                for j in range(w):
                    if abs(p[j]) < TINY:
                        p[j] = 0.0
                    else:
                        decayed = False
        if decayed:
            _ew_range(A, sa, b, out, ia, ib, i, t, L, rev, x)
            K = max(K, t)
        else:
            _ew_transfer(A, sa, b, ia, ib, t, L, rev, p2, y2)
            for j in range(w):
                x[j] = p2[j] * x[j] + y2[j]
                p[j] = p2[j] * p[j]
            K = L
    return K


# One-thread variants of the batch kernels: the same loops without a parallel region. A
# parallel region costs ~10-30 us to start on an idle machine and milliseconds on a loaded
# one (its worker threads wait for a core: 7-16 ms measured under load ~5 on the 2-core
# EPYC, for an L = 64 chain that takes 1 us), so work that one thread finishes in well under
# a millisecond, or a batch of one, never starts one.


@njit(cache=True, fastmath=_FM, nogil=True)
def w1_serial(a, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """:func:`w1_batch` on the calling thread."""
    L = b.shape[1]
    for i in range(out.shape[0]):
        _w1_range(a, b, out, amap[i], bmap[i], i, 0, L, rev, x0[xmap[i]])


@njit(cache=True, fastmath=_FM, nogil=True)
def ew_serial(A, sa, b, x0, out, amap, bmap, xmap, rev):  # pragma: no cover - compiled
    """:func:`ew_batch` on the calling thread."""
    L = b.shape[1]
    w = b.shape[2]
    x = np.empty(w, np.float64)
    for i in range(out.shape[0]):
        for j in range(w):
            x[j] = x0[xmap[i], j]
        _ew_range(A, sa, b, out, amap[i], bmap[i], i, 0, L, rev, x)


@njit(cache=True, fastmath=_FM, nogil=True)
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
#: calling thread. Measured on the quiet 2-core EPYC (one thread / ``prange``, median of
#: 21): scalar B=8 L=1024 (2^13) 0.018 / 0.015 ms, L=4096 0.047 / 0.031 ms; diagonal B=8
#: w=16 L=256 (2^15) 0.019 / 0.013 ms, L=2^14 2.03 / 1.60 ms; dense B=8 w=16 L=1024 1.11 /
#: 0.56 ms. A parallel region starts in ~10-30 us on an idle machine but waits for a core
#: on a busy one (milliseconds under load ~5), so only work of ~50 us and more is spread.
PARALLEL_MIN_WORK = 1 << 16


def num_threads() -> int:
    """Threads numba's parallel loops use."""
    return int(numba.get_num_threads())


#: Shortest width-1 chain (steps) that :func:`solve` splits across threads when the batch
#: does not fill them. Measured on the quiet 2-core EPYC (scalar, float64, one thread /
#: split, median of 21): L=2^14 0.027 / 0.029 ms, 2^16 0.085 / 0.073 ms, 2^18 0.33 / 0.26
#: ms, 2^22 5.7 / 4.6 ms (the memory floor 3.9 ms).
CHUNK_MIN_STEPS = 1 << 16

#: The same for elementwise chains of width ``w > 1``: never by default. Their ``w``
#: independent chains already keep one core busy, so the split's extra pass over ``A`` and
#: ``b`` is not repaid (diagonal w=4 L=2^18: 1.31 / 1.49 ms; w=16 L=2^18: 5.0 / 5.1 ms).
CHUNK_MIN_STEPS_WIDE = 1 << 62


def piece_share(T: int) -> float:
    """Length of a phase-2 piece of the chunked scan, as a share of the chain.

    Thread 0 scans the head (``1 - T s`` of the steps) while each other thread computes
    one piece's transfer; then all ``T`` scan one piece each. A transfer runs ~1.7x faster
    than the scan (no store, 8 independent chains), which balances phase 1 at
    ``s = 1 / (T + 1.7)``; measured on the 2-core EPYC (scalar ``L = 2^22``), 0.25-0.30
    were equally fast and 0.2 and 0.35 slower.
    """
    return 1.0 / (T + 1.7)


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


def _contiguous(x: np.ndarray, work: np.dtype) -> np.ndarray:
    """``x`` as a C-contiguous array of dtype ``work``; a copy goes to a pooled buffer."""
    if x.flags.c_contiguous and x.dtype == work:
        return x
    out = buffers.empty(x.shape, work)
    np.copyto(out, x, casting="unsafe")
    return out


def _flatten(A: np.ndarray, b: np.ndarray, x0: np.ndarray | None, block_ndim: int,
             batch: tuple[int, ...], work: np.dtype) -> tuple[np.ndarray, ...]:
    """``(BA, L, *block)``, ``(Bb, L, w)``, ``(Bx, w)`` arrays of dtype ``work`` and each
    batch element's row in them (broadcasting without copies).

    Non-contiguous operands (a step-major Jacobian from a batched step function is
    ``(L, B, w, w)`` in memory) are copied by :func:`_contiguous` into a pooled buffer:
    13 ms per iteration for ``B = 8``, ``w = 4``, ``L = 2^16``, against 22 ms with a fresh
    allocation and 15 ms more kernel time when the kernel walks the strides itself.
    """
    L, w = int(b.shape[-2]), int(b.shape[-1])
    abatch = tuple(A.shape[: A.ndim - 1 - block_ndim])
    A = _contiguous(A, work).reshape(-1, L, *A.shape[A.ndim - block_ndim:])
    bb = tuple(b.shape[:-2])
    b = _contiguous(b, work).reshape(-1, L, w)
    if x0 is None:
        x0, xb = np.zeros((1, w), dtype=work), ()
    else:
        xb = tuple(x0.shape[:-1])
        x0 = np.ascontiguousarray(x0, dtype=work).reshape(-1, w)
    return A, b, x0, _row_map(abatch, batch), _row_map(bb, batch), _row_map(xb, batch)


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
    out = buffers.empty((B, L, w), work)
    if B == 0 or L == 0:
        return out.reshape(*batch, L, w)
    A, b, x0, amap, bmap, xmap = _flatten(A, b, x0, block_ndim, batch, work)
    T = num_threads()
    if chunk_threads is None:
        chunk_threads = B < T and L >= (CHUNK_MIN_STEPS if w == 1 else CHUNK_MIN_STEPS_WIDE)
    chunk_threads = chunk_threads and block_ndim < 2 and T > 1
    rev = bool(reverse)
    work_size = B * L * w * (w if block_ndim == 2 else 1)
    parallel = T > 1 and B > 1 and work_size >= PARALLEL_MIN_WORK
    if block_ndim == 2:
        (dense_batch if parallel else dense_serial)(A, b, x0, out, amap, bmap, xmap, rev)
    elif w == 1:
        a2, b2, o2, x2 = A.reshape(-1, L), b.reshape(-1, L), out.reshape(B, L), x0.reshape(-1)
        if chunk_threads:
            w1_chunked(a2, b2, x2, o2, amap, bmap, xmap, rev, T, piece_share(T))
        else:
            (w1_batch if parallel else w1_serial)(a2, b2, x2, o2, amap, bmap, xmap, rev)
    else:
        A3 = A.reshape(-1, L, 1) if block_ndim == 0 else A
        sa = 0 if block_ndim == 0 else 1
        if chunk_threads:
            ew_chunked(A3, sa, b, x0, out, amap, bmap, xmap, rev, T, piece_share(T))
        else:
            (ew_batch if parallel else ew_serial)(A3, sa, b, x0, out, amap, bmap, xmap, rev)
    return out.reshape(*batch, L, w)


def summary(A: np.ndarray, b: np.ndarray, x0: np.ndarray | None, block_ndim: int,
            batch: tuple[int, ...], want_A: bool, work: np.dtype
            ) -> tuple[np.ndarray | None, np.ndarray]:
    """The affine map of a whole forward chain: ``x_L = A_seg x_0 + b_seg``.

    One read-only pass (the *reduce* pass of :mod:`pcrsolve.distributed`): elementwise
    chains run as four interleaved pieces (bound by memory, not by the latency of a step),
    dense blocks form ``A_seg`` only if asked (``w^3`` per step).

    Parameters
    ----------
    A : np.ndarray, shape (..., L, w, w) / (..., L, w) / (..., L)
    b : np.ndarray, shape (..., L, w), ``L >= 1``
    x0 : np.ndarray of shape (..., w), or None (zero)
        ``b_seg`` is the last state from ``x0``.
    block_ndim : int
    batch : tuple of int
    want_A : bool
        Whether ``A_seg`` is wanted (None is returned otherwise).
    work : np.dtype
        float32 or float64: the dtype the inputs are read in (sums accumulate in float64).

    Returns
    -------
    A_seg : np.ndarray of shape (*batch, *block), float64, or None
    b_seg : np.ndarray, shape (*batch, w), float64
    """
    w = int(b.shape[-1])
    B = math.prod(batch)
    A, b, x0, amap, bmap, xmap = _flatten(A, b, x0, block_ndim, batch, work)
    y_out = np.empty((B, w))
    if block_ndim == 2:
        P_out = np.empty((B, w, w))
        dense_summary(A, b, x0, amap, bmap, xmap, want_A, P_out, y_out)
    elif w == 1:
        P_out = np.empty(B)
        w1_summary(A.reshape(-1, b.shape[1]), b.reshape(-1, b.shape[1]), x0.reshape(-1),
                   amap, bmap, xmap, P_out, y_out.reshape(-1))
        P_out = P_out.reshape(B, 1) if block_ndim == 1 else P_out
    else:
        P_out = np.empty((B, w))
        A3 = A.reshape(-1, b.shape[1], 1) if block_ndim == 0 else A
        ew_summary(A3, 0 if block_ndim == 0 else 1, b, x0, amap, bmap, xmap, P_out, y_out)
        P_out = P_out[:, 0] if block_ndim == 0 else P_out
    if not want_A:
        return None, y_out.reshape(*batch, w)
    return P_out.reshape(*batch, *P_out.shape[1:]), y_out.reshape(*batch, w)


#: Share of a segment that :func:`scan_decay` scans from zero before it gives up waiting for
#: the product to decay and computes the rest as a read-only transfer.
DECAY_BUDGET = 0.25


def scan_decay(A: np.ndarray, b: np.ndarray, block_ndim: int, reverse: bool,
               batch: tuple[int, ...], work: np.dtype, budget: float = DECAY_BUDGET
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scan elementwise chains from a zero state while the entering state's influence decays.

    The first pass of a distributed solve on a rank that does not know its entering state
    yet (see the notes above :func:`w1_decay`): its states from step ``K`` on are final;
    :func:`solve` on the first ``K`` steps from the true entering state completes them.

    Parameters
    ----------
    A : np.ndarray, shape (..., L, w) / (..., L)
        Diagonal or scalar blocks (``block_ndim`` 1 or 0), ``L >= 1``.
    b : np.ndarray, shape (..., L, w)
    block_ndim : int
    reverse : bool
        Steps run from the last to the first (then "the first ``K`` steps" are the last
        ``K`` indices).
    batch : tuple of int
    work : np.dtype
        float32 or float64 (states accumulate in float64).
    budget : float, optional
        Share of the steps scanned before the pass falls back to a transfer.

    Returns
    -------
    x : np.ndarray, shape (*batch, L, w), dtype ``work``
        The states from a zero entering state.
    A_seg : np.ndarray, shape (*batch, w) / (*batch), float64
        The product of all blocks (zero once it fell below ``TINY``).
    b_seg : np.ndarray, shape (*batch, w), float64
        The last state from zero.
    K : int
        Steps (from the chain's start) whose states still depend on the entering state.
    """
    if block_ndim == 2:
        raise ValueError("scan_decay takes diagonal or scalar blocks (block_ndim 0 or 1)")
    L, w = int(b.shape[-2]), int(b.shape[-1])
    B = math.prod(batch)
    out = buffers.empty((B, L, w), work)
    A, b, _, amap, bmap, _ = _flatten(A, b, None, block_ndim, batch, work)
    n = max(1, min(L, int(budget * L)))
    rev = bool(reverse)
    if w == 1:
        P_out, y_out = np.empty(B), np.empty(B)
        K = w1_decay(A.reshape(-1, L), b.reshape(-1, L), out.reshape(B, L), amap, bmap, rev,
                     n, P_out, y_out)
        P_out = P_out.reshape(B, 1) if block_ndim == 1 else P_out
    else:
        P_out, y_out = np.empty((B, w)), np.empty((B, w))
        A3 = A.reshape(-1, L, 1) if block_ndim == 0 else A
        K = ew_decay(A3, 0 if block_ndim == 0 else 1, b, out, amap, bmap, rev, n, P_out,
                     y_out)
        P_out = P_out[:, 0] if block_ndim == 0 else P_out
    return (out.reshape(*batch, L, w), P_out.reshape(*batch, *P_out.shape[1:]),
            y_out.reshape(*batch, w), int(K))


def solve_factored(scale: np.ndarray, weight: np.ndarray, b: np.ndarray, identity: float,
                   batch: tuple[int, ...], work: np.dtype) -> np.ndarray:
    """Solve ``x_l = (diag(s_l) W_l + c I) x_{l-1} + b_l`` from ``x_0 = 0`` (forward).

    The Newton direction of a stack of ``act(W x + b)`` layers
    (:class:`pcrsolve.factored.Factored`) without forming its ``B L w^2`` dense blocks:
    each step reads ``W_l`` once for the batch (step-major), so the weights are read once
    per thread rather than once per batch element, and nothing is written but ``x``.

    Parameters
    ----------
    scale : np.ndarray, shape (..., L, w)
    weight : np.ndarray, shape (..., L, w, w)
        Usually without batch dims (shared).
    b : np.ndarray, shape (..., L, w)
    identity : float
        ``c``.
    batch : tuple of int
        The broadcast batch shape of the three.
    work : np.dtype
        float32 or float64 (sums accumulate in float64).

    Returns
    -------
    np.ndarray, shape (*batch, L, w), dtype ``work``
    """
    L, w = int(b.shape[-2]), int(b.shape[-1])
    B = math.prod(batch)
    out = buffers.empty((B, L, w), work)
    if B == 0 or L == 0:
        return out.reshape(*batch, L, w)
    sb, wb, bb = tuple(scale.shape[:-2]), tuple(weight.shape[:-3]), tuple(b.shape[:-2])
    scale = _contiguous(scale, work).reshape(-1, L, w)
    weight = _contiguous(weight, work).reshape(-1, L, w, w)
    b = _contiguous(b, work).reshape(-1, L, w)
    smap, wmap, bmap = _row_map(sb, batch), _row_map(wb, batch), _row_map(bb, batch)
    T = num_threads()
    groups = T if T > 1 and B > 1 and B * L * w * w >= PARALLEL_MIN_WORK else 1
    groups = min(groups, B)
    if groups == 1:
        _factored_group(scale, weight, b, out, smap, wmap, bmap, float(identity), 0, B)
    else:
        factored_batch(scale, weight, b, out, smap, wmap, bmap, float(identity), groups)
    return out.reshape(*batch, L, w)

"""Fused Triton kernel for dense block recurrences of small width (torch tensors).

    x_l = A_l x_{l-1} + b_l,     A_l of shape (w, w), w <= 16

The same chunked scan as :mod:`pcrsolve.backends.triton_scan`, with the blocks held in
registers: a program owns one chain and one chunk of ``CHUNK`` steps.

1. From a zero state it walks its chunk, keeping the chunk's map ``x_end = P x_start + y``
   (``P`` the product of the chunk's blocks: ``w^3`` multiply-adds per step).
2. The chunk maps form a dense recurrence of length ``ceil(L / CHUNK)``, solved by the
   same kernel recursively; this gives the state entering every chunk.
3. It walks its chunk again from the true entering state and writes the states.

Reads ``A`` and ``b`` twice, writes ``x`` once, in one pass each; float32 arithmetic
(float64 for float64 inputs); any ``L``; both directions. Runs on CUDA, and on the CPU
under the Triton interpreter (``TRITON_INTERPRET=1``) for testing.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .triton_scan import prepare, step_of

__all__ = ["MAX_WIDTH", "dense_scan", "num_warps"]

#: widest blocks the kernel keeps in registers
MAX_WIDTH = 16


@triton.jit
def _dense_chunk_kernel(a_ptr, b_ptr, x_ptr, p_ptr, s_ptr, d_ptr, L, W, n_chunks, a_sb,
                        CHUNK: tl.constexpr, BW: tl.constexpr, FINAL: tl.constexpr,
                        REVERSE: tl.constexpr, ACC: tl.constexpr, SCALED: tl.constexpr,
                        IDENT: tl.constexpr):
    """One chunk of steps of one chain; block ``l`` is ``diag(d_l) A_l + IDENT I`` when
    SCALED (factored Jacobians, formed in registers), else ``A_l``. ``IDENT`` is a
    compile-time constant (usually 0 or 1), kept at full precision."""
    chain = tl.program_id(0).to(tl.int64)  # 64-bit offsets: batches may pass 2^31 elements
    chunk = tl.program_id(1)
    rows = tl.arange(0, BW)
    cols = tl.arange(0, BW)
    rmask = rows < W
    bmask = rmask[:, None] & (cols[None, :] < W)
    carry = (chain * n_chunks + chunk) * W
    if FINAL:
        x = tl.load(s_ptr + carry + cols, mask=cols < W, other=0.0).to(ACC)
    else:
        x = tl.zeros((BW,), dtype=ACC)
    # P starts as the identity
    P = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0).to(ACC)
    for i in range(CHUNK):
        t, l = step_of(chunk, i, CHUNK, L, REVERSE)
        live = (rows * 0 + t) < L
        ok = bmask & live[:, None]
        A = tl.load(a_ptr + chain * a_sb + l * W * W + rows[:, None] * W + cols[None, :],
                    mask=ok, other=0.0).to(ACC)
        eye = tl.where(rows[:, None] == cols[None, :], 1.0, 0.0)
        if SCALED:
            d = tl.load(d_ptr + (chain * L + l) * W + rows, mask=rmask & live,
                        other=0.0).to(ACC)
            A = d[:, None] * A + eye.to(ACC) * IDENT
        # steps past L act as the identity map
        A = tl.where(live[:, None], A, eye)
        b = tl.load(b_ptr + (chain * L + l) * W + rows, mask=rmask & live, other=0.0).to(ACC)
        xr = tl.sum(A * x[None, :], axis=1) + b  # indexed by rows
        if FINAL:
            tl.store(x_ptr + (chain * L + l) * W + rows, xr.to(x_ptr.dtype.element_ty),
                     mask=rmask & live)
        else:
            # P <- A P
            P = tl.sum(A[:, :, None] * P[None, :, :], axis=1)
        x = xr  # indexed by rows now; the compiler re-lays it out along columns
    if not FINAL:
        tl.store(s_ptr + carry + cols, x, mask=cols < W)
        tl.store(p_ptr + carry * W + rows[:, None] * W + cols[None, :], P, mask=bmask)


def num_warps(bw: int) -> int:
    """Warps per program for blocks padded to ``bw``: the ``bw^3`` products of ``P <- A P``
    spread over one warp for w <= 4, two for w <= 8, four for w <= 16."""
    return 1 if bw <= 4 else (2 if bw <= 8 else 4)


def dense_scan(
    A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None, *, reverse: bool = False,
    out_dtype: torch.dtype | None = None, chunk: int | None = None,
    scale: torch.Tensor | None = None, identity: float = 0.0,
) -> torch.Tensor:
    """Solve ``x_l = A_l x_{l-1} + b_l`` (or ``x_l = A_l x_{l+1} + b_l``) in two launches.

    Parameters
    ----------
    A : torch.Tensor, shape (..., L, w, w)
        ``w <= MAX_WIDTH``. Blocks without batch dims are read in place by every chain.
    b : torch.Tensor, shape (..., L, w)
    x0 : torch.Tensor, shape (..., w), optional
    reverse : bool, default False
    out_dtype : torch.dtype, optional
    chunk : int, optional
        Steps per chunk (default about ``sqrt(L)``, at least 16, a power of two).
    scale : torch.Tensor, shape (..., L, w), optional
        Factored blocks: step ``l`` uses ``diag(scale_l) A_l + identity I``, formed in
        registers (see :mod:`pcrsolve.factored`).
    identity : float, default 0.0
        Used with ``scale`` only.

    Returns
    -------
    torch.Tensor, shape (..., L, w)
    """
    L, W = b.shape[-2], b.shape[-1]
    if W > MAX_WIDTH:
        raise ValueError(f"dense_scan handles w <= {MAX_WIDTH}; got w = {W}")
    extra = () if scale is None else (scale.shape[:-2],)
    batch, n_chain, acc64 = prepare(A.shape[:-3], b, x0, A.dtype, *extra)
    work = torch.float64 if acc64 else torch.float32
    out_dtype = out_dtype or b.dtype
    if L == 0 or n_chain == 0:
        return torch.empty((*batch, L, W), dtype=out_dtype, device=b.device)
    if math.prod(A.shape[:-3]) == 1:  # shared blocks: every chain reads the same copy
        aa, a_sb = A.reshape(A.shape[-3:]).expand(L, W, W).contiguous(), 0
    else:
        aa = A.expand(*batch, L, W, W).reshape(n_chain, L, W, W).contiguous()
        a_sb = L * W * W
    bb = b.expand(*batch, L, W).reshape(n_chain, L, W).contiguous()
    dd = bb if scale is None else scale.expand(*batch, L, W).reshape(n_chain, L, W).contiguous()
    scaled = scale is not None
    if chunk is None:
        chunk = max(16, triton.next_power_of_2(int(L**0.5)))
    n = triton.cdiv(L, chunk)
    bw = triton.next_power_of_2(W)
    grid = (n_chain, n)
    P = torch.empty((n_chain, n, W, W), dtype=work, device=b.device)
    Y = torch.empty((n_chain, n, W), dtype=work, device=b.device)
    x = torch.empty((n_chain, L, W), dtype=out_dtype, device=b.device)
    acc = tl.float64 if acc64 else tl.float32
    warps = num_warps(bw)
    _dense_chunk_kernel[grid](aa, bb, x, P, Y, dd, L, W, n, a_sb, CHUNK=chunk, BW=bw,
                              FINAL=False, REVERSE=reverse, ACC=acc, SCALED=scaled,
                              IDENT=float(identity), num_warps=warps)
    start0 = (torch.zeros((n_chain, W), dtype=work, device=b.device) if x0 is None
              else x0.expand(*batch, W).reshape(n_chain, W).to(work))
    if n > 1:  # chunk maps: x_end = P x_start + y, a dense recurrence of length n
        ends = dense_scan(P, Y, start0, chunk=chunk)
        starts = torch.cat([start0[:, None, :], ends[:, :-1, :]], dim=1).contiguous()
    else:
        starts = start0[:, None, :].contiguous()
    _dense_chunk_kernel[grid](aa, bb, x, P, starts, dd, L, W, n, a_sb, CHUNK=chunk, BW=bw,
                              FINAL=True, REVERSE=reverse, ACC=acc, SCALED=scaled,
                              IDENT=float(identity), num_warps=warps)
    return x.reshape(*batch, L, W)

"""Fused Triton kernels for diagonal and scalar linear recurrences (torch tensors).

    x_l = a_l * x_{l-1} + b_l      (elementwise; ``a`` of shape (..., L, w) or (..., L))

Algorithm: the chunked scan (Blelloch 1990, "scan-then-propagate") in two launches of one
kernel. States are laid out ``(..., L, w)``: for a fixed step the ``w`` features are
contiguous, so a program that owns a block of features of one chain reads coalesced rows
as it walks the steps of its chunk.

1. Every program walks one chunk of ``CHUNK`` steps for ``BLOCK_W`` features from a zero
   state and keeps, in registers, the chunk's map ``x_end = P x_start + y``.
2. The chunk maps form a diagonal recurrence of length ``ceil(L / CHUNK)``, solved by the
   same two launches recursively, giving the state entering every chunk.
3. Every program walks its chunk again from the true entering state and writes ``x``.

Memory traffic: ``a`` and ``b`` are read twice and ``x`` written once; arithmetic is done in
float32 (float64 for float64 inputs) whatever the input precision; any ``L``; both
directions (``reverse`` walks the steps backwards, no flipped copies). The kernel runs on
CUDA devices, and on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``), which
is how CI tests it.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["available", "diagonal_scan", "prepare", "step_of"]


def available(device: torch.device) -> bool:
    """Whether the kernel can run on ``device`` (a CUDA GPU, or the interpreter on CPU)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def step_of(chunk, i, CHUNK: tl.constexpr, L, REVERSE: tl.constexpr):
    """``(t, l)``: the ``i``-th step of ``chunk`` in walking order, and its index in memory."""
    t = chunk * CHUNK + i
    if REVERSE:
        l = L - 1 - t
    else:
        l = t
    return t, l


@triton.jit
def _chunk_kernel(a_ptr, b_ptr, x_ptr, p_ptr, s_ptr, L, W, n_chunks, a_sb, a_sl, a_sw,
                  CHUNK: tl.constexpr, BLOCK_W: tl.constexpr, FINAL: tl.constexpr,
                  REVERSE: tl.constexpr, ACC: tl.constexpr):
    """One chunk of steps for BLOCK_W features of one chain.

    FINAL = False: store the chunk's map (P, y) from a zero state into (p_ptr, s_ptr).
    FINAL = True: start from the entering state in s_ptr and store the states in x_ptr.
    """
    chain = tl.program_id(0).to(tl.int64)  # 64-bit offsets: batches may pass 2^31 elements
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chunk = tl.program_id(2)
    mask = cols < W
    carry = (chain * n_chunks + chunk) * W + cols
    if FINAL:
        x = tl.load(s_ptr + carry, mask=mask, other=0.0).to(ACC)
    else:
        x = tl.zeros((BLOCK_W,), dtype=ACC)
    p = tl.full((BLOCK_W,), 1.0, dtype=ACC)
    for i in range(CHUNK):
        t, l = step_of(chunk, i, CHUNK, L, REVERSE)
        ok = mask & ((cols * 0 + t) < L)
        a = tl.load(a_ptr + chain * a_sb + l * a_sl + cols * a_sw, mask=ok, other=1.0)
        b = tl.load(b_ptr + (chain * L + l) * W + cols, mask=ok, other=0.0)
        x = a.to(ACC) * x + b.to(ACC)
        if FINAL:
            tl.store(x_ptr + (chain * L + l) * W + cols, x.to(x_ptr.dtype.element_ty), mask=ok)
        else:
            p = p * a.to(ACC)
    if not FINAL:
        tl.store(s_ptr + carry, x, mask=mask)
        tl.store(p_ptr + carry, p, mask=mask)


def prepare(A_batch: tuple[int, ...], b: torch.Tensor, x0: torch.Tensor | None,
            A_dtype: torch.dtype, *more: tuple[int, ...]) -> tuple[tuple[int, ...], int, bool]:
    """``(batch, number of chains, accumulate in float64?)`` of a kernel call.

    ``more``: batch shapes of further inputs that broadcast with the others.
    """
    batch = torch.broadcast_shapes(A_batch, b.shape[:-2], () if x0 is None else x0.shape[:-1],
                                   *more)
    n_chain = 1
    for d in batch:
        n_chain *= d
    acc64 = torch.float64 in (A_dtype, b.dtype, None if x0 is None else x0.dtype)
    return batch, n_chain, acc64


def _block_w(W: int) -> int:
    return min(128, triton.next_power_of_2(max(W, 1)))


def diagonal_scan(
    A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None, *, scalar: bool,
    reverse: bool = False, out_dtype: torch.dtype | None = None, chunk: int | None = None,
) -> torch.Tensor:
    """Solve ``x_l = a_l * x_{l-1} + b_l`` (or ``x_l = a_l * x_{l+1} + b_l``) in two launches.

    Parameters
    ----------
    A : torch.Tensor, shape (..., L, w), or (..., L) when ``scalar``
    b : torch.Tensor, shape (..., L, w)
    x0 : torch.Tensor, shape (..., w), optional
        Boundary state (zeros if None).
    scalar : bool
        Whether ``A`` holds one coefficient per step (broadcast over ``w``).
    reverse : bool, default False
    out_dtype : torch.dtype, optional
        Dtype of the result (default: that of ``b``).
    chunk : int, optional
        Steps per chunk (default: about ``sqrt(L)``, at least 16, a power of two).

    Returns
    -------
    torch.Tensor, shape (..., L, w)
    """
    L, W = b.shape[-2], b.shape[-1]
    batch, n_chain, acc64 = prepare(A.shape[: A.ndim - (1 if scalar else 2)], b, x0, A.dtype)
    acc = tl.float64 if acc64 else tl.float32
    work = torch.float64 if acc64 else torch.float32
    out_dtype = out_dtype or b.dtype
    if L == 0 or W == 0 or n_chain == 0:
        return torch.empty((*batch, L, W), dtype=out_dtype, device=b.device)
    bb = b.expand(*batch, L, W).reshape(n_chain, L, W).contiguous()
    if scalar:
        aa = A.expand(*batch, L).reshape(n_chain, L)
        a_sb, a_sl, a_sw = aa.stride(0), aa.stride(1), 0
    else:
        aa = A.expand(*batch, L, W).reshape(n_chain, L, W)
        if aa.stride(-1) != 1:
            aa = aa.contiguous()
        a_sb, a_sl, a_sw = aa.stride(0), aa.stride(1), aa.stride(2)
    if chunk is None:
        chunk = max(16, triton.next_power_of_2(int(L**0.5)))
    n = triton.cdiv(L, chunk)
    block = _block_w(W)
    grid = (n_chain, triton.cdiv(W, block), n)
    P = torch.empty((n_chain, n, W), dtype=work, device=b.device)
    Y = torch.empty_like(P)
    x = torch.empty((n_chain, L, W), dtype=out_dtype, device=b.device)
    _chunk_kernel[grid](aa, bb, x, P, Y, L, W, n, a_sb, a_sl, a_sw, CHUNK=chunk,
                        BLOCK_W=block, FINAL=False, REVERSE=reverse, ACC=acc)
    start0 = (torch.zeros((n_chain, W), dtype=work, device=b.device) if x0 is None
              else x0.expand(*batch, W).reshape(n_chain, W).to(work))
    if n > 1:  # the chunk maps are a diagonal recurrence of length n: the same kernel
        ends = diagonal_scan(P, Y, start0, scalar=False, chunk=chunk)
        starts = torch.cat([start0[:, None, :], ends[:, :-1, :]], dim=1).contiguous()
    else:
        starts = start0[:, None, :].contiguous()
    _chunk_kernel[grid](aa, bb, x, P, starts, L, W, n, a_sb, a_sl, a_sw, CHUNK=chunk,
                        BLOCK_W=block, FINAL=True, REVERSE=reverse, ACC=acc)
    return x.reshape(*batch, L, W)



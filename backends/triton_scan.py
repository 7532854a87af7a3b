"""Fused Triton kernels for diagonal and scalar linear recurrences (torch tensors).

    x_l = a_l * x_{l-1} + b_l      (elementwise; ``a`` of shape (..., L, w) or (..., L))

States are laid out ``(..., L, w)``. A program owns one chain and a block of ``BLOCK_W``
features and walks its steps in *tiles* of ``TILE`` steps: it loads a ``(TILE, BLOCK_W)``
tile of ``a`` and ``b`` (rows of contiguous features: coalesced), scans it in registers
with ``tl.associative_scan`` over the affine maps ``x -> a x + b``, applies the scan to the
state entering the tile, and carries the tile's last state to the next tile.

* **One pass** (when the chains and feature blocks alone give enough programs to fill the
  GPU): every program walks all ``L`` steps. ``a`` and ``b`` are read once and ``x`` is
  written once: the traffic of one elementwise pass minus one array.
* **Two passes** (few chains, long ``L``: Blelloch's scan-then-propagate): the steps are
  split into chunks, one program per chunk. Pass 1 stores each chunk's map
  ``x_end = P x_start + y`` from a zero state; the chunk maps, a recurrence of length
  ``n_chunks``, are solved by this same function (recursively); pass 2 walks each chunk
  again from its true entering state and writes ``x``. ``a`` and ``b`` are read twice.

Arithmetic is float32 (float64 for float64 inputs) whatever the input precision; any
``L`` (steps past ``L`` in a tile are identity maps); both directions (``reverse`` walks
the steps backwards, no flipped copies). The kernel runs on CUDA devices, and on the CPU
under the Triton interpreter (``TRITON_INTERPRET=1``), which is how CI tests it; CI also
compiles every variant ahead of time for sm_90 and sm_80 (tests/test_kernels_compile.py).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["available", "diagonal_scan", "plan", "prepare", "step_of"]


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
def _affine_combine(a1, b1, a2, b2):
    """The composition of ``x -> a1 x + b1`` (first) and ``x -> a2 x + b2`` (second)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _tile_kernel(a_ptr, b_ptr, x_ptr, p_ptr, s_ptr, L, W, n_chunks, chunk_len, a_sb, a_sl,
                 a_sw, TILE: tl.constexpr, BLOCK_W: tl.constexpr, FINAL: tl.constexpr,
                 REVERSE: tl.constexpr, ACC: tl.constexpr):
    """Steps ``[chunk * chunk_len, (chunk + 1) * chunk_len)`` of BLOCK_W features of a chain.

    FINAL = False: store the chunk's map (P, y) from a zero state into (p_ptr, s_ptr).
    FINAL = True: start from the entering state in s_ptr and store the states in x_ptr.
    """
    chain = tl.program_id(0).to(tl.int64)  # 64-bit offsets: batches may pass 2^31 elements
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    chunk = tl.program_id(2)
    cmask = cols < W
    carry = (chain * n_chunks + chunk) * W + cols
    if FINAL:
        x = tl.load(s_ptr + carry, mask=cmask, other=0.0).to(ACC)
    else:
        x = tl.zeros((BLOCK_W,), dtype=ACC)
    p = tl.full((BLOCK_W,), 1.0, dtype=ACC)
    rows = tl.arange(0, TILE)
    last = rows[:, None] == TILE - 1
    t_start = chunk * chunk_len
    t_end = tl.minimum(t_start + chunk_len, L)
    for t0 in range(t_start, t_end, TILE):
        t = t0 + rows
        if REVERSE:
            l = L - 1 - t
        else:
            l = t
        m = (t < t_end)[:, None] & cmask[None, :]
        # steps past the chunk are identity maps (a = 1, b = 0): the last row of the scan
        # is the state after the chunk's last step
        a = tl.load(a_ptr + chain * a_sb + l[:, None] * a_sl + cols[None, :] * a_sw, mask=m,
                    other=1.0).to(ACC)
        b = tl.load(b_ptr + (chain * L + l[:, None]) * W + cols[None, :], mask=m,
                    other=0.0).to(ACC)
        pa, pb = tl.associative_scan((a, b), axis=0, combine_fn=_affine_combine)
        xs = pa * x[None, :] + pb
        if FINAL:
            tl.store(x_ptr + (chain * L + l[:, None]) * W + cols[None, :],
                     xs.to(x_ptr.dtype.element_ty), mask=m)
        else:
            p = p * tl.sum(tl.where(last, pa, 0.0), axis=0)
        x = tl.sum(tl.where(last, xs, 0.0), axis=0)
    if not FINAL:
        tl.store(s_ptr + carry, x, mask=cmask)
        tl.store(p_ptr + carry, p, mask=cmask)


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


#: elements of one (TILE, BLOCK_W) tile: with 4 warps, about 16 registers per thread for
#: each of the tile's arrays in float32 (half as many elements in float64)
_TILE_ELEMENTS = 2048


def _programs_wanted(device: torch.device) -> int:
    """Programs that fill the device: four per multiprocessor (a fixed 64 off CUDA)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 64


def plan(n_chain: int, L: int, W: int, acc64: bool, device: torch.device,
         chunk: int | None = None, passes: int | None = None) -> tuple[int, int, int]:
    """``(BLOCK_W, TILE, steps per chunk)`` of a call; ``steps per chunk >= L``: one pass.

    Feature blocks narrow (down to 8 features, one 32-byte sector of float32) until the
    chains and blocks give enough programs; if they still do not, the steps are split into
    chunks (two passes) so that they do. ``chunk`` fixes the steps per chunk and ``passes``
    (1 or 2) the mode.
    """
    want = _programs_wanted(device)
    bw = min(triton.next_power_of_2(max(W, 1)), 64)
    while bw > 8 and n_chain * triton.cdiv(W, bw) < want:
        bw //= 2
    tile = max(16, (_TILE_ELEMENTS // (2 if acc64 else 1)) // bw)
    tile = min(tile, max(16, triton.next_power_of_2(max(L, 1))))
    if chunk is not None:
        return bw, min(tile, max(16, triton.next_power_of_2(chunk))), chunk
    programs = n_chain * triton.cdiv(W, bw)
    if passes == 1 or (passes is None and (programs * 2 >= want or L <= tile)):
        return bw, tile, max(L, 1)
    n_chunks = max(2, min(triton.cdiv(L, tile), triton.cdiv(want, programs)))
    per_chunk = triton.cdiv(triton.cdiv(L, n_chunks), tile) * tile
    return bw, tile, per_chunk


def diagonal_scan(
    A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None, *, scalar: bool,
    reverse: bool = False, out_dtype: torch.dtype | None = None, chunk: int | None = None,
    passes: int | None = None,
) -> torch.Tensor:
    """Solve ``x_l = a_l * x_{l-1} + b_l`` (or ``x_l = a_l * x_{l+1} + b_l``).

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
        Steps per chunk (two passes when ``chunk < L``); default: see ``passes``.
    passes : {1, 2}, optional
        One pass (one launch, ``a`` and ``b`` read once) or two (chunks: more programs for
        few chains). Default: one pass when the chains and feature blocks fill the GPU.

    Returns
    -------
    torch.Tensor, shape (..., L, w)
    """
    if passes not in (None, 1, 2):
        raise ValueError(f"`passes` must be 1, 2 or None; got {passes!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)
                              or chunk < 2):
        raise ValueError(f"`chunk` must be an int >= 2; got {chunk!r}")
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
    block, tile, per_chunk = plan(n_chain, L, W, acc64, b.device, chunk, passes)
    n = triton.cdiv(L, per_chunk)
    grid = (n_chain, triton.cdiv(W, block), n)
    x = torch.empty((n_chain, L, W), dtype=out_dtype, device=b.device)
    start0 = (torch.zeros((n_chain, W), dtype=work, device=b.device) if x0 is None
              else x0.expand(*batch, W).reshape(n_chain, W).to(work).contiguous())
    consts = {"TILE": tile, "BLOCK_W": block, "REVERSE": reverse, "ACC": acc}
    if n == 1:  # one pass: from x0 straight to the states
        _tile_kernel[grid](aa, bb, x, start0, start0, L, W, 1, per_chunk, a_sb, a_sl, a_sw,
                           FINAL=True, **consts)
        return x.reshape(*batch, L, W)
    P = torch.empty((n_chain, n, W), dtype=work, device=b.device)
    Y = torch.empty_like(P)
    _tile_kernel[grid](aa, bb, x, P, Y, L, W, n, per_chunk, a_sb, a_sl, a_sw, FINAL=False,
                       **consts)
    # the chunk maps are a diagonal recurrence of length n: the same function
    ends = diagonal_scan(P, Y, start0, scalar=False, chunk=chunk, passes=passes)
    starts = torch.cat([start0[:, None, :], ends[:, :-1, :]], dim=1).contiguous()
    _tile_kernel[grid](aa, bb, x, P, starts, L, W, n, per_chunk, a_sb, a_sl, a_sw,
                       FINAL=True, **consts)
    return x.reshape(*batch, L, W)

"""Triton kernels for :mod:`labkit.moe.gating` and :mod:`labkit.moe.grouped_gemm` (imported only when Triton is chosen).

What. Three steps of a mixture-of-experts layer, each with the signature of its reference:

- :func:`topk_gating_triton`: the router's softmax and top-k fused in one kernel. One program
  owns ``BLOCK_M`` rows of logits, padded to ``BLOCK_E`` (a power of two) with ``-inf``; it
  computes the softmax in float32, then picks the ``top_k`` largest probabilities by ``top_k``
  rounds of "take the row maximum, remember its lowest column, mask it out".
- :func:`permute_tokens_triton`: the sort of the (token, choice) assignments by expert, as a
  counting sort in two passes over blocks of ``BLOCK_A`` assignments. Pass 1 counts, for each
  block, how many of its assignments go to each expert (a one-hot tile summed over the block);
  the host turns the counts into each expert's start (``offsets``) and each block's start
  inside every expert (a cumulative sum over blocks, in torch on the device). Pass 2 gives
  every assignment its rank among the earlier assignments of its expert in its block (a
  cumulative sum of the one-hot tile) and writes its flat index at ``start + rank``. Ranks
  follow the flat index, so the result is stable and equals the reference's, bit for bit.
- :func:`grouped_mm_triton`: every expert's GEMM in one launch. The host lists the row tiles
  (``BLOCK_M`` rows of one expert; an expert with no rows has none) with torch ops on the
  device; each program computes one (row tile, ``BLOCK_N`` columns) block of the output with
  ``tl.dot`` over ``D`` in steps of ``BLOCK_K``, accumulating in float32, masking the rows past
  its expert's end and the ragged edges of ``D`` and ``F``. Programs are ordered column block
  first, so those running together share one expert's weight and a few row tiles in L2.

Why. The reference router launches a softmax, a top-k and a division; the reference permutation
sorts; the reference grouped GEMM launches one matmul per expert, which is what makes a naive
MoE slow when experts are many and each gets few rows.

What the miniature leaves out: no autotuning (fixed tile sizes per dtype), no persistent
kernel or TMA, no fused gather of the token rows into the GEMM (the caller indexes ``x[order //
k]``), no backward (the Triton path is forward-only; training on CPU uses the references).

Reductions and scans go through ``tl.reduce`` / ``tl.associative_scan`` with triton.language's
own combine functions: the compiled code is that of ``tl.sum`` / ``tl.max`` / ``tl.cumsum``, but
the interpreter runs them as numpy reductions and does not need ``tl.sum`` (a jitted helper that
the interpreter cannot call when triton was imported before ``TRITON_INTERPRET=1`` was set).
Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors
in Triton's interpreter, which the tests use; it mishandles bfloat16, so CPU tests stop at float16.

Shapes: N tokens, E experts, k = top_k choices per token, A assignments (sorted rows), D input
width, F output width.
Section: chapter 05, "Top-k routing from scratch".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from ..validation import check_int
from .gating import _check_logits, _describe
from .grouped_gemm import check_grouped

__all__ = ["grouped_mm_triton", "permute_tokens_triton", "topk_gating_triton"]

_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_device(t: torch.Tensor, op: str) -> None:
    if not (t.is_cuda or triton_interpreting()):
        raise ValueError(f"{op}: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")


# --------------------------------------------------------------------------------------------
# Top-k gating
# --------------------------------------------------------------------------------------------


@triton.jit
def _topk_gating_kernel(
    logits_ptr, probs_ptr, weights_ptr, experts_ptr,
    n_tokens, n_experts,
    stride_lm, stride_le, stride_pm, stride_wm, stride_im,
    TOP_K: tl.constexpr, RENORMALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, BLOCK_K)
    mask_m = rows < n_tokens
    mask_e = cols < n_experts

    # softmax over experts in float32; padded columns are -inf, so they get probability 0
    logits = tl.load(logits_ptr + rows[:, None] * stride_lm + cols[None, :] * stride_le,
                     mask=mask_m[:, None] & mask_e[None, :], other=0.0).to(tl.float32)
    logits = tl.where(mask_e[None, :], logits, float("-inf"))
    row_max = tl.reduce(logits, 1, _MAX)  # (BLOCK_M,)
    num = tl.exp(logits - row_max[:, None])
    probs = num / tl.reduce(num, 1, _SUM)[:, None]  # (BLOCK_M, BLOCK_E)
    tl.store(probs_ptr + rows[:, None] * stride_pm + cols[None, :], probs,
             mask=mask_m[:, None] & mask_e[None, :])

    # top-k: TOP_K rounds of argmax (lowest column among equal maxima), the winner masked out
    remaining = tl.where(mask_e[None, :], probs, -1.0)  # probabilities are >= 0
    top_w = tl.full([BLOCK_M, BLOCK_K], 0.0, dtype=tl.float32)
    top_i = tl.full([BLOCK_M, BLOCK_K], 0, dtype=tl.int32)
    for j in tl.static_range(TOP_K):
        best = tl.reduce(remaining, 1, _MAX)  # (BLOCK_M,)
        idx = tl.reduce(tl.where(remaining == best[:, None], cols[None, :], BLOCK_E), 1, _MIN)
        top_w = tl.where(slots[None, :] == j, best[:, None], top_w)
        top_i = tl.where(slots[None, :] == j, idx[:, None], top_i)
        remaining = tl.where(cols[None, :] == idx[:, None], -1.0, remaining)
    if RENORMALIZE:  # unused slots hold 0, so the sum is over the TOP_K kept weights
        top_w = top_w / tl.reduce(top_w, 1, _SUM)[:, None]

    mask_k = mask_m[:, None] & (slots[None, :] < TOP_K)
    tl.store(weights_ptr + rows[:, None] * stride_wm + slots[None, :], top_w, mask=mask_k)
    tl.store(experts_ptr + rows[:, None] * stride_im + slots[None, :], top_i.to(tl.int64), mask=mask_k)


def topk_gating_triton(
    logits: torch.Tensor, top_k: int, *, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused softmax + top-k with the signature of :func:`~labkit.moe.gating.topk_gating_reference`.

    Ties between equal probabilities go to the lowest expert index. ``logits`` may be strided.

    Shapes:
        logits (N, E) -> probs (N, E) float32, weights (N, k) float32, experts (N, k) int64.
    """
    _check_logits(logits, top_k)
    _check_device(logits, "topk_gating")
    if logits.dtype not in _FLOATS + (torch.float64,):
        raise TypeError(f"topk_gating: the Triton path takes float64/32/16 or bfloat16 logits, got {logits.dtype}")
    n_tokens, n_experts = logits.shape
    dev = logits.device
    probs = torch.empty(n_tokens, n_experts, dtype=torch.float32, device=dev)
    weights = torch.empty(n_tokens, top_k, dtype=torch.float32, device=dev)
    experts = torch.empty(n_tokens, top_k, dtype=torch.int64, device=dev)
    if n_tokens == 0:
        return probs, weights, experts
    block_e = max(2, triton.next_power_of_2(n_experts))
    block_k = max(2, triton.next_power_of_2(top_k))
    block_m = min(128, max(1, 4096 // block_e))  # about 4096 float32 per (rows, experts) tile
    grid = (triton.cdiv(n_tokens, block_m),)
    _topk_gating_kernel[grid](
        logits, probs, weights, experts,
        n_tokens, n_experts,
        logits.stride(0), logits.stride(1), probs.stride(0), weights.stride(0), experts.stride(0),
        TOP_K=top_k, RENORMALIZE=bool(renormalize),
        BLOCK_M=block_m, BLOCK_E=block_e, BLOCK_K=block_k, num_warps=4,
    )
    return probs, weights, experts


# --------------------------------------------------------------------------------------------
# Token permutation (counting sort)
# --------------------------------------------------------------------------------------------


@triton.jit
def _block_one_hot(experts_ptr, n_assign, BLOCK_A: tl.constexpr, BLOCK_E: tl.constexpr):
    """This program's assignments, their expert (-1 past the end) and their one-hot tile."""
    offs = tl.program_id(axis=0) * BLOCK_A + tl.arange(0, BLOCK_A)
    expert = tl.load(experts_ptr + offs, mask=offs < n_assign, other=-1)  # (BLOCK_A,), -1 = dropped
    cols = tl.arange(0, BLOCK_E)
    onehot = (expert[:, None] == cols[None, :]).to(tl.int32)  # (BLOCK_A, BLOCK_E); dropped rows are 0
    return offs, expert, cols, onehot


@triton.jit
def _count_experts_kernel(experts_ptr, block_counts_ptr, n_assign, n_experts,
                          BLOCK_A: tl.constexpr, BLOCK_E: tl.constexpr):
    # pass 1: block_counts[b, e] = assignments of block b that chose expert e
    offs, expert, cols, onehot = _block_one_hot(experts_ptr, n_assign, BLOCK_A, BLOCK_E)
    counts = tl.reduce(onehot, 0, _SUM)  # (BLOCK_E,)
    tl.store(block_counts_ptr + tl.program_id(axis=0) * n_experts + cols, counts, mask=cols < n_experts)


@triton.jit
def _scatter_ranks_kernel(experts_ptr, block_start_ptr, order_ptr, n_assign, n_experts,
                          BLOCK_A: tl.constexpr, BLOCK_E: tl.constexpr):
    # pass 2: order[block_start[b, e] + rank] = flat index, rank = earlier same-expert rows in b
    offs, expert, cols, onehot = _block_one_hot(experts_ptr, n_assign, BLOCK_A, BLOCK_E)
    start = tl.load(block_start_ptr + tl.program_id(axis=0) * n_experts + cols,
                    mask=cols < n_experts, other=0)  # (BLOCK_E,) int64
    rank = tl.associative_scan(onehot, 0, _SUM) - 1  # inclusive count - 1, per column
    pos = tl.reduce(tl.where(onehot != 0, rank + start[None, :], 0), 1, _SUM)  # (BLOCK_A,)
    tl.store(order_ptr + pos, offs.to(tl.int64), mask=(offs < n_assign) & (expert >= 0))


def permute_tokens_triton(experts: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting-sort permutation with the signature of :func:`~labkit.moe.gating.permute_tokens_reference`.

    Negative entries are dropped assignments. The result equals the reference's exactly.

    Shapes:
        experts (N, k) int64 -> order (A_kept,) int64, offsets (E + 1,) int64.
    """
    check_int("n_experts", n_experts, 1)
    if not isinstance(experts, torch.Tensor) or experts.dim() != 2 or experts.dtype != torch.int64:
        raise ValueError(f"experts must be a 2-D int64 tensor (N, k), got {_describe(experts)}")
    _check_device(experts, "permute_tokens")
    flat = experts.reshape(-1).contiguous()  # (A,) flat index token * k + choice
    dev, n_assign = flat.device, flat.numel()
    if n_assign and int(flat.max()) >= n_experts:
        raise ValueError(f"expert index {int(flat.max())} >= n_experts={n_experts}")
    offsets = torch.zeros(n_experts + 1, dtype=torch.int64, device=dev)
    if n_assign == 0:
        return torch.empty(0, dtype=torch.int64, device=dev), offsets
    block_e = max(2, triton.next_power_of_2(n_experts))
    block_a = min(1024, max(16, 8192 // block_e))  # about 8192 int32 per one-hot tile
    n_blocks = triton.cdiv(n_assign, block_a)
    block_counts = torch.empty(n_blocks, n_experts, dtype=torch.int32, device=dev)
    _count_experts_kernel[(n_blocks,)](flat, block_counts, n_assign, n_experts,
                                       BLOCK_A=block_a, BLOCK_E=block_e, num_warps=4)
    counts = block_counts.sum(0, dtype=torch.int64)  # (E,)
    offsets[1:] = counts.cumsum(0)
    before = block_counts.to(torch.int64).cumsum(0) - block_counts  # same expert, earlier blocks
    block_start = (offsets[:-1][None, :] + before).contiguous()  # (n_blocks, E)
    order = torch.empty(int(offsets[-1]), dtype=torch.int64, device=dev)
    _scatter_ranks_kernel[(n_blocks,)](flat, block_start, order, n_assign, n_experts,
                                       BLOCK_A=block_a, BLOCK_E=block_e, num_warps=4)
    return order, offsets


# --------------------------------------------------------------------------------------------
# Grouped GEMM
# --------------------------------------------------------------------------------------------


@triton.jit
def _grouped_mm_kernel(
    x_ptr, w_ptr, out_ptr, offsets_ptr, tile_expert_ptr, tile_row_ptr,
    d_in, n_out, n_col_blocks,
    stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(axis=0)
    tile, pid_n = pid // n_col_blocks, pid % n_col_blocks  # column blocks of one tile run together
    expert = tl.load(tile_expert_ptr + tile)  # int64
    row_start = tl.load(tile_row_ptr + tile)
    row_end = tl.load(offsets_ptr + expert + 1)
    rows = row_start + tl.arange(0, BLOCK_M)  # int64
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    mask_m = rows < row_end  # rows past the expert's end belong to the next expert
    mask_n = cols < n_out

    x_ptrs = x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk
    w_ptrs = w_ptr + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    # show: start inner-loop
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, dtype=tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=mask_n[None, :], other=0.0)
        else:
            mask_k = (k0 + ks) < d_in
            a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if IEEE:  # float32 inputs: full-precision products, no TF32
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
    # show: end inner-loop


#: Tile sizes and launch parameters per dtype (fixed, no autotuning): (BLOCK_M, BLOCK_N, BLOCK_K,
#: num_warps, num_stages). 16-bit: the Triton matmul tutorial's usual Hopper/Ampere shape.
GROUPED_MM_CONFIGS: dict[torch.dtype, tuple[int, int, int, int, int]] = {
    torch.float16: (128, 128, 64, 8, 3),
    torch.bfloat16: (128, 128, 64, 8, 3),
    torch.float32: (64, 64, 32, 4, 3),
}


def grouped_tiles(offsets: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The row tiles of a grouped GEMM: ``(tile_expert, tile_row_start)``, int64, on offsets' device.

    Expert ``e`` gets ``ceil(rows_e / block_m)`` tiles starting at ``offsets[e]``, ``+ block_m``, ...;
    an expert with no rows gets none. Built with torch ops, no loop over experts or tokens.
    """
    counts = offsets[1:] - offsets[:-1]  # (E,) rows per expert
    tiles = (counts + block_m - 1) // block_m  # (E,)
    n_tiles = int(tiles.sum())
    arange_e = torch.arange(counts.numel(), device=offsets.device)
    tile_expert = torch.repeat_interleave(arange_e, tiles, output_size=n_tiles)  # (T,)
    first_tile = tiles.cumsum(0) - tiles  # (E,) index of each expert's first tile
    within = torch.arange(n_tiles, device=offsets.device) - first_tile[tile_expert]
    return tile_expert, offsets[tile_expert] + within * block_m


def grouped_mm_triton(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One-launch grouped GEMM with the signature of :func:`~labkit.moe.grouped_gemm.grouped_mm_reference`.

    Forward only: the result does not track gradients. float32 uses IEEE products (no TF32);
    float16 and bfloat16 (bfloat16 on GPU only) accumulate in float32 and round once at the end.
    ``x`` and ``weight`` may be strided (e.g. ``weight`` a transposed (E, F, D) tensor).

    Shapes:
        x (A, D), weight (E, D, F), offsets (E + 1,) int64 -> (A, F), the dtype of x.
    """
    check_grouped(x, weight, offsets)
    _check_device(x, "grouped_mm")
    if weight.device != x.device or offsets.device != x.device:
        raise ValueError(f"grouped_mm: x, weight and offsets must be on one device, got "
                         f"{x.device}, {weight.device} and {offsets.device}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"grouped_mm: the Triton path takes float32, float16 or bfloat16, got {x.dtype}")
    n_rows, d_in = x.shape
    n_out = weight.shape[2]
    if n_rows == 0 or n_out == 0 or d_in == 0:
        return torch.zeros(n_rows, n_out, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k, num_warps, num_stages = GROUPED_MM_CONFIGS[x.dtype]
    offsets = offsets.contiguous()
    tile_expert, tile_row = grouped_tiles(offsets, block_m)
    out = torch.empty(n_rows, n_out, dtype=x.dtype, device=x.device)  # every row lies in one tile
    n_col_blocks = triton.cdiv(n_out, block_n)
    grid = (tile_expert.numel() * n_col_blocks,)
    _grouped_mm_kernel[grid](
        x, weight, out, offsets, tile_expert, tile_row,
        d_in, n_out, n_col_blocks,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), weight.stride(2),
        out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        EVEN_K=d_in % block_k == 0, IEEE=x.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out

"""Triton kernel for :mod:`labkit.inference.decode` (imported only when Triton is chosen).

What. :func:`lowrank_decode_triton` is one decode step of attention over a low-rank KV cache,
with the signature of :func:`~labkit.inference.decode.lowrank_decode_reference`, in two launches:

- ``_lowrank_decode_kernel``, one program per (request, key-value head, chunk of the context).
  Prologue: it loads the ``G = Hq / Hkv`` query heads that share the key-value head (padded to
  ``BLOCK_G`` rows) and that head's projection ``P_k`` (d x r) and computes ``q~ = q P_k`` with
  one ``tl.dot``, folding in ``log2(e) / sqrt(d)`` so the softmax can use ``exp2``. Loop: over its
  chunk in tiles of ``BLOCK_T`` positions it loads one ``K~`` and one ``V~`` tile, used by all G
  heads (the grouped-query saving: each cache entry is read once per step, not once per query
  head), and keeps the online softmax of the tile's scores: a running maximum ``m``, a running
  denominator ``l`` and an unnormalised output ``acc``, all float32, rescaled by
  ``exp2(m_old - m_new)`` whenever the maximum grows. Positions past the chunk's end and the
  padding of ``r`` to ``BLOCK_R`` are masked (scores ``-inf``, entries 0).
- ``_merge_splits_kernel``, one program per (request, query head), merges the chunks' partial
  results by their log-sum-exp: with ``M = max_s m_s`` and ``w_s = exp2(m_s - M)``, the output is
  ``sum_s w_s acc_s / sum_s w_s l_s``, in float32, rounded once to the output dtype.

With one chunk the first kernel normalises and writes the output itself (no merge launch).

Why split the context. A decode step has B * Hkv (request, head) pairs: 8 for one request of a
model with 8 key-value heads, far fewer than the 132 streaming multiprocessors of an H100. Each
pair's context is cut into chunks so that about four programs run per multiprocessor, which is
what it takes to read the cache at the memory's bandwidth; the merge costs a few KB per head.

What the miniature leaves out: no paged cache (the cache is one contiguous (B, Hkv, T, r)
tensor), no per-request lengths (every request has T positions), no autotuning (fixed tiles per
dtype, :data:`DECODE_CONFIGS`), no backward. Reductions go through ``tl.reduce`` with
triton.language's combine functions, as in :mod:`labkit.moe._kernels`, so that Triton's
interpreter runs them (``TRITON_INTERPRET=1``, set before this module is imported, runs the
kernels on CPU tensors; it mishandles bfloat16, so CPU tests stop at float16).

Shapes: as in :mod:`labkit.inference.decode`; S chunks (``splits``).
Section: chapter 07, "MatryoshkaKV: trainable orthogonal KV projections".
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from ..validation import check_int
from .decode import check_lowrank_decode

__all__ = ["DECODE_CONFIGS", "MIN_CHUNK", "PROGRAMS_PER_SM", "choose_splits", "lowrank_decode_triton"]

_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_LOG2E = 1.4426950408889634

#: (BLOCK_T positions per tile, num_warps, num_stages) per dtype; fixed, no autotuning.
DECODE_CONFIGS: dict[torch.dtype, tuple[int, int, int]] = {
    torch.bfloat16: (64, 4, 3),
    torch.float16: (64, 4, 3),
    torch.float32: (32, 4, 2),
}
#: The automatic split aims at this many programs per streaming multiprocessor ...
PROGRAMS_PER_SM = 4
#: ... with chunks of at least this many positions (so the prologue's loads of q and P_k stay small
#: against the chunk's reads of the cache).
MIN_CHUNK = 256
#: The most chunks per (request, head): the merge holds them all in one program.
MAX_SPLITS = 256


@triton.jit
def _lowrank_decode_kernel(
    q_ptr, pk_ptr, k_ptr, v_ptr, out_ptr, m_ptr, l_ptr, acc_ptr,
    n_q_heads, n_kv_heads, group, context, chunk, n_splits, head_dim, rank,
    stride_qb, stride_qh, stride_qd, stride_ph, stride_pd, stride_pr,
    qk_scale,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
    SINGLE: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(axis=0)  # b * Hkv + kv
    split = tl.program_id(axis=1)
    b = pid // n_kv_heads
    kv = pid % n_kv_heads
    gs = tl.arange(0, BLOCK_G)
    ds = tl.arange(0, BLOCK_D)
    rs = tl.arange(0, BLOCK_R)
    ts = tl.arange(0, BLOCK_T)
    mask_g = gs < group
    mask_r = rs < rank
    heads = kv * group + gs  # the query heads that read this key-value head

    # prologue: q~ = q P_k for the G heads of this kv head, scaled by log2(e) / sqrt(d)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + ds[None, :] * stride_qd,
                mask=mask_g[:, None] & (ds[None, :] < head_dim), other=0.0)
    pk = tl.load(pk_ptr + kv * stride_ph + ds[:, None] * stride_pd + rs[None, :] * stride_pr,
                 mask=(ds[:, None] < head_dim) & mask_r[None, :], other=0.0)
    if IEEE:
        q_lr = tl.dot(q, pk, input_precision="ieee")
    else:
        q_lr = tl.dot(q, pk)
    q_lr = (q_lr * qk_scale).to(k_ptr.dtype.element_ty)  # (BLOCK_G, BLOCK_R)

    start = split * chunk
    end = tl.minimum(start + chunk, context)
    base = pid.to(tl.int64) * context * rank  # the contiguous (T, r) cache of this (b, kv)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_G], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_G, BLOCK_R], 0.0, dtype=tl.float32)
    # show: start inner-loop
    for t0 in range(start, end, BLOCK_T):
        t = t0 + ts
        mask_t = t < end
        offs = base + t[:, None] * rank + rs[None, :]
        mask_tr = mask_t[:, None] & mask_r[None, :]
        # one (BLOCK_T, BLOCK_R) tile of K~ and of V~, shared by the G heads
        k = tl.load(k_ptr + offs, mask=mask_tr, other=0.0)
        v = tl.load(v_ptr + offs, mask=mask_tr, other=0.0)
        if IEEE:
            s = tl.dot(q_lr, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q_lr, tl.trans(k))  # (BLOCK_G, BLOCK_T), log2 units
        s = tl.where(mask_t[None, :], s, float("-inf"))
        # finite: every tile holds a position before the chunk's end
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    # show: end inner-loop

    rows = b.to(tl.int64) * n_q_heads + heads  # (b, h) of the output and of the partials
    if SINGLE:
        out = acc / l_i[:, None]
        tl.store(out_ptr + rows[:, None] * rank + rs[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=mask_g[:, None] & mask_r[None, :])
    else:
        part = rows * n_splits + split
        tl.store(m_ptr + part, m_i, mask=mask_g)
        tl.store(l_ptr + part, l_i, mask=mask_g)
        tl.store(acc_ptr + part[:, None] * rank + rs[None, :], acc, mask=mask_g[:, None] & mask_r[None, :])


@triton.jit
def _merge_splits_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, n_splits, rank,
                         BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr):
    row = tl.program_id(axis=0).to(tl.int64)  # b * Hq + h
    ss = tl.arange(0, BLOCK_S)
    rs = tl.arange(0, BLOCK_R)
    mask_s = ss < n_splits
    mask_r = rs < rank
    # show: start merge
    m = tl.load(m_ptr + row * n_splits + ss, mask=mask_s, other=float("-inf"))
    l = tl.load(l_ptr + row * n_splits + ss, mask=mask_s, other=0.0)
    acc = tl.load(acc_ptr + (row * n_splits + ss[:, None]) * rank + rs[None, :],
                  mask=mask_s[:, None] & mask_r[None, :], other=0.0)
    w = tl.exp2(m - tl.reduce(m, 0, _MAX))  # padding: exp2(-inf) = 0
    out = tl.reduce(acc * w[:, None], 0, _SUM) / tl.reduce(l * w, 0, _SUM)
    # show: end merge
    tl.store(out_ptr + row * rank + rs, out.to(out_ptr.dtype.element_ty), mask=mask_r)


def choose_splits(batch: int, n_kv_heads: int, context: int, block_t: int, n_sm: int) -> int:
    """How many chunks each (request, key-value head) gets when the caller does not say.

    About :data:`PROGRAMS_PER_SM` programs per multiprocessor, chunks of at least
    :data:`MIN_CHUNK` positions and a whole number of ``block_t`` tiles, at most
    :data:`MAX_SPLITS`. For example 1 request, 8 heads, T = 32768 on 132 multiprocessors:
    ``ceil(528 / 8) = 66`` chunks of 512 positions, rounded to 64 chunks.
    """
    for name, value in (("batch", batch), ("n_kv_heads", n_kv_heads), ("context", context),
                        ("block_t", block_t), ("n_sm", n_sm)):
        check_int(name, value, 1)
    want = max(1, math.ceil(PROGRAMS_PER_SM * n_sm / (batch * n_kv_heads)))
    chunk = max(math.ceil(context / want), MIN_CHUNK)
    chunk = math.ceil(chunk / block_t) * block_t
    return min(math.ceil(context / chunk), MAX_SPLITS)


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs one program at a time


def lowrank_decode_triton(q: torch.Tensor, p_k: torch.Tensor, k_lr: torch.Tensor, v_lr: torch.Tensor,
                          splits: int | None = None) -> torch.Tensor:
    """Split-context decode attention with the signature of
    :func:`~labkit.inference.decode.lowrank_decode_reference`.

    Args:
        q, p_k: the queries and key projections; any strides.
        k_lr, v_lr: the projected cache; contiguous, on CUDA (or on the CPU under
            ``TRITON_INTERPRET=1``).
        splits: chunks per (request, key-value head); ``None`` picks :func:`choose_splits`. The
            context is cut into chunks of ``ceil(T / splits)`` positions, so fewer chunks run
            when ``splits`` does not divide it well (at most T).

    Forward only: the result does not track gradients. float32 uses IEEE products (no TF32);
    float16 and bfloat16 (bfloat16 on GPU only) feed the tensor cores and keep the softmax
    statistics and the output accumulator in float32.

    Shapes:
        q (B, Hq, 1, d), p_k (Hkv, d, r), k_lr and v_lr (B, Hkv, T, r) -> (B, Hq, 1, r).
    """
    if splits is not None:
        check_int("splits", splits, 1)
    batch, n_q, n_kv, d, r, context = check_lowrank_decode(q, p_k, k_lr, v_lr)
    if not (k_lr.is_cuda or triton_interpreting()):
        raise ValueError(f"lowrank_decode: the Triton path needs the cache on CUDA, got k_lr on {k_lr.device} "
                         "(or set TRITON_INTERPRET=1 for CPU)")
    for name, t in (("k_lr", k_lr), ("v_lr", v_lr)):
        if not t.is_contiguous():
            raise ValueError(f"lowrank_decode: the Triton path reads a contiguous cache; {name} has strides "
                             f"{t.stride()} (call .contiguous() once when the cache is built)")
    if q.dtype not in DECODE_CONFIGS:
        raise TypeError(f"lowrank_decode: the Triton path takes float32, float16 or bfloat16, got {q.dtype}")
    out = torch.empty(batch, n_q, 1, r, dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    block_t, num_warps, num_stages = DECODE_CONFIGS[q.dtype]
    group = n_q // n_kv
    if splits is None:
        splits = choose_splits(batch, n_kv, context, block_t, _multiprocessors(q.device))
    chunk = math.ceil(context / min(splits, context))
    n_splits = math.ceil(context / chunk)  # every chunk holds at least one position
    if n_splits > MAX_SPLITS:
        raise ValueError(f"splits={splits} cuts T={context} into {n_splits} chunks; at most {MAX_SPLITS}")
    block_g = max(16, triton.next_power_of_2(group))  # tl.dot needs 16 rows
    block_d = max(16, triton.next_power_of_2(d))
    block_r = max(16, triton.next_power_of_2(r))
    single = n_splits == 1
    part_rows = 1 if single else batch * n_q * n_splits  # one unused row when single: no null pointers
    m = torch.empty(part_rows, dtype=torch.float32, device=q.device)
    l = torch.empty(part_rows, dtype=torch.float32, device=q.device)
    acc = torch.empty(part_rows, r, dtype=torch.float32, device=q.device)
    _lowrank_decode_kernel[(batch * n_kv, n_splits)](
        q, p_k, k_lr, v_lr, out, m, l, acc,
        n_q, n_kv, group, context, chunk, n_splits, d, r,
        q.stride(0), q.stride(1), q.stride(3), p_k.stride(0), p_k.stride(1), p_k.stride(2),
        _LOG2E / math.sqrt(d),
        BLOCK_G=block_g, BLOCK_D=block_d, BLOCK_R=block_r, BLOCK_T=block_t,
        SINGLE=single, IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )
    if not single:
        _merge_splits_kernel[(batch * n_q,)](
            m, l, acc, out, n_splits, r,
            BLOCK_S=max(2, triton.next_power_of_2(n_splits)), BLOCK_R=block_r, num_warps=4,
        )
    return out

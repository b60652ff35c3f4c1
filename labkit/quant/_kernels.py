"""Triton kernels for :mod:`labkit.quant.gemm`: W8A8 and W4A4 (+ low-rank branch) GEMMs.

What. Two launchers with the signatures of their references:

- :func:`w8a8_gemm_triton`: the Triton matmul tutorial's blocked GEMM on ``int8`` operands.
  Each program owns a (``BLOCK_M``, ``BLOCK_N``) tile of the output, steps over ``K`` in
  ``BLOCK_K`` slices with ``tl.dot`` on int8 tiles into an ``int32`` accumulator (exact), and
  in the epilogue converts it to float32, multiplies by the token scales (a column) and the
  channel scales (a row), adds the bias and stores once.
- :func:`w4a4_gemm_triton`: the same tiling, but ``K`` advances one quantization group at a
  time. A step loads ``G / 2`` packed bytes (128 when ``G > 256``, several steps per group)
  per row of ``x`` and per output channel of ``W`` and splits them in registers into signed nibbles (low: ``(b << 4) >> 4``, high: ``b >> 4``,
  arithmetic shifts on the byte read as int8). Since both operands are packed the same way,
  ``sum_k x_k w_k`` over a group equals ``lo(x) . lo(w) + hi(x) . hi(w)``: two int8 ``tl.dot``
  on the half-width tiles, no interleaving needed (for ``G = 32`` the halves are too narrow for
  an int8 dot, which needs ``K >= 32``, so the nibbles are interleaved back with ``tl.join``).
  The group's exact int32 sum is then rescaled into a float32 accumulator,
  ``acc += part * x_scale[:, g, None] * w_scale[None, :, g]``. SVDQuant's low-rank branch joins in the epilogue: the
  (``BLOCK_M``, r) tile of ``lora_down_out`` times the (r, ``BLOCK_N``) tile of ``lora_up``, one
  more ``tl.dot`` (16-bit operands, float32 accumulation) into the same accumulator, so the
  branch costs no extra pass over the output.

Why. Integer tensor cores multiply int8 at twice the bf16 rate, and packed int4 halves the bytes
read again; the scales cost one multiply per output element (W8A8) or per output element and
group (W4A4). Running the low-rank branch as a separate GEMM would write and re-read the whole
output; fused, it reads only its two thin operands.

Tiles. On a GPU each kernel is autotuned (``triton.autotune``) over a few tile shapes, keyed on
the size bucket of ``M`` (a power of two), ``N`` and ``K``; small ``M`` (decoding) keeps 16-row
tiles, large ``M`` the 64-256-row ones. A tile pinned in :data:`FIXED_TILES` skips autotuning
(tests use it to keep GPU compile times short); under ``TRITON_INTERPRET=1`` the small tiles of
:data:`INTERPRETER_TILES` run unless one is pinned.

What the miniature leaves out: no split-K for small M (the M = 1 case reads all of W with few
programs), no persistent kernel or TMA descriptors, no int4 tensor-core instructions (the
nibbles become int8 operands), no fused activation quantizer or down-projection (the caller
computes ``lora_down_out``), no backward. The per-group rescale runs on the CUDA cores: for
``G = 64`` its ~3 operations per output element and group take about as long as the group's 64
integer multiply-adds on the tensor cores (an estimate from an H100's peak rates, not a
measurement); real W4A4 engines hide it by overlapping the two, this kernel mostly does not. The interpreter mishandles bfloat16, so CPU tests
use float32 and float16.

Shapes: M tokens, N output channels, K input width (unpacked), G group size, r rank.
Section: chapter 10, "SVDQuant: 4-bit weights and activations with a low-rank branch".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .gemm import check_w4a4, check_w8a8

__all__ = [
    "FIXED_TILES",
    "INTERPRETER_TILES",
    "W4A4_TILES",
    "W8A8_TILES",
    "GemmTile",
    "w4a4_gemm_triton",
    "w4a4_step_bytes",
    "w8a8_gemm_triton",
]


@dataclass(frozen=True)
class GemmTile:
    """One launch configuration: output tile, K step (W8A8 only), program grouping, warps, stages."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def config(self, *, with_k: bool) -> triton.Config:
        meta = dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, GROUP_M=self.group_m)
        if with_k:
            meta["BLOCK_K"] = self.block_k
        return triton.Config(meta, num_warps=self.num_warps, num_stages=self.num_stages)


#: Autotuning candidates of the W8A8 kernel on a GPU (16-row tiles for M <= 16).
W8A8_TILES: tuple[GemmTile, ...] = (
    GemmTile(128, 256, 128, 8, 8, 3),
    GemmTile(128, 256, 128, 8, 8, 4),
    GemmTile(256, 128, 128, 8, 8, 3),
    GemmTile(128, 128, 128, 8, 8, 4),
    GemmTile(128, 128, 64, 8, 4, 4),
    GemmTile(64, 128, 128, 8, 4, 4),
    GemmTile(16, 64, 256, 1, 4, 4),
    GemmTile(16, 128, 128, 1, 4, 4),
    GemmTile(16, 32, 256, 1, 2, 5),
)

#: Autotuning candidates of the W4A4 kernel (``block_k`` unused: K steps by quantization group).
#: The float32 accumulator and each group's int32 partial sum both live in registers, so the
#: tiles stay small per warp (ptxas for sm_90: 128 x 128 with 4 warps spills heavily).
W4A4_TILES: tuple[GemmTile, ...] = (
    GemmTile(128, 128, 0, 8, 8, 3),
    GemmTile(64, 256, 0, 8, 8, 3),
    GemmTile(64, 128, 0, 8, 4, 4),
    GemmTile(128, 64, 0, 8, 4, 4),
    GemmTile(64, 64, 0, 8, 4, 4),
    GemmTile(16, 64, 0, 1, 4, 4),
    GemmTile(16, 32, 0, 1, 2, 5),
    GemmTile(16, 16, 0, 1, 1, 6),
)

#: Tiles used instead of autotuning when set (tests pin small ones); None: autotune on a GPU and
#: use :data:`INTERPRETER_TILES` under ``TRITON_INTERPRET=1``.
FIXED_TILES: dict[str, GemmTile | None] = {"w8a8": None, "w4a4": None}

#: The interpreter's tiles when nothing is pinned: small, so that tiny tests still span several programs.
INTERPRETER_TILES: dict[str, GemmTile] = {
    "w8a8": GemmTile(16, 16, 32, 2, 1, 1),
    "w4a4": GemmTile(16, 16, 0, 2, 1, 1),
}


def _fixed_tile(op: str) -> GemmTile | None:
    """The pinned tile of ``op``, the interpreter's default, or None (autotune)."""
    tile = FIXED_TILES[op]
    if tile is None and triton_interpreting():
        tile = INTERPRETER_TILES[op]
    return tile


def _check_device(t: torch.Tensor, op: str) -> None:
    if not (t.is_cuda or triton_interpreting()):
        raise ValueError(f"{op}: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")


def _m_bucket(n_rows: int) -> int:
    """The autotuning key for M: the next power of two, capped (larger M tiles alike)."""
    return min(triton.next_power_of_2(max(n_rows, 1)), 4096)


def _prune_by_m(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """Keep 16-row tiles for M <= 16 and 64+-row tiles above, never taller than M's bucket."""
    bucket = max(16, named_args["m_bucket"])
    small = bucket <= 16
    kept = [c for c in configs if (c.kwargs["BLOCK_M"] <= 16) == small and c.kwargs["BLOCK_M"] <= max(bucket, 64)]
    return kept or list(configs)


@triton.jit
def _tile_ids(n_rows, n_out, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row block, column block), GROUP_M row blocks sweeping the columns together (L2 reuse)."""
    pid = tl.program_id(axis=0)
    n_pid_m = tl.cdiv(n_rows, BLOCK_M)
    n_pid_n = tl.cdiv(n_out, BLOCK_N)
    width = GROUP_M * n_pid_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(n_pid_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


# --------------------------------------------------------------------------------------------
# W8A8
# --------------------------------------------------------------------------------------------


@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _w8a8_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, out_ptr,
    M, N, K, m_bucket,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = (rows % M).to(tl.int64)  # out-of-range rows wrap onto real ones: loads need no mask
    cols_in = (cols % N).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows_in[:, None] * stride_xm + ks[None, :] * stride_xk  # (BLOCK_M, BLOCK_K)
    w_ptrs = w_ptr + ks[:, None] * stride_wk + cols_in[None, :] * stride_wn  # (BLOCK_K, BLOCK_N) of W.T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            mask_k = ks < K - k0
            a = tl.load(x_ptrs, mask=mask_k[None, :], other=0)
            b = tl.load(w_ptrs, mask=mask_k[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # int8 x int8 -> int32, exact
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # epilogue: per-token scale (column) x per-channel scale (row), then the bias
    xs = tl.load(xs_ptr + rows_in)
    ws = tl.load(ws_ptr + cols_in)
    out = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols_in).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
             out.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


_w8a8_tuned = triton.autotune(
    configs=[t.config(with_k=True) for t in W8A8_TILES], key=["m_bucket", "N", "K"],
    prune_configs_by={"early_config_prune": _prune_by_m},
)(_w8a8_kernel)


def w8a8_gemm_triton(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
                     bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fused W8A8 GEMM with the signature of :func:`~labkit.quant.gemm.w8a8_gemm_reference`.

    The integer product is exact (int32); scales and bias are applied in float32 and the result is
    rounded once to ``out_dtype``. ``xq`` and ``wq`` may be strided (``wq`` as a transposed view is
    fine, though a contiguous (N, K) weight reads fastest).

    Shapes:
        xq (M, K) int8, x_scale (M,), wq (N, K) int8, w_scale (N,), bias (N,) -> (M, N) out_dtype.
    """
    check_w8a8(xq, x_scale, wq, w_scale, bias=bias, out_dtype=out_dtype)
    _check_device(xq, "w8a8_gemm")
    (n_rows, k), n_out = xq.shape, wq.shape[0]
    out = torch.empty(n_rows, n_out, dtype=out_dtype, device=xq.device)
    if n_rows == 0 or n_out == 0:
        return out
    x_scale, w_scale = x_scale.contiguous(), w_scale.contiguous()
    bias_arg = bias.contiguous() if bias is not None else w_scale  # never read without HAS_BIAS
    args = (xq, x_scale, wq, w_scale, bias_arg, out, n_rows, n_out, k, _m_bucket(n_rows),
            xq.stride(0), xq.stride(1), wq.stride(0), wq.stride(1), out.stride(0), out.stride(1))
    tile = _fixed_tile("w8a8")
    if tile is not None:
        grid = (triton.cdiv(n_rows, tile.block_m) * triton.cdiv(n_out, tile.block_n),)
        _w8a8_kernel[grid](*args, HAS_BIAS=bias is not None, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                           BLOCK_K=tile.block_k, GROUP_M=tile.group_m, num_warps=tile.num_warps,
                           num_stages=tile.num_stages)
    else:
        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(n_rows, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),)

        _w8a8_tuned[grid](*args, HAS_BIAS=bias is not None)
    return out


# --------------------------------------------------------------------------------------------
# W4A4 + low-rank branch
# --------------------------------------------------------------------------------------------


@triton.jit
def _signed_nibbles(packed):
    """Bytes (uint8 tile) -> (low, high) signed 4-bit values as int8 tiles of the same shape."""
    b = packed.to(tl.int8, bitcast=True)
    lo = ((b << 4).to(tl.int8) >> 4).to(tl.int8)  # low nibble to the top, arithmetic shift back
    hi = (b >> 4).to(tl.int8)  # arithmetic shift: the high nibble, sign-extended
    return lo, hi


@triton.jit
def _w4a4_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, down_ptr, up_ptr, bias_ptr, out_ptr,
    M, N, n_groups, rank, m_bucket,
    stride_xm, stride_xk, stride_xsm, stride_xsg, stride_wn, stride_wk, stride_wsn, stride_wsg,
    stride_dm, stride_dr, stride_ur, stride_un, stride_om, stride_on,
    STEP_BYTES: tl.constexpr, STEPS: tl.constexpr, SPLIT: tl.constexpr,
    HAS_LORA: tl.constexpr, LORA_IEEE: tl.constexpr, BLOCK_R: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = (rows % M).to(tl.int64)  # wrapped: loads need no mask, the store masks
    cols_in = (cols % N).to(tl.int64)
    kb = tl.arange(0, STEP_BYTES)  # packed bytes of one step (2 * STEP_BYTES values of k)
    x_ptrs = x_ptr + rows_in[:, None] * stride_xm + kb[None, :] * stride_xk  # (BLOCK_M, STEP_BYTES)
    if SPLIT:
        w_ptrs = w_ptr + kb[:, None] * stride_wk + cols_in[None, :] * stride_wn  # (STEP_BYTES, BLOCK_N)
    else:
        w_ptrs = w_ptr + cols_in[:, None] * stride_wn + kb[None, :] * stride_wk  # (BLOCK_N, STEP_BYTES)
    xs_ptrs = xs_ptr + rows_in * stride_xsm
    ws_ptrs = ws_ptr + cols_in * stride_wsn

    # show: start w4a4-groups
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(0, n_groups):
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)  # this group's exact integer sums
        for _ in tl.static_range(STEPS):
            x_lo, x_hi = _signed_nibbles(tl.load(x_ptrs))
            w_lo, w_hi = _signed_nibbles(tl.load(w_ptrs))
            if SPLIT:  # sum_k x_k w_k = lo(x).lo(w) + hi(x).hi(w): both sides packed alike
                part = tl.dot(x_lo, w_lo, part, out_dtype=tl.int32)
                part = tl.dot(x_hi, w_hi, part, out_dtype=tl.int32)
            else:  # halves narrower than an int8 dot allows: put the nibbles back in k order
                xv = tl.reshape(tl.join(x_lo, x_hi), (BLOCK_M, 2 * STEP_BYTES))
                wv = tl.trans(tl.reshape(tl.join(w_lo, w_hi), (BLOCK_N, 2 * STEP_BYTES)))
                part = tl.dot(xv, wv, part, out_dtype=tl.int32)
            x_ptrs += STEP_BYTES * stride_xk
            w_ptrs += STEP_BYTES * stride_wk
        # SVDQuant eq. 6, 4-bit term: the group's integer sum times its token and channel scales
        xs = tl.load(xs_ptrs)
        ws = tl.load(ws_ptrs)
        acc += part.to(tl.float32) * xs[:, None] * ws[None, :]
        xs_ptrs += stride_xsg
        ws_ptrs += stride_wsg
    # show: end w4a4-groups

    # show: start w4a4-lora
    if HAS_LORA:  # epilogue: + (x L1) L2, the 16-bit low-rank branch, on the same tile
        rr = tl.arange(0, BLOCK_R)
        d_ptrs = down_ptr + rows_in[:, None] * stride_dm + rr[None, :] * stride_dr  # (BLOCK_M, BLOCK_R)
        u_ptrs = up_ptr + rr[:, None] * stride_ur + cols_in[None, :] * stride_un  # (BLOCK_R, BLOCK_N)
        for r0 in range(0, rank, BLOCK_R):
            mask_r = rr < rank - r0
            d = tl.load(d_ptrs, mask=mask_r[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=mask_r[:, None], other=0.0)
            if LORA_IEEE:  # float32 operands: full-precision products, no TF32
                acc = tl.dot(d, u, acc, input_precision="ieee")
            else:
                acc = tl.dot(d, u, acc)
            d_ptrs += BLOCK_R * stride_dr
            u_ptrs += BLOCK_R * stride_ur
    # show: end w4a4-lora
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols_in).to(tl.float32)[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on,
             acc.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < N)[None, :])


_w4a4_tuned = triton.autotune(
    configs=[t.config(with_k=False) for t in W4A4_TILES],
    key=["m_bucket", "N", "n_groups", "STEP_BYTES", "STEPS", "HAS_LORA"],
    prune_configs_by={"early_config_prune": _prune_by_m},
)(_w4a4_kernel)


def w4a4_step_bytes(group_size: int) -> tuple[int, int]:
    """``(bytes per K step, steps per group)`` of the W4A4 kernel for ``group_size``.

    A step must be a power of two of at least 16 bytes (32 values: an int8 ``tl.dot`` needs
    ``K >= 32``); a group of more than 256 values is split into 128-byte steps. Supported: G = 32,
    64, 128, 256 and any multiple of 256; anything else raises ``ValueError``.
    """
    half = group_size // 2
    if group_size in (32, 64, 128, 256):
        return half, 1
    if group_size > 256 and group_size % 256 == 0:
        return 128, half // 128
    raise ValueError(f"w4a4_gemm: the Triton path takes group_size 32, 64, 128, 256 or a multiple of 256 "
                     f"(an int8 tl.dot needs K >= 32 and tiles are powers of two), got {group_size}; "
                     "use backend='reference' for other group sizes")


def w4a4_gemm_triton(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
                     group_size: int, lora_down_out: torch.Tensor | None = None,
                     lora_up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fused W4A4 GEMM + low-rank branch with the signature of :func:`~labkit.quant.gemm.w4a4_gemm_reference`.

    Each group's integer sum is exact (int32); the group sums, the low-rank product and the bias
    accumulate in float32; the result is rounded once to ``out_dtype``. float32 low-rank operands
    use IEEE products (no TF32); pass float16/bfloat16 ones for speed. Group sizes: see
    :func:`w4a4_step_bytes`.

    Shapes:
        xq (M, K/2) uint8, x_scale (M, K/G), wq (N, K/2) uint8, w_scale (N, K/G), lora_down_out (M, r),
        lora_up (r, N), bias (N,) -> (M, N) out_dtype.
    """
    check_w4a4(xq, x_scale, wq, w_scale, group_size=group_size, lora_down_out=lora_down_out, lora_up=lora_up,
               bias=bias, out_dtype=out_dtype)
    _check_device(xq, "w4a4_gemm")
    step_bytes, steps = w4a4_step_bytes(group_size)
    n_rows, n_out, n_groups = xq.shape[0], wq.shape[0], x_scale.shape[1]
    out = torch.empty(n_rows, n_out, dtype=out_dtype, device=xq.device)
    if n_rows == 0 or n_out == 0:
        return out
    has_lora = lora_down_out is not None and lora_up is not None
    down = lora_down_out if has_lora else x_scale  # never read without HAS_LORA
    up = lora_up if has_lora else w_scale
    rank = lora_down_out.shape[1] if has_lora else 0
    block_r = min(64, max(16, triton.next_power_of_2(rank)))
    bias_arg = bias.contiguous() if bias is not None else w_scale  # never read without HAS_BIAS
    args = (xq, x_scale, wq, w_scale, down, up, bias_arg, out, n_rows, n_out, n_groups, rank, _m_bucket(n_rows),
            xq.stride(0), xq.stride(1), x_scale.stride(0), x_scale.stride(1),
            wq.stride(0), wq.stride(1), w_scale.stride(0), w_scale.stride(1),
            down.stride(0), down.stride(1), up.stride(0), up.stride(1), out.stride(0), out.stride(1))
    meta = dict(STEP_BYTES=step_bytes, STEPS=steps, SPLIT=step_bytes >= 32, HAS_LORA=has_lora,
                LORA_IEEE=has_lora and down.dtype == torch.float32, BLOCK_R=block_r, HAS_BIAS=bias is not None)
    tile = _fixed_tile("w4a4")
    if tile is not None:
        grid = (triton.cdiv(n_rows, tile.block_m) * triton.cdiv(n_out, tile.block_n),)
        _w4a4_kernel[grid](*args, **meta, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, GROUP_M=tile.group_m,
                           num_warps=tile.num_warps, num_stages=tile.num_stages)
    else:
        def grid(meta: dict) -> tuple[int]:
            return (triton.cdiv(n_rows, meta["BLOCK_M"]) * triton.cdiv(n_out, meta["BLOCK_N"]),)

        _w4a4_tuned[grid](*args, **meta)
    return out

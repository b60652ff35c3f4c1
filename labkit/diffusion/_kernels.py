"""Triton kernel for :mod:`labkit.diffusion.norm` (imported only when Triton is chosen).

What. :func:`group_norm_silu_triton`, GroupNorm followed by SiLU with the signature of
:func:`~labkit.diffusion.norm.group_norm_silu_reference`. One program owns one (sample, group):
the ``C/G`` channels by ``S`` spatial positions of that group, seen as a (C/G, S) matrix and
walked in tiles of ``BLOCK_C`` channels by ``BLOCK_S`` positions (no integer division to find an
element's channel: it is the tile's row).

- Statistics, in float32. When the whole group fits in one tile (``ONE_PASS``, e.g. every group
  of the tiny UNet) the tile is loaded once and kept in registers: the mean, then the variance
  as the mean of squared deviations from it (two passes over registers, not over memory).
  Otherwise a loop over the tiles runs Welford's update in every lane of the tile (each lane
  keeps its own count, mean and sum of squared deviations), and the lanes are merged at the end
  with the pairwise formula of Chan, Golub and LeVeque: no ``E[x^2] - E[x]^2`` cancellation.
- Output. ``scale = gamma * rstd`` per channel (one row of the tile), ``y = (x - mean) * scale +
  beta``, ``silu(y) = y / (1 + exp(-y))``, rounded once to x's dtype.
  In the looped case x is read a second time (often from L2: a group of a real UNet is tens
  to a few hundred KiB).

So the fused op reads x once (one tile) or twice and writes once, where eager PyTorch reads it
three times and writes twice (GroupNorm's statistics and normalisation passes, then SiLU).

What the miniature leaves out: no backward (the Triton path is forward-only: the result does not
track gradients, and the UNet uses the reference whenever autograd is recording), no autotuning
(tile sizes follow from the shape by a fixed rule), no split of a large group over several
programs (with few samples and groups, e.g. B = 8, G = 32, there are only 256 programs: enough
for an H100's 132 SMs, not many more), no channels-last layout (any strides are accepted, but
the tile is only coalesced when the spatial positions are contiguous).

Reductions go through ``tl.reduce`` with triton.language's own combine function and SiLU's
sigmoid is written out, not ``tl.sum`` / ``tl.sigmoid``: the compiled code is the same, and the
interpreter does not have to call jitted helpers of triton.language (which it cannot when triton
was imported before ``TRITON_INTERPRET=1`` was set). Under ``TRITON_INTERPRET=1`` (set before
this module is imported) the kernel runs on CPU tensors in Triton's interpreter, which the tests
use; it mishandles bfloat16, so CPU tests stop at float16.

Shapes: B batch, C channels, G groups, S = prod(spatial) positions.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .norm import check_group_norm_args

__all__ = ["group_norm_silu_triton", "group_norm_silu_tiles"]

_SUM = tl.standard._sum_combine
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

#: Largest tile (BLOCK_C * BLOCK_S elements) a program holds; 8 warps give 16 elements a thread.
MAX_TILE = 4096


@triton.jit
def _silu_tile_store(x, rows, cols, group_channels, mask, w_ptr, b_ptr, y_ptr,
                     mean, rstd, stride_yc, stride_ys):
    """Affine map with the group's statistics, SiLU, store: one tile of y.

    The tile is (BLOCK_C, BLOCK_S): ``rows`` are channels, ``cols`` positions.
    """
    row_ok = rows < group_channels
    # (BLOCK_C,)
    gamma = tl.load(w_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    beta = tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    # per channel; (x - mean) first: x * scale + (beta - mean * scale)
    # would cancel
    scale = gamma * rstd
    # padding lanes set to 0: no exp overflow
    y = tl.where(mask, (x - mean) * scale[:, None] + beta[:, None], 0.0)
    out = y / (1.0 + tl.exp(-y))  # silu(y) = y * sigmoid(y)
    tl.store(y_ptr + rows[:, None] * stride_yc + cols[None, :] * stride_ys,
             out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_norm_silu_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    num_groups, group_channels, n_spatial, eps,
    stride_xb, stride_xc, stride_xs, stride_yb, stride_yc, stride_ys,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, ONE_PASS: tl.constexpr,
):
    pid = tl.program_id(axis=0)  # = sample * num_groups + group
    sample = pid // num_groups
    c_start = (pid % num_groups) * group_channels  # first channel of the group
    x_ptr += sample.to(tl.int64) * stride_xb + c_start.to(tl.int64) * stride_xc
    y_ptr += sample.to(tl.int64) * stride_yb + c_start.to(tl.int64) * stride_yc
    w_ptr += c_start
    b_ptr += c_start
    n = group_channels * n_spatial  # elements of the group, m in eq. 2 (the divisions below are in float32)
    rows0 = tl.arange(0, BLOCK_C)
    cols0 = tl.arange(0, BLOCK_S)

    # show: start one-pass
    if ONE_PASS:  # the group is one tile: load it once, keep it in registers
        mask = (rows0[:, None] < group_channels) & (cols0[None, :] < n_spatial)
        x = tl.load(x_ptr + rows0[:, None] * stride_xc + cols0[None, :] * stride_xs,
                    mask=mask, other=0.0).to(tl.float32)
        mean = tl.reduce(tl.reduce(x, 1, _SUM), 0, _SUM) / n
        centered = tl.where(mask, x - mean, 0.0)
        var = tl.reduce(tl.reduce(centered * centered, 1, _SUM), 0, _SUM) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        _silu_tile_store(x, rows0, cols0, group_channels, mask, w_ptr, b_ptr, y_ptr,
                         mean, rstd, stride_yc, stride_ys)
    # show: end one-pass
    else:
        # Welford in every lane: count, mean and sum of squared deviations of what the lane saw
        count = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        mu = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        m2 = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        for c0 in range(0, group_channels, BLOCK_C):
            rows = c0 + rows0
            for s0 in range(0, n_spatial, BLOCK_S):
                cols = s0 + cols0
                mask = (rows[:, None] < group_channels) & (cols[None, :] < n_spatial)
                x = tl.load(x_ptr + rows[:, None] * stride_xc + cols[None, :] * stride_xs,
                            mask=mask, other=0.0).to(tl.float32)
                count += mask.to(tl.float32)
                delta = tl.where(mask, x - mu, 0.0)
                mu += delta / tl.maximum(count, 1.0)
                m2 += delta * tl.where(mask, x - mu, 0.0)
        # merge the lanes (Chan et al.): M2 = sum_j M2_j + sum_j n_j (mu_j - mean)^2
        mean = tl.reduce(tl.reduce(count * mu, 1, _SUM), 0, _SUM) / n
        spread = m2 + count * (mu - mean) * (mu - mean)
        var = tl.reduce(tl.reduce(spread, 1, _SUM), 0, _SUM) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        for c0 in range(0, group_channels, BLOCK_C):  # second read of the group, often from L2
            rows = c0 + rows0
            for s0 in range(0, n_spatial, BLOCK_S):
                cols = s0 + cols0
                mask = (rows[:, None] < group_channels) & (cols[None, :] < n_spatial)
                x = tl.load(x_ptr + rows[:, None] * stride_xc + cols[None, :] * stride_xs,
                            mask=mask, other=0.0).to(tl.float32)
                _silu_tile_store(x, rows, cols, group_channels, mask, w_ptr, b_ptr, y_ptr, mean, rstd,
                                 stride_yc, stride_ys)


def group_norm_silu_tiles(group_channels: int, n_spatial: int) -> tuple[int, int, bool, int]:
    """The fixed launch rule: ``(BLOCK_C, BLOCK_S, ONE_PASS, num_warps)`` for a (C/G, S) group.

    ``BLOCK_S`` covers the spatial positions (2 to :data:`MAX_TILE`), ``BLOCK_C`` as many channels
    as fit in the rest of the tile; ``ONE_PASS`` when the tile holds the whole group. One warp per
    256 elements of the tile, 1 to 8.
    """
    block_s = min(max(2, triton.next_power_of_2(n_spatial)), MAX_TILE)  # no 1 x 1 tiles
    block_c = min(triton.next_power_of_2(group_channels), MAX_TILE // block_s)
    one_pass = block_c >= group_channels and block_s >= n_spatial
    num_warps = max(1, min(8, block_c * block_s // 256))
    return block_c, block_s, one_pass, num_warps


def group_norm_silu_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           num_groups: int, eps: float = 1e-5) -> torch.Tensor:
    """Fused GroupNorm + SiLU with the signature of :func:`~labkit.diffusion.norm.group_norm_silu_reference`.

    Forward only: the result does not track gradients. Statistics and the affine map in float32,
    one rounding to x's dtype at the end (float32, float16, bfloat16; bfloat16 on GPU only).
    ``x`` may be strided: its spatial dims are flattened with ``reshape`` (a view when they are
    mergeable, else a copy) and read through their strides; the result is always contiguous.
    ``weight`` and ``bias`` may be any float dtype (read as float32) or None.

    Shapes:
        x (B, C, *spatial), weight (C,), bias (C,) -> (B, C, *spatial), the dtype of x.
    """
    check_group_norm_args(x, weight, bias, num_groups, eps)
    if not (x.is_cuda or triton_interpreting()):
        raise ValueError("group_norm_silu: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")
    if x.dtype not in _FLOATS:
        raise TypeError(f"group_norm_silu: the Triton path takes float32, float16 or bfloat16, got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"group_norm_silu: {name} is on {t.device}, x on {x.device}")
    batch, channels = x.shape[:2]
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous
    if x.numel() == 0:
        return y
    n_spatial = x[0, 0].numel()
    group_channels = channels // num_groups
    x3 = x.reshape(batch, channels, n_spatial)  # a view unless the spatial dims cannot be merged
    y3 = y.view(batch, channels, n_spatial)
    in_group = (group_channels - 1) * max(x3.stride(1), 0) + (n_spatial - 1) * max(x3.stride(2), 0)
    if group_channels * n_spatial >= 2**31 or in_group >= 2**31:
        raise ValueError(f"group_norm_silu: a group of {group_channels} x {n_spatial} elements (strides "
                         f"{x3.stride()}) is too large for the kernel's 32-bit offsets within a group")
    weight = torch.ones(channels, device=x.device) if weight is None else weight.contiguous()
    bias = torch.zeros(channels, device=x.device) if bias is None else bias.contiguous()
    block_c, block_s, one_pass, num_warps = group_norm_silu_tiles(group_channels, n_spatial)
    _group_norm_silu_kernel[(batch * num_groups,)](
        x3, weight, bias, y3,
        num_groups, group_channels, n_spatial, float(eps),
        x3.stride(0), x3.stride(1), x3.stride(2), y3.stride(0), y3.stride(1), y3.stride(2),
        BLOCK_C=block_c, BLOCK_S=block_s, ONE_PASS=one_pass, num_warps=num_warps,
    )
    return y

"""Quantized matrix multiplication: W8A8, and W4A4 with a high-precision low-rank branch.

A linear layer ``y = x @ W.T`` whose activations and weights are both quantized runs its inner
products on integers: ``x ~ x_scale * xq`` and ``W ~ w_scale * wq``, so
``x @ W.T ~ (xq @ wq.T) * x_scale * w_scale``, where ``xq @ wq.T`` is an integer matrix product
(int8 tensor cores, 32-bit integer accumulation) and the scales are applied once per output
element in the kernel's epilogue. This module holds the two formats of chapter 10:

- **W8A8**: ``int8`` activations with one scale per token (row of ``x``) and ``int8`` weights
  with one scale per output channel (row of ``W``). Both scales factor out of the sum over
  ``K``, so one integer GEMM and one rescale suffice:
  ``out[m, n] = (sum_k xq[m, k] wq[n, k]) * x_scale[m] * w_scale[n] (+ bias[n])``.
- **W4A4** (SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion Models):
  4-bit activations and weights, packed two per byte (:mod:`labkit.quant.packing`), each with
  one scale per group of ``group_size`` consecutive ``k`` (per token and group for ``x``, per
  output channel and group for ``W``). The scales now change along ``K``, so the integer sum
  runs per group and is rescaled per group:
  ``out[m, n] = sum_g (sum_{k in g} xq[m, k] wq[n, k]) * x_scale[m, g] * w_scale[n, g]``.
  SVDQuant writes the (smoothed) weight as ``W = L1 L2 + R`` (eq. 5): a rank-``r`` part kept
  in 16 bits and a residual ``R`` quantized to 4 bits, so
  ``x W ~ (x L1) L2 + Q(x) Q(R)`` (eq. 6). The low-rank term is added here as
  ``lora_down_out @ lora_up``, with ``lora_down_out = x @ L1`` computed by the caller (the paper's
  engine fuses that down-projection into the activation quantizer, and the up-projection into
  the 4-bit GEMM's epilogue, which is what the Triton path here does: one kernel, one write of
  ``out``).

The references below are the readable, exact versions: integer products in float64 (exact for
``|sum| < 2^53``), scales in float64, one rounding to ``out_dtype`` at the end. The Triton paths
in :mod:`labkit.quant._kernels` accumulate integers in int32 and the rescaled sum in float32.

What the miniature leaves out: no activation quantizer fused into the GEMM's prologue, no
asymmetric (zero-point) formats, no int4 tensor-core instructions (Hopper has none for int4
in Triton; the kernel unpacks to int8), no FP4/NVFP4 microscaling formats, no backward.

Shapes: M tokens (rows of x), N output channels, K input width (unpacked), G = group_size,
K / G groups, r the rank of the low-rank branch.
Section: chapter 10, "SVDQuant: 4-bit weights and activations with a low-rank branch".
"""

from __future__ import annotations

import torch

from labkit.backend import Op
from labkit.quant.packing import unpack_int4
from labkit.validation import check_int, check_tensor

__all__ = [
    "OUT_DTYPES",
    "check_w4a4",
    "check_w8a8",
    "w4a4_gemm",
    "w4a4_gemm_reference",
    "w8a8_gemm",
    "w8a8_gemm_reference",
]

#: Output dtypes the GEMMs write (float64: the references' exact sums; the kernels' float32 ones, widened).
OUT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_LOW_RANK_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} {what}, got {tuple(t.shape)}")


def _check_common(xq: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype, n_out: int,
                  others: list[torch.Tensor | None]) -> None:
    if bias is not None:
        check_tensor("bias", bias, dims=1, dtype=_LOW_RANK_DTYPES, shape="(N,)")
        _check_shape("bias", bias, (n_out,), "(N,)")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    devices = {t.device for t in [xq, *others, bias] if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")


def check_w8a8(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> None:
    """Raise a clear ``TypeError``/``ValueError`` unless the arguments of :func:`w8a8_gemm` agree."""
    check_tensor("xq", xq, dims=2, dtype=torch.int8, shape="(M, K)")
    check_tensor("wq", wq, dims=2, dtype=torch.int8, shape="(N, K)")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq has K={xq.shape[1]} columns but wq has K={wq.shape[1]}")
    check_tensor("x_scale", x_scale, dims=1, dtype=torch.float32, shape="(M,), one scale per token")
    _check_shape("x_scale", x_scale, (xq.shape[0],), "(M,), one scale per token")
    check_tensor("w_scale", w_scale, dims=1, dtype=torch.float32, shape="(N,), one scale per output channel")
    _check_shape("w_scale", w_scale, (wq.shape[0],), "(N,), one scale per output channel")
    _check_common(xq, bias, out_dtype, wq.shape[0], [x_scale, wq, w_scale])


def check_w4a4(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
               group_size: int, lora_down_out: torch.Tensor | None = None, lora_up: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> None:
    """Raise a clear ``TypeError``/``ValueError`` unless the arguments of :func:`w4a4_gemm` agree."""
    check_tensor("xq", xq, dims=2, dtype=torch.uint8, shape="(M, K/2) of packed int4 pairs")
    check_tensor("wq", wq, dims=2, dtype=torch.uint8, shape="(N, K/2) of packed int4 pairs")
    if xq.shape[1] != wq.shape[1]:
        raise ValueError(f"xq has K/2={xq.shape[1]} packed columns but wq has K/2={wq.shape[1]}")
    n_rows, n_out, k = xq.shape[0], wq.shape[0], 2 * xq.shape[1]
    check_int("group_size", group_size, 2)
    if group_size % 2:
        raise ValueError(f"group_size must be even (a group covers whole packed bytes), got {group_size}")
    if k % group_size:
        raise ValueError(f"group_size={group_size} must divide the unpacked width K={k}")
    n_groups = k // group_size
    what = f"(M, K/G) = ({n_rows}, {n_groups}), one scale per token and group"
    check_tensor("x_scale", x_scale, dims=2, dtype=torch.float32, shape=what)
    _check_shape("x_scale", x_scale, (n_rows, n_groups), what)
    what = f"(N, K/G) = ({n_out}, {n_groups}), one scale per output channel and group"
    check_tensor("w_scale", w_scale, dims=2, dtype=torch.float32, shape=what)
    _check_shape("w_scale", w_scale, (n_out, n_groups), what)
    if (lora_down_out is None) != (lora_up is None):
        raise ValueError("lora_down_out and lora_up come together: pass both (the low-rank branch) or neither")
    if lora_down_out is not None and lora_up is not None:
        check_tensor("lora_down_out", lora_down_out, dims=2, dtype=_LOW_RANK_DTYPES, shape="(M, r)")
        check_tensor("lora_up", lora_up, dims=2, dtype=_LOW_RANK_DTYPES, shape="(r, N)")
        rank = lora_down_out.shape[1]
        if lora_down_out.shape[0] != n_rows or rank < 1:
            raise ValueError(f"lora_down_out must have shape (M, r) with M={n_rows}, r >= 1, "
                             f"got {tuple(lora_down_out.shape)}")
        _check_shape("lora_up", lora_up, (rank, n_out), f"(r, N) = ({rank}, {n_out})")
        if lora_down_out.dtype != lora_up.dtype:
            raise TypeError(f"lora_down_out and lora_up must share a dtype, got {lora_down_out.dtype} "
                            f"and {lora_up.dtype}")
    _check_common(xq, bias, out_dtype, n_out, [x_scale, wq, w_scale, lora_down_out, lora_up])


def w8a8_gemm_reference(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
                        bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit weights x 8-bit activations: an integer GEMM, rescaled per token and per channel.

    Args:
        xq: quantized activations, ``int8``.
        x_scale: one ``float32`` scale per token (row of ``xq``).
        wq: quantized weight, ``int8``, one row per output channel (the layout of ``nn.Linear``).
        w_scale: one ``float32`` scale per output channel.
        bias: optional float bias, added after the rescale.
        out_dtype: ``float32`` (default), ``float16``, ``bfloat16`` or ``float64``.

    Returns:
        ``(xq @ wq.T) * x_scale[:, None] * w_scale[None, :] + bias``: the integer product exact,
        the rest in float64, rounded once to ``out_dtype``.

    Shapes:
        xq (M, K), x_scale (M,), wq (N, K), w_scale (N,), bias (N,) -> (M, N).
    """
    check_w8a8(xq, x_scale, wq, w_scale, bias=bias, out_dtype=out_dtype)
    acc = xq.double() @ wq.double().T  # (M, N) integer-valued, exact: |acc| <= K * 2^14 << 2^53
    out = acc * x_scale.double()[:, None] * w_scale.double()[None, :]  # per-token x per-channel scale
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


def w4a4_gemm_reference(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, *,
                        group_size: int, lora_down_out: torch.Tensor | None = None,
                        lora_up: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """4-bit weights x 4-bit activations with group scales, plus SVDQuant's low-rank branch.

    Args:
        xq: activations quantized to int4, packed two per byte along K (:func:`~labkit.quant.packing.pack_int4`).
        x_scale: ``float32`` scales, one per token and group of ``group_size`` consecutive k.
        wq: weight (residual ``R`` of SVDQuant) quantized to int4 and packed, one row per output channel.
        w_scale: ``float32`` scales, one per output channel and group.
        group_size: G, even, dividing K; the integer sums run per group.
        lora_down_out: the low-rank branch's first half ``x @ L1`` (computed by the caller), or None.
        lora_up: its second half ``L2``, or None (both or neither).
        bias: optional float bias.
        out_dtype: ``float32`` (default), ``float16``, ``bfloat16`` or ``float64``.

    Returns:
        ``sum_g (xq_g @ wq_g.T) * x_scale[:, g, None] * w_scale[None, :, g] + lora_down_out @ lora_up + bias``
        (SVDQuant eq. 6 with the quantized residual in group-scaled int4), in float64, rounded once.

    Shapes:
        xq (M, K/2) uint8, x_scale (M, K/G), wq (N, K/2) uint8, w_scale (N, K/G), lora_down_out (M, r),
        lora_up (r, N), bias (N,) -> (M, N).
    """
    check_w4a4(xq, x_scale, wq, w_scale, group_size=group_size, lora_down_out=lora_down_out, lora_up=lora_up,
               bias=bias, out_dtype=out_dtype)
    n_rows, n_out, k = xq.shape[0], wq.shape[0], 2 * xq.shape[1]
    n_groups = k // group_size
    xg = unpack_int4(xq).double().reshape(n_rows, n_groups, group_size)  # (M, K/G, G)
    wg = unpack_int4(wq).double().reshape(n_out, n_groups, group_size)  # (N, K/G, G)
    xs, ws = x_scale.double(), w_scale.double()
    out = torch.zeros(n_rows, n_out, dtype=torch.float64, device=xq.device)
    for g in range(n_groups):  # one group at a time, as the kernel does (memory stays (M, N))
        partial = xg[:, g] @ wg[:, g].T  # (M, N) the group's integer inner products, exact in float64
        # SVDQuant eq. 6, 4-bit term: each group's integer sum times its token and channel scales
        out += partial * xs[:, g, None] * ws[None, :, g]
    if lora_down_out is not None and lora_up is not None:
        out = out + lora_down_out.double() @ lora_up.double()  # the 16-bit low-rank branch (x L1) L2
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


#: W8A8 GEMM; Triton path in :mod:`labkit.quant._kernels`.
w8a8_gemm = Op("w8a8_gemm", reference=w8a8_gemm_reference, triton="labkit.quant._kernels:w8a8_gemm_triton")

#: W4A4 GEMM with an optional fused low-rank branch; Triton path in :mod:`labkit.quant._kernels`.
w4a4_gemm = Op("w4a4_gemm", reference=w4a4_gemm_reference, triton="labkit.quant._kernels:w4a4_gemm_triton")

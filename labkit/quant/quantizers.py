"""Uniform quantizers: symmetric and affine, per tensor, per channel and per group.

A ``b``-bit uniform quantizer maps a real ``x`` to an integer code and back,

    q = clamp(round(x / s) + z, q_min, q_max),        x_hat = s (q - z),

with a scale ``s > 0`` and a zero point ``z``. *Symmetric* quantizers fix ``z = 0`` and use the
signed codes ``[-2^(b-1), 2^(b-1) - 1]`` with ``s = max|x| / (2^(b-1) - 1)``; *affine* ones use
``[0, 2^b - 1]`` and place the zero point so that the observed ``[lo, hi]`` range is covered.
The rounding error of a value inside the range is at most ``s / 2``; values outside are clipped,
which is where outliers hurt: one large value stretches ``s`` for everything that shares it.
Sharing is what the *granularity* decides: one scale per tensor, per output channel (a row of a
weight matrix) or per group of ``G`` consecutive values along the last dimension.

4-bit codes are stored two per byte by :mod:`labkit.quant.packing` and 8-bit ones one per
byte; :class:`QTensor` reports their size in bytes (codes plus fp16 scales and zero points). For
other widths it reports the ideal ``ceil(N b / 8)`` bytes of a bit-packed format that labkit
does not implement.

Rounding uses a straight-through estimator (the gradient of ``round`` is taken as 1), so a
fake-quantized model can be finetuned (QuEST, chapter 10 section 2).

Inputs must be finite: one NaN or inf in a slice would make its scale NaN or infinite and wipe
out every value sharing it, so :func:`fake_quantize`, :func:`quantize_tensor` and the observers
raise ``ValueError`` instead, saying how many values are not finite. An empty tensor
fake-quantizes to an empty tensor (there is nothing to round), but a slice with no values has no
range: :func:`reduce_range` and :func:`quantize_tensor` raise ``ValueError`` when some slice is
empty (a tensor with no slices at all, such as ``(0, C)`` per channel, gives empty codes).

What the miniature leaves out: non-uniform codebooks (NF4), floating-point formats (FP8/FP4) and
stochastic rounding.

Shape letters: N elements, C channels (dimension ``axis``), G group size along the last dimension.

Section: chapter 10, "Quantization from first principles".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..validation import check_finite_tensor, check_int

__all__ = ["GRANULARITIES", "QSpec", "QTensor", "code_range", "dequantize", "fake_quantize", "quantize",
           "quantize_tensor", "reduce_range", "round_ste", "scale_zero"]

GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")
_SCALE_BYTES = 2  # scales and zero points are stored in fp16


@dataclass(frozen=True)
class QSpec:
    """How to quantize a tensor.

    Attributes:
        bits: code width b, 2..8.
        symmetric: signed codes with zero point 0, else unsigned affine codes.
        granularity: ``"tensor"``, ``"channel"`` (one scale per index of ``axis``) or
            ``"group"`` (one per ``group_size`` consecutive values of the last dimension,
            per row).
        axis: the channel dimension for ``granularity="channel"``; negative values count from
            the end, and it must name a dimension of the tensor quantized.
        group_size: G for ``granularity="group"``.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 2, 8)
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise TypeError(f"axis must be an int, got {type(self.axis).__name__}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("granularity='group' needs a group_size")
            check_int("group_size", self.group_size, 1)
        elif self.group_size is not None:
            raise ValueError(f"group_size is only used with granularity='group', got {self.group_size}")


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest integer code: ``[-2^(b-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    check_int("bits", bits, 2, 8)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def _channel_axis(x: torch.Tensor, spec: QSpec) -> int:
    """``spec.axis`` as a dimension of ``x`` in ``[0, x.dim())``; raise if ``x`` has no such dimension."""
    if x.dim() == 0:
        raise ValueError("granularity='channel' needs a tensor with at least one dimension, got a 0-d tensor")
    if not -x.dim() <= spec.axis < x.dim():
        raise ValueError(f"axis={spec.axis} is out of range for a {x.dim()}-D tensor of shape {tuple(x.shape)} "
                         f"(valid axes: {-x.dim()} to {x.dim() - 1})")
    return spec.axis % x.dim()


def _grouped(x: torch.Tensor, spec: QSpec) -> torch.Tensor:
    """View ``x`` as (rows, groups): each row of the view shares one scale."""
    if spec.granularity == "tensor":
        return x.reshape(1, -1)
    if spec.granularity == "channel":
        moved = x.movedim(_channel_axis(x, spec), 0)
        return moved.reshape(moved.shape[0], math.prod(moved.shape[1:]))  # explicit: C may be 0
    if x.dim() == 0 or x.shape[-1] % spec.group_size:
        size = x.shape[-1] if x.dim() else 1
        raise ValueError(f"group_size={spec.group_size} does not divide the last dimension ({size})")
    return x.reshape(-1, spec.group_size)


def _ungrouped(v: torch.Tensor, x: torch.Tensor, spec: QSpec) -> torch.Tensor:
    """Inverse of :func:`_grouped` for a tensor of the grouped view's shape."""
    if spec.granularity == "channel":
        axis = _channel_axis(x, spec)
        moved = list(x.movedim(axis, 0).shape)
        return v.reshape(moved).movedim(0, axis)
    return v.reshape(x.shape)


def reduce_range(x: torch.Tensor, spec: QSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` per scale-sharing slice.

    Returns:
        ``(lo, hi)``, each of shape (S,): S = 1, C or N / G.

    Raises:
        ValueError: a slice has no values (e.g. an empty tensor per tensor); no slices at all is fine.
    """
    return _slice_range(x, spec, op="reduce_range")


def _slice_range(x: torch.Tensor, spec: QSpec, *, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = _grouped(x.detach(), spec)
    if g.shape[0] > 0 and g.shape[1] == 0:
        raise ValueError(f"{op}: x is empty (shape {tuple(x.shape)}): its {g.shape[0]} {spec.granularity} "
                         "slice(s) hold no values, so there is no range to take a scale from")
    return g.amin(dim=1), g.amax(dim=1)


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, spec: QSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering ``[lo, hi]`` (elementwise, any shape).

    Symmetric: ``s = max(|lo|, |hi|) / (2^(b-1) - 1)``, ``z = 0``. Affine: the range is first
    widened to contain 0 (so that 0 is exact), ``s = (hi - lo) / (2^b - 1)``,
    ``z = round(-lo / s)``. A zero range gets a tiny positive scale instead of dividing by 0.

    Raises:
        ValueError: a bound is NaN or infinite, or some ``lo > hi``.
    """
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    # one sync for the three checks; the messages are worked out only when one fails
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all() & (lo <= hi).all()):
        check_finite_tensor("lo", lo, op="scale_zero")
        check_finite_tensor("hi", hi, op="scale_zero")
        raise ValueError("every lo must be <= hi")
    # show: start scale-zero
    q_min, q_max = code_range(spec.bits, spec.symmetric)
    if spec.symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / q_max
        zero = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = (hi - lo) / (q_max - q_min)
        zero = torch.round(-lo / scale.clamp(min=1e-12))
    return scale.clamp(min=1e-12), zero
    # show: end scale-zero


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QSpec) -> torch.Tensor:
    """Integer codes of ``x`` (as float, rounded with STE) for per-slice ``scale``/``zero`` (S,)."""
    # show: start quantize
    q_min, q_max = code_range(spec.bits, spec.symmetric)
    g = _grouped(x, spec)  # (S, values per slice): one row per scale
    if scale.numel() != g.shape[0] or zero.numel() != g.shape[0]:
        raise ValueError(f"{spec.granularity} quantization of shape {tuple(x.shape)} needs {g.shape[0]} scales, "
                         f"got {scale.numel()} scales and {zero.numel()} zero points")
    q = torch.clamp(round_ste(g / scale.reshape(-1, 1)) + zero.reshape(-1, 1), q_min, q_max)
    return _ungrouped(q, x, spec)
    # show: end quantize


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QSpec) -> torch.Tensor:
    """``s (q - z)`` per slice: the values the codes stand for."""
    g = _grouped(q.to(scale.dtype) if not q.is_floating_point() else q, spec)
    return _ungrouped((g - zero.reshape(-1, 1)) * scale.reshape(-1, 1), q, spec)


def fake_quantize(x: torch.Tensor, spec: QSpec, *, lo: torch.Tensor | None = None,
                  hi: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize and dequantize ``x`` (same shape and dtype): the error a ``b``-bit format makes.

    Args:
        x: any float tensor, every value finite; an empty one gives an empty result.
        spec: bits, symmetry and granularity.
        lo, hi: calibrated ranges per slice (S,), finite; default: ``x``'s own min and max (dynamic).

    Raises:
        TypeError: ``x`` is not a float tensor.
        ValueError: ``x``, ``lo`` or ``hi`` holds NaN or inf (the message counts them), ``axis`` is
            not a dimension of ``x``, or ``group_size`` does not divide its last dimension.
    """
    return _fake_quantize(x, spec, lo, hi, name="x", op="fake_quantize")


def _fake_quantize(x: torch.Tensor, spec: QSpec, lo: torch.Tensor | None, hi: torch.Tensor | None, *,
                   name: str, op: str) -> torch.Tensor:
    """:func:`fake_quantize`, with errors that call ``x`` ``name`` and come from ``op``."""
    if not x.is_floating_point():
        raise TypeError(f"{op} needs a float tensor, got {x.dtype}")
    if (lo is None) != (hi is None):
        raise ValueError("pass both lo and hi, or neither")
    check_finite_tensor(name, x, op=op)
    if lo is None:
        if x.numel() == 0:  # nothing to round, hence no range needed; the spec must still fit x
            _grouped(x, spec)
            return x.clone()
        lo, hi = reduce_range(x, spec)
    scale, zero = scale_zero(lo.to(x.device), hi.to(x.device), spec)
    out = dequantize(quantize(x.float(), scale, zero, spec), scale, zero, spec)
    return out.to(x.dtype)


@dataclass(frozen=True)
class QTensor:
    """A quantized tensor: integer codes plus the scales and zero points to read them.

    Attributes:
        codes: int16 codes, ``x``'s shape.
        scale, zero: per slice (S,), float32.
        spec: the format.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: QSpec

    def dequantize(self) -> torch.Tensor:
        """The float32 tensor the codes represent."""
        return dequantize(self.codes, self.scale, self.zero, self.spec)

    @property
    def nbytes(self) -> int:
        """Storage in bytes: ``ceil(N b / 8)`` for the codes plus fp16 scales, and fp16 zero
        points for affine formats. For 4 and 8 bits this is what labkit stores (int4 packed two
        per byte by :mod:`labkit.quant.packing`, int8 one per byte); for 2, 3, 5, 6 and 7 bits it
        is an *ideal* count, as if the codes were bit-packed end to end, which labkit does not
        do (it keeps them unpacked). (The fake quantizer keeps its scales in
        fp32; storing them in fp16 moves each by at most 2^-11 of itself.)"""
        code_bytes = -(-self.codes.numel() * self.spec.bits // 8)
        per_slice = _SCALE_BYTES * (1 if self.spec.symmetric else 2)
        return code_bytes + per_slice * self.scale.numel()

    @property
    def bits_per_value(self) -> float:
        """Average storage per value, scales included."""
        return 8 * self.nbytes / self.codes.numel()


def quantize_tensor(x: torch.Tensor, spec: QSpec) -> QTensor:
    """Quantize ``x`` with ranges taken from ``x`` itself (the usual way for weights).

    Raises:
        TypeError: ``x`` is not a float tensor.
        ValueError: ``x`` holds NaN or inf, a slice of it is empty, or the spec does not fit its shape.
    """
    if not x.is_floating_point():
        raise TypeError(f"quantize_tensor needs a float tensor, got {x.dtype}")
    check_finite_tensor("x", x, op="quantize_tensor")
    lo, hi = _slice_range(x, spec, op="quantize_tensor")
    scale, zero = scale_zero(lo, hi, spec)
    with torch.no_grad():
        codes = quantize(x.float(), scale, zero, spec).to(torch.int16)
    return QTensor(codes=codes, scale=scale, zero=zero, spec=spec)

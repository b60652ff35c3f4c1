"""How many bytes a (fake-)quantized model takes when stored for real.

A wrapped layer's weight counts at its format's size (codes packed, plus fp16 scales and zero
points: :attr:`labkit.quant.QTensor.nbytes`, exact for 4 and 8 bits, an ideal bit-packed
count for other widths); every other parameter counts at ``float_bits``.
A tensor shared by two modules (the tiny GPT ties its embedding and output head) counts once,
quantized if a wrapped layer holds it (one stored copy serves both).

Section: chapter 10, "Quantization from first principles".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from labkit.validation import check_int

from .fakequant import QuantWrapper
from .quantizers import quantize_tensor

__all__ = ["SizeReport", "model_size"]


@dataclass(frozen=True)
class SizeReport:
    """Bytes of a model: quantized weights, other parameters, and the total.

    Attributes:
        quantized_bytes: weights of wrapped layers, as stored.
        float_bytes: every other parameter at ``float_bits``.
        n_quantized, n_float: parameter counts of each kind.
    """

    quantized_bytes: int
    float_bytes: int
    n_quantized: int
    n_float: int

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.float_bytes

    @property
    def bits_per_param(self) -> float:
        return 8 * self.total_bytes / max(self.n_quantized + self.n_float, 1)


def model_size(model: nn.Module, *, float_bits: int = 16) -> SizeReport:
    """Storage of ``model`` with wrapped weights at their formats and the rest at ``float_bits``.

    Args:
        model: any module; :class:`QuantWrapper` layers with a weight format count quantized.
        float_bits: 32, 16 or 8 bits for the other parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if check_int("float_bits", float_bits, 8, 32) not in (8, 16, 32):
        raise ValueError(f"float_bits must be 8, 16 or 32, got {float_bits}")
    quantized = {id(m.inner.weight): m for m in model.modules() if isinstance(m, QuantWrapper) and m.w_spec is not None}
    q_bytes = f_bytes = n_q = n_f = 0
    for _, p in model.named_parameters():  # shared tensors appear once
        wrapper = quantized.get(id(p))
        if wrapper is not None:
            q_bytes += quantize_tensor(p.detach(), wrapper.w_spec).nbytes
            n_q += p.numel()
        else:
            f_bytes += p.numel() * float_bits // 8
            n_f += p.numel()
    return SizeReport(quantized_bytes=q_bytes, float_bytes=f_bytes, n_quantized=n_q, n_float=n_f)

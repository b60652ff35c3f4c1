"""Storage of a (fake-)quantized model: a layer worked by hand, tied weights counted once, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.quant import QSpec, SizeReport, model_size, quantize_model


def test_one_linear_by_hand() -> None:
    net = nn.Linear(6, 2)  # 12 weights + 2 biases
    assert model_size(net) == SizeReport(quantized_bytes=0, float_bytes=2 * 14, n_quantized=0, n_float=14)
    q = quantize_model(net, w_spec=QSpec(4, granularity="channel"), a_spec=None)
    rep = model_size(q, float_bits=32)
    # 12 int4 codes in 6 bytes + one fp16 scale per output channel (2 x 2 bytes); the bias at 32 bits
    assert (rep.quantized_bytes, rep.float_bytes, rep.n_quantized, rep.n_float) == (6 + 4, 4 * 2, 12, 2)
    assert rep.total_bytes == 18 and rep.bits_per_param == pytest.approx(8 * 18 / 14)
    affine = model_size(quantize_model(net, w_spec=QSpec(8, symmetric=False), a_spec=None))
    assert affine.quantized_bytes == 12 + 2 + 2  # 8-bit codes, one fp16 scale and one fp16 zero point


def test_tied_weights_count_once_and_float_bits_scale_the_rest() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight  # one stored tensor, two modules

    tied = Tied()
    assert model_size(tied).n_float == 40
    q = quantize_model(tied, w_spec=QSpec(8), a_spec=None)
    rep = model_size(q)
    assert (rep.n_quantized, rep.n_float, rep.quantized_bytes) == (40, 0, 40 + 2)  # the shared copy, quantized
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    sizes = {bits: model_size(net, float_bits=bits).total_bytes for bits in (8, 16, 32)}
    n = sum(p.numel() for p in net.parameters())
    assert sizes == {8: n, 16: 2 * n, 32: 4 * n}
    assert model_size(nn.ReLU()).total_bytes == 0 and model_size(nn.ReLU()).bits_per_param == 0.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="float_bits must be 8, 16 or 32, got 12"):
        model_size(nn.Linear(2, 2), float_bits=12)
    with pytest.raises(ValueError, match="float_bits must be in"):
        model_size(nn.Linear(2, 2), float_bits=64)
    with pytest.raises(TypeError, match="float_bits must be an int"):
        model_size(nn.Linear(2, 2), float_bits="16")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        model_size({"weight": torch.zeros(2)})

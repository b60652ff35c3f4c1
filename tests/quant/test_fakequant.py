"""labkit.quant.fakequant and size: wrapping, calibration, quantized forward, bytes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.quant import (QSpec, QuantWrapper, calibrating, fake_quantize, model_size, quant_layers, quantize_model,
                          set_mode)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def test_wrapped_model_matches_hand_fake_quantization():
    net = small_net()
    q = quantize_model(net, w_spec=QSpec(4, granularity="channel"), a_spec=QSpec(8))
    x = torch.randn(6, 1, 5, 5)
    with calibrating(q):
        q(x)
    conv, lin = q[0], q[2]
    xq = fake_quantize(x, QSpec(8), lo=x.min().reshape(1), hi=x.max().reshape(1))
    h = nn.functional.conv2d(xq, fake_quantize(net[0].weight, QSpec(4, granularity="channel")), net[0].bias, padding=1)
    assert torch.allclose(conv(x), h, atol=1e-6)
    assert isinstance(lin, QuantWrapper) and lin.mode == "quant"


def test_original_untouched_and_float_mode_is_exact():
    net = small_net()
    q = quantize_model(net, w_spec=QSpec(8), a_spec=None, include=lambda name, m: isinstance(m, nn.Linear))
    assert list(quant_layers(q)) == ["2"] and isinstance(net[2], nn.Linear)
    x = torch.randn(2, 1, 5, 5)
    set_mode(q, "float")
    assert torch.equal(q(x), net(x))
    set_mode(q, "quant")
    assert not torch.equal(q(x), net(x))


def test_gradients_reach_float_weights_through_rounding():
    q = quantize_model(small_net(), w_spec=QSpec(4, granularity="channel"), a_spec=QSpec(8))
    x = torch.randn(4, 1, 5, 5)
    with calibrating(q):
        q(x)
    q(x).pow(2).sum().backward()
    assert q[2].inner.weight.grad.abs().sum() > 0


def test_size_counts_quantized_weights_packed():
    net = small_net()
    q = quantize_model(net, w_spec=QSpec(4, granularity="channel"), a_spec=None)
    rep, ref = model_size(q), model_size(net, float_bits=32)
    assert ref.total_bytes == 4 * sum(p.numel() for p in net.parameters())
    assert rep.quantized_bytes == (36 // 2 + 2 * 4) + (300 // 2 + 2 * 3)
    assert rep.float_bytes == 2 * (4 + 3)


def test_bad_arguments():
    net = small_net()
    with pytest.raises(ValueError, match="nothing to quantize"):
        quantize_model(net, w_spec=None, a_spec=None)
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(net, w_spec=QSpec(), a_spec=None, include=lambda name, m: False)
    with pytest.raises(TypeError, match="wraps"):
        QuantWrapper(nn.ReLU(), w_spec=QSpec(), a_spec=None)
    with pytest.raises(ValueError, match="mode"):
        set_mode(quantize_model(net, w_spec=QSpec(), a_spec=None), "int")
    with pytest.raises(ValueError, match="no QuantWrapper"):
        set_mode(net, "quant")
    with pytest.raises(ValueError, match="float_bits"):
        model_size(net, float_bits=12)
    q = quantize_model(net, w_spec=None, a_spec=QSpec(8))
    set_mode(q, "quant")
    with pytest.raises(RuntimeError, match="not calibrated"):
        q(torch.randn(1, 1, 5, 5))


def test_cached_weight_follows_in_place_updates():
    q = quantize_model(small_net(), w_spec=QSpec(4, granularity="channel"), a_spec=None)
    set_mode(q, "quant")
    layer, x = q[2], torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        first = q(x)
        assert torch.equal(q(x), first) and layer.quantized_weight() is layer.quantized_weight()
        layer.inner.weight.mul_(2.0)  # bumps the version counter: the cache must not serve the old weight
        assert torch.allclose(layer.quantized_weight(), fake_quantize(layer.inner.weight, layer.w_spec))
        assert not torch.allclose(q(x), first)


def test_non_finite_inputs_and_weights_are_named_errors():
    x = torch.randn(3, 1, 5, 5)
    q = quantize_model(small_net(), w_spec=QSpec(4, granularity="channel"), a_spec=QSpec(8))
    bad = x.clone()
    bad[0, 0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^MinMaxObserver.update: x has 1 non-finite value of 75 \(1 NaN"):
        with calibrating(q):
            q(bad)
    with calibrating(q):
        q(x)
    with pytest.raises(ValueError, match=r"^QuantWrapper\(Conv2d\): input has 1 non-finite value of 75 \(1 NaN"):
        q(bad)
    with torch.no_grad():
        q[2].inner.weight[1, :2] = float("inf")
    msg = r"^QuantWrapper\(Linear\): weight has 2 non-finite values of 300 \(0 NaN, 2 infinite"
    for grad in (False, True):  # the cached path and the autograd path
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=msg):
            q(x)

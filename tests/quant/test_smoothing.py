"""labkit.quant.smoothing: channel ranges, SmoothQuant factors, the exact identity, input capture."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from labkit.quant.smoothing import (capture_inputs, channel_absmax, channels_last, scale_input_channels,
                                    smoothing_factors, weight_absmax)
from labkit.testing import assert_close


def test_ranges_by_hand():
    x = torch.tensor([[[1.0, -4.0], [-2.0, 0.5]]])  # (B=1, T=2, C=2)
    assert channel_absmax(x).tolist() == [2.0, 4.0]
    fmap = torch.zeros(1, 2, 2, 2)
    fmap[0, 0, 1, 1], fmap[0, 1, 0, 0] = -3.0, 0.25
    assert channel_absmax(fmap, conv=True).tolist() == [3.0, 0.25]
    w = torch.tensor([[1.0, 0.25], [-0.5, -2.0]])  # (O, C)
    assert weight_absmax(w).tolist() == [1.0, 2.0]
    assert weight_absmax(torch.arange(16.0).reshape(2, 2, 2, 2)).tolist() == [11.0, 15.0]


def test_factors_by_hand():
    w = torch.tensor([[1.0, 0.25], [-0.5, 1.0]])  # max|W_j| = [1, 1]
    lam = smoothing_factors(torch.tensor([4.0, 1.0]), w, alpha=0.5)
    assert_close(lam, torch.tensor([2.0, 1.0]))  # sqrt(4) / sqrt(1), sqrt(1) / sqrt(1)
    assert_close(smoothing_factors(torch.tensor([4.0, 1.0]), w, alpha=1.0), torch.tensor([4.0, 1.0]))
    # a channel that never fired keeps factor 1
    assert smoothing_factors(torch.tensor([0.0, 9.0]), w)[0].item() == 1.0


def test_alpha_half_balances_the_two_ranges():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g) * torch.tensor([1, 1, 30, 1, 1, 1, 0.1, 1.0])
    w = torch.randn(5, 8, generator=g)
    lam = smoothing_factors(channel_absmax(x), w, alpha=0.5)
    w_hat = scale_input_channels(w, lam)
    torch.testing.assert_close(channel_absmax(x / lam), weight_absmax(w_hat), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv", [False, True])
def test_smoothing_keeps_the_product_exact(conv):
    g = torch.Generator().manual_seed(1)
    if conv:
        x, w = torch.randn(2, 6, 5, 5, generator=g), torch.randn(4, 6, 3, 3, generator=g)
        lam = smoothing_factors(channel_absmax(x, conv=True), w, alpha=0.7)
        out = F.conv2d(x / lam.reshape(-1, 1, 1), scale_input_channels(w, lam), padding=1)
        torch.testing.assert_close(out, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-5)
    else:
        x, w = torch.randn(7, 6, generator=g), torch.randn(4, 6, generator=g)
        lam = smoothing_factors(channel_absmax(x), w, alpha=0.7)
        torch.testing.assert_close((x / lam) @ scale_input_channels(w, lam).T, x @ w.T, rtol=1e-4, atol=1e-5)


def test_capture_inputs_records_each_call_and_removes_its_hooks():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x1, x2 = torch.randn(5, 3), torch.randn(2, 3)
    got = capture_inputs(model, lambda m: (m(x1), m(x2)))
    assert set(got) == {"0", "2"}
    assert torch.equal(got["0"], torch.cat([x1, x2]))
    assert got["2"].shape == (7, 4) and (got["2"] >= 0).all()
    assert capture_inputs(model, lambda m: m(x1), include=lambda n, _: n == "2", max_rows=3)["2"].shape == (3, 4)
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_inputs():
    w = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(torch.ones(4), w, alpha=1.5)
    with pytest.raises(ValueError, match="x_absmax must be"):
        smoothing_factors(torch.ones(5), w)
    with pytest.raises(ValueError, match="non-negative"):
        smoothing_factors(-torch.ones(4), w)
    with pytest.raises(ValueError, match="weight must be"):
        weight_absmax(torch.zeros(3))
    with pytest.raises(ValueError, match="factors must be"):
        scale_input_channels(w, torch.ones(3))
    with pytest.raises(TypeError, match="float"):
        channel_absmax(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="Conv2d input"):
        channels_last(torch.ones(2, 3), conv=True)
    model = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="no nn.Linear"):
        capture_inputs(model, lambda m: m(torch.ones(1, 3)), include=lambda n, _: False)
    with pytest.raises(RuntimeError, match="received no input"):
        capture_inputs(model, lambda m: None)

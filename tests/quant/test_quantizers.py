"""labkit.quant.quantizers: codes, scales, granularities, sizes and the straight-through estimator."""

from __future__ import annotations

import pytest
import torch

from labkit.quant import QSpec, code_range, fake_quantize, quantize_tensor, reduce_range, round_ste, scale_zero


def test_hand_checked_symmetric_int4():
    x = torch.tensor([-1.4, 0.0, 0.2, 0.7])
    spec = QSpec(bits=4)
    # s = 1.4 / 7 = 0.2: codes -7, 0, 1, 3.5 -> 4 (round half to even)
    qt = quantize_tensor(x, spec)
    assert qt.codes.tolist() == [-7, 0, 1, 4]
    assert torch.allclose(qt.dequantize(), torch.tensor([-1.4, 0.0, 0.2, 0.8]))


def test_affine_range_contains_zero_exactly():
    x = torch.tensor([0.5, 1.0, 3.0])
    spec = QSpec(bits=8, symmetric=False)
    out = fake_quantize(x, spec)
    assert torch.allclose(out, x, atol=3.0 / 255 / 2 + 1e-6)
    assert fake_quantize(torch.zeros(1), spec, lo=torch.tensor([0.5]), hi=torch.tensor([3.0])).item() == 0.0


def test_code_ranges():
    assert code_range(8, True) == (-128, 127)
    assert code_range(4, False) == (0, 15)


@pytest.mark.parametrize("spec", [QSpec(8), QSpec(4, granularity="channel"), QSpec(3, symmetric=False),
                                  QSpec(4, granularity="group", group_size=16)])
def test_error_is_at_most_half_a_step_inside_the_range(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 64, generator=g)
    lo, hi = reduce_range(x, spec)
    scale, _ = scale_zero(lo, hi, spec)
    err = (fake_quantize(x, spec) - x).abs()
    if spec.granularity == "tensor":
        bound = scale.max()
    elif spec.granularity == "channel":
        bound = scale.reshape(-1, 1)
    else:
        bound = scale.reshape(12, -1).repeat_interleave(16, dim=1)
    assert (err <= bound / 2 + 1e-6).all()


def test_finer_granularity_tames_an_outlier():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 64, generator=g)
    w[3, 5] = 40.0
    errs = {gran: float((fake_quantize(w, spec) - w).pow(2).mean())
            for gran, spec in [("tensor", QSpec(4)), ("channel", QSpec(4, granularity="channel")),
                               ("group", QSpec(4, granularity="group", group_size=8))]}
    assert errs["group"] < errs["channel"] < errs["tensor"] / 10


def test_channel_axis_other_than_zero():
    x = torch.randn(4, 6, 5)
    out = fake_quantize(x, QSpec(8, granularity="channel", axis=1))
    assert out.shape == x.shape and (out - x).abs().max() < 0.05


def test_nbytes_counts_packed_codes_and_scales():
    x = torch.randn(8, 32)
    assert quantize_tensor(x, QSpec(4, granularity="group", group_size=16)).nbytes == 8 * 32 // 2 + 2 * 16
    assert quantize_tensor(x, QSpec(8, symmetric=False)).nbytes == 256 + 4
    assert quantize_tensor(torch.randn(3), QSpec(3)).nbytes == 2 + 2  # 9 bits round up to 2 bytes


def test_round_ste_passes_gradients_straight_through():
    x = torch.tensor([0.3, 1.6], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]
    w = torch.randn(4, 8, requires_grad=True)
    fake_quantize(w, QSpec(4)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        QSpec(bits=9)
    with pytest.raises(ValueError, match="bits"):
        QSpec(bits=1)
    with pytest.raises(ValueError, match="granularity"):
        QSpec(granularity="row")
    with pytest.raises(ValueError, match="group_size"):
        QSpec(granularity="group")
    with pytest.raises(ValueError, match="only used"):
        QSpec(group_size=4)
    with pytest.raises(ValueError, match="does not divide"):
        fake_quantize(torch.randn(3, 10), QSpec(4, granularity="group", group_size=4))
    with pytest.raises(TypeError, match="float"):
        fake_quantize(torch.arange(4), QSpec())
    with pytest.raises(ValueError, match="both lo and hi"):
        fake_quantize(torch.randn(4), QSpec(), lo=torch.zeros(1))
    with pytest.raises(ValueError, match="lo must be <= hi"):
        scale_zero(torch.ones(1), torch.zeros(1), QSpec())
    with pytest.raises(ValueError, match="scales"):
        fake_quantize(torch.randn(4, 4), QSpec(granularity="channel"), lo=-torch.ones(2), hi=torch.ones(2))

"""labkit.quant.quantizers: codes, scales, granularities, sizes and the straight-through estimator."""

from __future__ import annotations

import re

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


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("spec", [QSpec(8), QSpec(4, granularity="channel"),
                                  QSpec(4, granularity="group", group_size=2)])
def test_a_non_finite_value_is_an_error_not_a_nan_slice(spec):
    x = torch.tensor([[0.5, NAN, -1.0, 2.0], [1.0, 1.5, INF, -INF]])
    with pytest.raises(ValueError, match=r"^fake_quantize: x has 3 non-finite values of 8 \(1 NaN, 2 infinite\)"):
        fake_quantize(x, spec)
    with pytest.raises(ValueError, match=r"^quantize_tensor: x has 3 non-finite values of 8"):
        quantize_tensor(x, spec)
    with pytest.raises(ValueError, match=r"fake_quantize: x has 1 non-finite value of 4 \(1 NaN"):
        fake_quantize(torch.tensor([1.0, 2.0, NAN, 3.0]), QSpec(8), lo=torch.tensor([-4.0]), hi=torch.tensor([4.0]))


def test_non_finite_calibrated_ranges_are_an_error():
    x = torch.randn(4)
    with pytest.raises(ValueError, match=r"^scale_zero: lo has 1 non-finite value of 1 \(1 NaN"):
        fake_quantize(x, QSpec(8), lo=torch.tensor([NAN]), hi=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"^scale_zero: hi has 1 non-finite value of 2 \(0 NaN, 1 infinite\)"):
        scale_zero(torch.zeros(2), torch.tensor([1.0, INF]), QSpec(8))


@pytest.mark.parametrize("axis", [2, 5, -3])
def test_channel_axis_out_of_range_is_an_error(axis):
    x = torch.randn(3, 4)
    spec = QSpec(8, granularity="channel", axis=axis)
    msg = rf"axis={axis} is out of range for a 2-D tensor of shape \(3, 4\) \(valid axes: -2 to 1\)"
    for call in (lambda: fake_quantize(x, spec), lambda: quantize_tensor(x, spec), lambda: reduce_range(x, spec)):
        with pytest.raises(ValueError, match=msg):
            call()


def test_negative_channel_axis_counts_from_the_end():
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1))
    for neg, pos in [(-1, 2), (-2, 1), (-3, 0)]:
        a = quantize_tensor(x, QSpec(4, granularity="channel", axis=neg))
        b = quantize_tensor(x, QSpec(4, granularity="channel", axis=pos))
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
        assert torch.equal(fake_quantize(x, QSpec(4, granularity="channel", axis=neg)),
                           fake_quantize(x, QSpec(4, granularity="channel", axis=pos)))


def test_channel_granularity_needs_a_dimension_and_an_int_axis():
    with pytest.raises(ValueError, match="at least one dimension, got a 0-d tensor"):
        fake_quantize(torch.tensor(1.5), QSpec(8, granularity="channel"))
    with pytest.raises(TypeError, match="axis must be an int, got str"):
        QSpec(8, granularity="channel", axis="1")


@pytest.mark.parametrize("shape, spec", [((0,), QSpec(8)), ((3, 0), QSpec(4, granularity="channel")),
                                         ((0, 4), QSpec(4, granularity="channel")),
                                         ((0, 4), QSpec(4, granularity="group", group_size=2)),
                                         ((2, 0, 3), QSpec(8, symmetric=False))])
def test_an_empty_tensor_fake_quantizes_to_an_empty_tensor(shape, spec):
    x = torch.empty(shape, dtype=torch.float16)
    out = fake_quantize(x, spec)
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("shape, spec", [((0,), QSpec(8)), ((3, 0), QSpec(4, granularity="channel"))])
def test_an_empty_slice_has_no_range(shape, spec):
    x = torch.empty(shape)
    for call in (quantize_tensor, reduce_range):
        msg = rf"{call.__name__}: x is empty \(shape {re.escape(str(shape))}\).*no range"
        with pytest.raises(ValueError, match=msg):
            call(x, spec)


def test_an_empty_tensor_with_no_slices_quantizes_to_nothing():
    qt = quantize_tensor(torch.empty(0, 4), QSpec(4, granularity="channel"))
    assert qt.codes.shape == (0, 4) and qt.scale.numel() == 0 and qt.dequantize().shape == (0, 4)

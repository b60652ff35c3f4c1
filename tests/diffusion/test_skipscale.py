"""Tests of labkit.diffusion.skipscale and the skip_scale option of the tiny UNet."""

import math

import pytest
import torch

from labkit.diffusion import DiffusionTrainConfig, TinyUNet, UNetConfig
from labkit.diffusion.skipscale import (check_skip_scale, decoder_feature_norm, oscillation, relative_range,
                                        sensitivity, skip_scales, steps_to_loss, trace_training)
from labkit.diffusion.unet import Features

SMALL = dict(base_channels=8, channel_mults=(1, 2, 2), time_dim=16, groups=4)


def _inputs(cfg, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 1, cfg.image_size, cfg.image_size), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, t, y


def _perturb(model, seed=1):
    """Non-zero weights everywhere (the zero-initialised convolutions hide the skips)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def test_skip_scales_hand_example():
    assert skip_scales(4, None) == (1.0, 1.0, 1.0, 1.0)
    assert skip_scales(3, "sqrt2") == pytest.approx((2 ** -0.5,) * 3)
    # CS: the outermost skip keeps 1, each deeper one a further factor kappa
    assert skip_scales(4, 0.5) == pytest.approx((1.0, 0.5, 0.25, 0.125))
    assert skip_scales(0, 0.5) == ()


def test_skip_scales_are_decreasing_for_kappa_below_one():
    scales = skip_scales(6, 0.7)
    assert all(a > b for a, b in zip(scales, scales[1:]))
    assert skip_scales(6, 1.0) == (1.0,) * 6


@pytest.mark.parametrize("kappa", [0, 0.0, -0.5, float("nan"), float("inf")])
def test_kappa_must_be_positive_and_finite(kappa):
    with pytest.raises(ValueError, match="skip_scale"):
        check_skip_scale(kappa)
    with pytest.raises(ValueError, match="skip_scale"):
        UNetConfig(skip_scale=kappa)


@pytest.mark.parametrize("bad, error", [("half", ValueError), (True, TypeError), ([0.5], TypeError)])
def test_skip_scale_rejects_other_values(bad, error):
    with pytest.raises(error, match="skip_scale"):
        UNetConfig(skip_scale=bad)


def test_skip_scales_rejects_a_negative_count():
    with pytest.raises(ValueError, match="n_skips"):
        skip_scales(-1, 0.5)


def test_default_unet_has_no_scaling_and_an_unchanged_key():
    cfg = UNetConfig()
    assert cfg.skip_scale is None and "skip_scale" not in cfg.as_dict()
    assert UNetConfig(skip_scale=0.5).as_dict()["skip_scale"] == 0.5
    assert TinyUNet(cfg).skip_scales == (1.0,) * 4  # conv_in, down.0, downsample, down.1


def test_scaled_model_has_the_same_parameters():
    plain = TinyUNet(UNetConfig(**SMALL), init_seed=0)
    scaled = TinyUNet(UNetConfig(**SMALL, skip_scale=0.5), init_seed=0)
    assert plain.state_dict().keys() == scaled.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(v, scaled.state_dict()[k])


def test_decode_multiplies_each_skip_by_its_coefficient():
    cfg = UNetConfig(**SMALL, skip_scale=0.6)
    plain_cfg = UNetConfig(**SMALL)
    scaled, plain = TinyUNet(cfg, init_seed=0), TinyUNet(plain_cfg, init_seed=0)
    _perturb(scaled)
    plain.load_state_dict(scaled.state_dict())
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        feats = scaled.encode(x, t, y)
        coeffs = skip_scales(len(feats.skips), 0.6)
        by_hand = Features(h=feats.h, skips=[c * s for c, s in zip(coeffs, feats.skips)], emb=feats.emb,
                           **({"t": feats.t} if "t" in Features._fields else {}))
        assert torch.allclose(scaled.decode(feats), plain.decode(by_hand), atol=1e-6)
        # and the scaling does change the output
        assert not torch.allclose(scaled.decode(feats), plain.decode(feats), atol=1e-3)


def test_unscaled_default_is_bit_identical_to_kappa_one():
    cfg = UNetConfig(**SMALL)
    a, b = TinyUNet(cfg, init_seed=0), TinyUNet(UNetConfig(**SMALL, skip_scale=1.0), init_seed=0)
    _perturb(a)
    b.load_state_dict(a.state_dict())
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        assert torch.equal(a(x, t, y), b(x, t, y))


def test_sensitivity_of_a_linear_map_is_its_gain():
    class Gain(torch.nn.Module):
        def forward(self, x, t, y=None):
            return 3.0 * x

    x, t, y = _inputs(UNetConfig())
    assert sensitivity(Gain(), x, t, y) == pytest.approx(3.0, rel=1e-5)


def test_sensitivity_rejects_a_bad_delta():
    model = TinyUNet(UNetConfig(**SMALL))
    x, t, y = _inputs(UNetConfig(**SMALL))
    with pytest.raises(ValueError, match="delta_scale"):
        sensitivity(model, x, t, y, delta_scale=0.0)


def test_decoder_feature_norm_is_the_mean_rms_of_the_up_blocks():
    cfg = UNetConfig(**SMALL)
    model = TinyUNet(cfg, init_seed=0)
    _perturb(model)
    x, t, y = _inputs(cfg)
    seen = []
    for blocks in model.up:
        for block in blocks:
            block.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        model(x, t, y)
    assert len(seen) == 3 * 2  # three levels, n_res + 1 blocks each
    expect = sum(h.pow(2).mean().sqrt().item() for h in seen) / len(seen)
    seen.clear()
    assert decoder_feature_norm(model, x, t, y) == pytest.approx(expect, rel=1e-6)
    # the measurement removed its own hooks: only the test's remain
    assert all(len(block._forward_hooks) == 1 for blocks in model.up for block in blocks)


def test_oscillation_and_range_hand_example():
    assert oscillation([1.0, 3.0, 1.0, 3.0]) == pytest.approx(2.0 / 2.0)
    assert oscillation([2.0, 2.0, 2.0]) == 0.0
    assert oscillation([5.0, 1.0, 2.0, 3.0], skip=1) == pytest.approx(1.0 / 2.0)
    assert relative_range([1.0, 2.0, 4.0]) == pytest.approx(3.0 / 2.0)
    # a steady drift has a large range but a small oscillation
    drift = [1.0 + k / 10 for k in range(11)]
    assert oscillation(drift) < 0.1 < relative_range(drift)


@pytest.mark.parametrize("values, skip", [([1.0], 0), ([1.0, 2.0], 1), ([0.0, 0.0], 0), ([1.0, math.nan], 0)])
def test_curves_reject_bad_input(values, skip):
    with pytest.raises(ValueError, match="values"):
        oscillation(values, skip=skip)


def test_steps_to_loss():
    history = [(10, 0.9, 0.5, 1.0), (20, 0.5, 0.3, 2.0), (30, 0.4, 0.2, 3.0)]
    assert steps_to_loss(history, 0.3) == 20
    assert steps_to_loss(history, 0.1) is None
    with pytest.raises(ValueError, match="target"):
        steps_to_loss(history, 0.0)


def test_trace_training_records_pre_clip_norms_and_probes():
    cfg = UNetConfig(**SMALL, skip_scale="sqrt2")
    g = torch.Generator().manual_seed(0)
    images = torch.rand((32, 1, 8, 8), generator=g) * 2 - 1
    labels = torch.randint(0, 10, (32,), generator=g)
    recipe = DiffusionTrainConfig(steps=6, batch_size=8, lr=1e-3, warmup=2, eval_every=3)
    res, trace = trace_training(cfg, images, labels, recipe, probe_every=2, probe_batch=4, seed=0)
    assert len(trace.grad_norms) == 6 and all(n > 0 for n in trace.grad_norms)
    assert trace.probe_steps == [1, 2, 4, 6]
    assert len(trace.feature_norms) == 4
    # the norms are taken before clipping: the first step's gradient exceeds the clip of 1
    assert max(trace.grad_norms) > 1.0
    # observing does not change training
    from labkit.diffusion import train_ddpm
    plain = train_ddpm(cfg, images, labels, recipe, seed=0, progress=False)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k])


def test_train_ddpm_rejects_a_non_callable_observer():
    from labkit.diffusion import train_ddpm

    images = torch.zeros((4, 1, 8, 8))
    with pytest.raises(TypeError, match="on_step"):
        train_ddpm(UNetConfig(**SMALL), images, torch.zeros(4, dtype=torch.long),
                   DiffusionTrainConfig(steps=1, batch_size=2), on_step=3, progress=False)

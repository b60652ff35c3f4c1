"""Profiling the sampler: block list, per-block times, op kinds, feature drift, and the time split."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import TinyUNet, UNetConfig, sample
from labkit.diffusion.profiling import (feature_change, op_breakdown, op_kind, part_params, profile_blocks, time_split,
                                        unet_blocks)

from tests.diffusion._models import SCHEDULE, random_unet


randomised = random_unet


def test_blocks_of_the_default_unet_in_execution_order():
    names = [name for name, _, _ in unet_blocks(TinyUNet(UNetConfig(), init_seed=0))]
    assert names == ["time_mlp", "class_emb", "conv_in", "down.0.0", "downsample.0", "down.1.0", "mid.0", "mid.1",
                     "up.1.0", "up.1.1", "upsample.0", "up.0.0", "up.0.1", "head"]
    parts = [part for _, part, _ in unet_blocks(TinyUNet(UNetConfig(), init_seed=0))]
    assert parts == ["embed"] * 2 + ["encoder"] * 4 + ["decoder"] * 8
    model = TinyUNet(UNetConfig(), init_seed=0)
    counts = part_params(model)
    assert sum(counts.values()) == model.n_params()
    conv_in = 1 * 24 * 9 + 24  # 3x3 from 1 to 24 channels, plus bias
    assert counts["encoder"] == conv_in + sum(q.numel() for m in (model.down, model.downsample) for q in m.parameters())
    uncond = TinyUNet(UNetConfig(n_classes=None), init_seed=0)
    assert "class_emb" not in [name for name, _, _ in unet_blocks(uncond)]
    with pytest.raises(TypeError):
        unet_blocks(torch.nn.Linear(2, 2))


def test_op_kinds_by_hand():
    assert op_kind("aten::mkldnn_convolution") == "convolution"
    assert op_kind("aten::native_group_norm") == "GroupNorm"
    assert op_kind("aten::silu") == "SiLU"
    assert op_kind("aten::addmm") == "linear"
    assert op_kind("aten::cat") == "data movement"
    assert op_kind("aten::_to_copy") == "data movement"
    assert op_kind("aten::add") == "elementwise"
    assert op_kind("aten::randn") == "other"
    with pytest.raises(TypeError):
        op_kind(3)


def test_block_profile_covers_every_step_and_fits_in_the_wall_time():
    model = randomised()
    prof = profile_blocks(model, SCHEDULE, n=3, steps=4, generator=torch.Generator().manual_seed(0))
    assert prof.seconds.shape == (4, len(prof.names)) and (prof.seconds > 0).all()
    assert prof.timesteps == (99, 66, 33, 0)
    assert float(prof.seconds.sum()) <= prof.wall
    total = sum(prof.part_seconds(p) for p in ("embed", "encoder", "decoder"))
    assert total == pytest.approx(float(prof.seconds.sum()))
    assert prof.per_call.shape == (len(prof.names),)
    with pytest.raises(ValueError):
        prof.part_seconds("middle")
    with pytest.raises(ValueError):
        profile_blocks(model, SCHEDULE, n=0, steps=4)
    with pytest.raises(ValueError):
        profile_blocks(model, SCHEDULE, n=2, steps=101)
    with pytest.raises(TypeError):
        profile_blocks(model, "schedule", n=2, steps=2)
    assert not model._forward_hooks and not model.conv_out._forward_hooks  # hooks removed


def test_op_breakdown_shares_sum_to_one():
    prof = op_breakdown(randomised(), SCHEDULE, n=2, steps=2)
    assert "convolution" in prof.kinds and sum(prof.share(k) for k in prof.kinds) == pytest.approx(1.0)
    assert list(prof.seconds) == sorted(prof.seconds, reverse=True)
    assert any("conv" in name for name in prof.ops)
    with pytest.raises(ValueError):
        prof.share("attention")
    with pytest.raises(TypeError):
        op_breakdown(None, SCHEDULE, n=2, steps=2)


def test_feature_change_by_hand_for_conv_in_and_x():
    model = randomised(1)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fc = feature_change(model, SCHEDULE, n=3, steps=5, x_T=x_T)
    assert fc.change.shape == (len(fc.names), 4) and (fc.change >= 0).all()
    assert "time_mlp" not in fc.names and fc.names[0] == "conv_in"
    _, traj = sample(model, SCHEDULE, n=3, steps=5, x_T=x_T, return_trajectory=True)
    with torch.no_grad():
        f = [model.conv_in(x).double() for x in traj[:-1]]
    expected = torch.tensor([float((b - a).norm() / a.norm()) for a, b in zip(f, f[1:])], dtype=torch.float64)
    torch.testing.assert_close(fc.block("conv_in"), expected)
    xs = [x.double() for x in traj[:-1]]
    torch.testing.assert_close(fc.x_change, torch.stack([(b - a).norm() / a.norm() for a, b in zip(xs, xs[1:])]))
    assert 0 < fc.part_mean("encoder") and 0 < fc.part_mean("decoder")
    with pytest.raises(ValueError):
        fc.part_mean("embed")
    with pytest.raises(ValueError):
        fc.block("nope")
    with pytest.raises(ValueError):
        feature_change(model, SCHEDULE, n=3, steps=1)


def test_time_split_and_its_share():
    split = time_split(randomised(), SCHEDULE, n=4, repeats=3)
    assert min(split.encode, split.embed, split.decode, split.update) > 0
    assert split.step == pytest.approx(split.encode + split.decode + split.update)
    assert 0 <= split.skippable_share < 1
    with pytest.raises(ValueError):
        time_split(randomised(), SCHEDULE, n=4, repeats=0)
    with pytest.raises(ValueError):
        time_split(randomised(), SCHEDULE, n=4, t=0)

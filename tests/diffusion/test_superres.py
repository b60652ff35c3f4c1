"""Structure-modulated super-resolution: the condition channels of the UNet, regions, masks,
the modulated noise, PSNR and bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import TinyUNet, UNetConfig


def test_cond_channels_widen_only_the_input_and_stay_out_of_the_default_key():
    assert "cond_channels" not in UNetConfig().as_dict()
    cfg = UNetConfig(base_channels=16, n_classes=None, cond_channels=1)
    assert cfg.as_dict()["cond_channels"] == 1
    model = TinyUNet(cfg, init_seed=0)
    plain = TinyUNet(UNetConfig(base_channels=16, n_classes=None), init_seed=0)
    assert model.conv_in.weight.shape == (16, 2, 3, 3)
    assert model.n_params() == plain.n_params() + 16 * 3 * 3
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([0, 5, 999])
    assert model(x, t).shape == (3, 1, 8, 8)  # the output keeps in_channels
    with pytest.raises(ValueError, match=r"x must be \(B, 2, 8, 8\)"):
        model(x[:, :1], t)
    with pytest.raises(ValueError, match="cond_channels"):
        UNetConfig(cond_channels=-1)


from labkit.diffusion import DiffusionTrainConfig, NoiseSchedule  # noqa: E402
from labkit.diffusion.superres import (SRResult, digit_regions, downsample, mask_coefficient,  # noqa: E402
                                       modulated_noise, psnr, structure_embedding, structure_mask,
                                       super_resolve, train_superres, upsample)

# A hand-drawn 0 (a ring of ink around a hole) and a 1 drawn in two pieces, 1 = ink.
ZERO = [[0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 0],
        [0, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 0],
        [0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0]]
BROKEN_ONE = [[0, 0, 1, 0, 0, 0],
              [0, 0, 1, 0, 0, 0],
              [0, 0, 0, 0, 0, 0],
              [0, 0, 1, 0, 0, 0],
              [0, 0, 1, 0, 0, 0],
              [0, 0, 1, 0, 0, 0]]


def drawn(*pictures: list[list[int]]) -> torch.Tensor:
    ink = torch.tensor(pictures, dtype=torch.float32)[:, None]  # (B, 1, 6, 6)
    return ink * 2 - 1  # ink +1, paper -1


def test_regions_of_a_hand_drawn_zero_and_a_broken_one():
    regions = digit_regions(drawn(ZERO, BROKEN_ONE))
    zero, one = regions[0], regions[1]
    # the 0: one ring of ink (label 1), the outer paper (2) and the hole (3)
    assert zero[1, 1] == 1 and zero[4, 4] == 1 and zero[0, 0] == 2 and zero[2, 2] == 3
    assert sorted(zero.unique().tolist()) == [1, 2, 3]
    assert (zero == 3).sum() == 4 and (zero == 1).sum() == 12 and (zero == 2).sum() == 20
    # the 1: two pieces of ink (1 above the gap, 2 below) and one piece of paper around them
    assert one[0, 2] == 1 and one[5, 2] == 2 and one[2, 2] == 3 and one[0, 0] == 3
    assert sorted(one.unique().tolist()) == [1, 2, 3]


def test_structure_embedding_by_hand():
    grid = structure_embedding(3, 4)  # w = (1, 1/100)
    assert torch.allclose(grid[0], torch.ones(4))  # no rotation at row 0
    c, s = torch.cos(torch.tensor(2.0)), torch.sin(torch.tensor(2.0))
    assert torch.allclose(grid[2, :2], torch.stack([c - s, c + s]))
    c, s = torch.cos(torch.tensor(0.02)), torch.sin(torch.tensor(0.02))
    assert torch.allclose(grid[2, 2:], torch.stack([c - s, c + s]))
    with pytest.raises(ValueError, match="width must be even"):
        structure_embedding(3, 5)


def test_structure_mask_codes_each_region_by_its_share_of_the_grid():
    regions = digit_regions(drawn(ZERO, BROKEN_ONE))
    mask = structure_mask(regions)
    grid = structure_embedding(6, 6)
    assert mask.shape == (2, 1, 6, 6)
    hole = regions[0] == 3
    assert torch.allclose(mask[0, 0][hole], grid[hole].sum() / 36)  # by hand: the hole's code
    # invariant: the regions tile the image, so their codes sum to the grid's mean
    for b in range(2):
        codes = [mask[b, 0][regions[b] == r][0] for r in regions[b].unique()]
        assert torch.allclose(torch.stack(codes).sum(), grid.mean())
        assert all(torch.allclose(mask[b, 0][regions[b] == r], codes[i]) for i, r in enumerate(regions[b].unique()))
    unlabelled = torch.zeros(1, 6, 6, dtype=torch.long)
    assert torch.equal(structure_mask(unlabelled), torch.zeros(1, 1, 6, 6))
    with pytest.raises(TypeError, match="regions"):
        structure_mask(regions.float())
    with pytest.raises(ValueError, match="labels >= 0"):
        structure_mask(-regions)


def test_modulated_noise_shifts_the_mean_by_the_coefficient_times_the_map():
    sched = NoiseSchedule(100, "cosine")
    coef = mask_coefficient(sched)
    t_hand = 50
    abar, beta = sched.alphas_cumprod[t_hand], sched.betas[t_hand]
    assert torch.isclose(coef[t_hand], (1 - abar).sqrt() * beta)
    assert coef[-1] > 0.9 and coef[0] < 1e-3  # near one at the last step, tiny at the first
    mask = structure_mask(digit_regions(drawn(ZERO)))
    noise = torch.randn(4000, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    t = torch.full((4000,), 99)
    shifted = modulated_noise(noise, mask.expand(4000, -1, -1, -1), t, sched)
    assert torch.allclose(shifted - noise, coef[99] * mask.expand(4000, -1, -1, -1), atol=1e-6)
    assert torch.equal(modulated_noise(noise, mask.expand(4000, -1, -1, -1), t, sched, strength=0.0), noise)
    with pytest.raises(ValueError, match="mask must match the image"):
        modulated_noise(noise, mask[:, :, :4], t, sched)
    with pytest.raises(ValueError, match="mask must match the image"):
        modulated_noise(noise[:2], mask, t[:2], sched)
    with pytest.raises(ValueError, match="strength"):
        modulated_noise(noise, mask.expand(4000, -1, -1, -1), t, sched, strength=-1.0)


def test_psnr_by_hand_and_bad_input():
    ref = torch.zeros(1, 1, 2, 2)
    ref[0, 0, 0, 0] = 1.0  # MSE = 1/4, range 2: 10 log10(4 / (1/4)) = 10 log10(16)
    assert torch.isclose(psnr(torch.zeros(1, 1, 2, 2), ref), torch.tensor(12.0412, dtype=torch.float64), atol=1e-4)
    assert torch.isinf(psnr(ref, ref)).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(ref, torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError, match="data_range"):
        psnr(ref, ref, data_range=0.0)


def test_downsample_averages_blocks_and_rejects_a_factor_that_does_not_divide():
    hr = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(downsample(hr, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    flat = torch.full((2, 1, 4, 4), 0.3)
    assert torch.allclose(upsample(downsample(flat, 2), 2), flat)  # constants survive
    with pytest.raises(ValueError, match="factor must divide the image size"):
        downsample(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(TypeError, match="hr"):
        downsample(torch.zeros(1, 1, 8, 8, dtype=torch.long), 2)


def test_training_is_seeded_and_the_modulation_alone_changes_it():
    g = torch.Generator().manual_seed(0)
    hr = (torch.rand(32, 1, 8, 8, generator=g) > 0.6).float() * 2 - 1
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, time_dim=16, n_classes=None,
                     cond_channels=1)
    rec = DiffusionTrainConfig(steps=3, batch_size=8, warmup=1, eval_every=3)
    kw = dict(schedule=NoiseSchedule(20, "cosine"), progress=False)
    a = train_superres(cfg, hr, rec, seed=1, **kw)
    b = train_superres(cfg, hr, rec, seed=1, **kw)
    c = train_superres(cfg, hr, rec, seed=1, structure=True, **kw)
    assert a.history[-1][1] == b.history[-1][1]
    assert a.history[-1][1] != c.history[-1][1]
    out = super_resolve(a, downsample(hr[:5], 2), steps=4, seed=0)
    assert out.shape == (5, 1, 8, 8) and out.abs().max() <= 1.0
    assert torch.equal(out, super_resolve(a, downsample(hr[:5], 2), steps=4, seed=0))
    with pytest.raises(ValueError, match="cond_channels"):
        train_superres(UNetConfig(n_classes=None), hr, rec, **kw)
    with pytest.raises(ValueError, match="upsampled"):
        super_resolve(a, hr[:2], steps=4)
    with pytest.raises(TypeError, match="SRResult"):
        super_resolve(object(), hr[:2])  # type: ignore[arg-type]
    assert isinstance(a, SRResult)

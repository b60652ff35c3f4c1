"""The tiny UNet: shapes, the encoder/decoder split, prunable blocks, initialisation and bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import Features, TinyUNet, UNetConfig

from tests.diffusion._models import SMALL, randomise


# every parameter redrawn: the zero-initialised output layers would hide differences
randomised = randomise


def inputs(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.arange(n) % 10


def test_default_model_has_about_300k_parameters_and_shapes():
    model = TinyUNet(UNetConfig(), init_seed=0)
    assert 250_000 <= model.n_params() <= 400_000
    x, t, y = inputs()
    feats = model.encode(x, t, y)
    assert isinstance(feats, Features)
    assert feats.h.shape == (4, 48, 4, 4)  # the bottleneck input
    assert [tuple(s.shape[1:]) for s in feats.skips] == [(24, 8, 8), (24, 8, 8), (24, 4, 4), (48, 4, 4)]
    assert feats.emb.shape == (4, 64)
    assert model(x, t, y).shape == x.shape


def test_untrained_model_predicts_zero_noise():
    x, t, y = inputs()
    assert torch.equal(TinyUNet(SMALL, init_seed=0)(x, t, y), torch.zeros_like(x))  # DDPM's zero-initialised output


def test_encode_then_decode_equals_forward():
    model = randomised(TinyUNet(SMALL, init_seed=0))
    x, t, y = inputs()
    feats = model.encode(x, t, y)
    n_skips = len(feats.skips)
    torch.testing.assert_close(model.decode(feats), model(x, t, y), rtol=0, atol=0)
    assert len(feats.skips) == n_skips  # decode leaves the features whole, so they can be reused
    torch.testing.assert_close(model.decode(feats, model.embed(t, y)), model(x, t, y), rtol=0, atol=0)


def test_decoder_with_another_steps_embedding_differs():
    model = randomised(TinyUNet(SMALL, init_seed=0))
    x, t, y = inputs()
    feats = model.encode(x, t, y)
    other = model.decode(feats, model.embed((t + 1) % 1000, y))  # Faster Diffusion's reuse
    assert not torch.allclose(other, model.decode(feats))


def test_res_blocks_are_named_in_execution_order():
    names = [name for name, _ in TinyUNet(SMALL, init_seed=0).res_blocks()]
    assert names == ["down.0.0", "down.1.0", "mid.0", "mid.1", "up.1.0", "up.1.1", "up.0.0", "up.0.1"]
    model = TinyUNet(SMALL, init_seed=0)
    modules = dict(model.named_modules())
    assert all(modules[name] is block for name, block in model.res_blocks())


def test_skipping_a_block_makes_it_the_identity_and_changes_the_output():
    model = randomised(TinyUNet(SMALL, init_seed=0))
    x, t, y = inputs()
    before = model(x, t, y)
    blocks = dict(model.res_blocks())
    block = blocks["mid.0"]
    h, emb = torch.randn(2, 16, 4, 4), torch.randn(2, 16)
    block.skip = True
    assert block(h, emb) is h
    assert not torch.allclose(model(x, t, y), before)
    block.skip = False
    torch.testing.assert_close(model(x, t, y), before, rtol=0, atol=0)
    assert [n for n, b in model.res_blocks() if b.can_skip] == ["down.0.0", "mid.0", "mid.1"]


def test_skipping_a_block_that_changes_width_raises():
    blocks = dict(TinyUNet(SMALL, init_seed=0).res_blocks())
    with pytest.raises(ValueError, match="8 -> 16"):
        blocks["down.1.0"].skip = True
    with pytest.raises(ValueError, match="width"):
        blocks["up.0.0"].skip = True  # its input carries a long skip too
    with pytest.raises(TypeError, match="bool"):
        blocks["mid.0"].skip = 1


def test_initialisation_is_seeded_by_name():
    a, b = TinyUNet(SMALL, init_seed=3), TinyUNet(SMALL, init_seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = TinyUNet(UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None), init_seed=3)
    shared = dict(c.named_parameters())
    assert all(torch.equal(p, shared[n]) for n, p in a.named_parameters() if n in shared)
    assert not torch.equal(TinyUNet(SMALL, init_seed=4).conv_in.weight, a.conv_in.weight)


def test_unconditional_model_and_larger_images():
    model = randomised(TinyUNet(UNetConfig(image_size=16, base_channels=8, groups=4, time_dim=16,
                                           channel_mults=(1, 2, 2), n_classes=None), init_seed=0))
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([1, 2])
    assert model(x, t).shape == x.shape
    assert model.encode(x, t).h.shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="unconditional"):
        model(x, t, torch.tensor([0, 1]))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="image_size must be divisible by 2"):
        UNetConfig(image_size=6, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(base_channels=12, groups=8)
    with pytest.raises(ValueError, match="channel_mults"):
        UNetConfig(channel_mults=())
    with pytest.raises(ValueError, match="n_classes"):
        UNetConfig(n_classes=0)
    with pytest.raises(TypeError, match="UNetConfig"):
        TinyUNet(dict(base_channels=8))


def test_bad_inputs_raise():
    model = TinyUNet(SMALL, init_seed=0)
    x, t, y = inputs()
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        model(x, t, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"labels in \[0, 10\)"):
        model(x, t, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="pass y"):
        model(x, t)
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :, :6, :6], t, y)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:2], y)


def test_opt_in_fields_are_left_out_of_the_cache_key_at_their_defaults():
    from labkit.diffusion.unet import OPT_IN_DEFAULTS

    original = ["image_size", "in_channels", "base_channels", "channel_mults", "n_res",
                "time_dim", "n_classes", "groups"]
    assert sorted(UNetConfig().as_dict()) == sorted(original)
    for name, default in OPT_IN_DEFAULTS.items():
        assert getattr(UNetConfig(), name) == default, name

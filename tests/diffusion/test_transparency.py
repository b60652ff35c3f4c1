"""Tests of labkit.diffusion.transparency: sprites, the frozen autoencoder, latent transparency."""

import pytest
import torch

from labkit.diffusion.transparency import (LatentTransparency, RGBAutoencoder, check_rgba, composite, make_sprites,
                                           train_autoencoder, train_transparency, transparency_loss,
                                           transparency_metrics)
from labkit.runtime import one_thread

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def sprites():
    return make_sprites(96, seed=3)


@pytest.fixture(scope="module")
def frozen_ae(sprites):
    with one_thread():  # module-scoped, so set up before the per-test fixture
        return train_autoencoder(sprites, steps=80, batch=32, seed=0)


def test_sprites_are_seeded_rgba_with_soft_alpha(sprites):
    assert sprites.shape == (96, 4, 8, 8) and sprites.dtype == torch.float32
    assert 0.0 <= sprites.min() and sprites.max() <= 1.0
    assert torch.equal(sprites, make_sprites(96, seed=3))
    assert not torch.equal(sprites, make_sprites(96, seed=4))
    alpha = sprites[:, 3]
    assert (alpha == 0).any() and (alpha > 0.99).any()
    assert ((alpha > 0.05) & (alpha < 0.95)).float().mean() > 0.05  # edges, glows, partial opacity


def test_composite_hand_example():
    # pixel 1: alpha 0 (any colour) -> grey 0; pixel 2: opaque white -> 1;
    # pixel 3: alpha 0.5 over black -> 0.5 * (2 * 0 - 1) = -0.5
    rgba = torch.zeros(1, 4, 1, 3)
    rgba[0, :3, 0, 0] = 0.9
    rgba[0, :, 0, 1] = 1.0
    rgba[0, 3, 0, 2] = 0.5
    out = composite(rgba)
    assert out.shape == (1, 3, 1, 3)
    assert torch.allclose(out[0, :, 0], torch.tensor([[0.0, 1.0, -0.5]] * 3))


def test_sprites_without_alpha_are_rejected(sprites):
    with pytest.raises(ValueError, match="alpha"):
        composite(sprites[:, :3])
    with pytest.raises(ValueError, match="alpha"):
        train_autoencoder(sprites[:, :3], steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_rgba("sprites", sprites * 2)
    with pytest.raises(TypeError, match="sprites"):
        check_rgba("sprites", sprites.numpy())
    with pytest.raises(ValueError, match="sprites"):
        check_rgba("sprites", sprites[0])


def test_autoencoder_is_frozen_and_learns(sprites, frozen_ae):
    assert not frozen_ae.training
    assert all(not p.requires_grad for p in frozen_ae.parameters())
    rgb = composite(sprites)
    fresh = RGBAutoencoder().eval()
    with torch.no_grad():
        err_fresh = (fresh(rgb) - rgb).pow(2).mean()
        err_trained = (frozen_ae(rgb) - rgb).pow(2).mean()
    assert err_trained < 0.6 * err_fresh
    assert frozen_ae.encode(rgb).shape == (96, 4, 4, 4)


def test_offset_starts_at_zero_so_training_starts_from_the_frozen_latent(sprites, frozen_ae):
    lt = LatentTransparency()
    assert torch.equal(lt.offset(sprites), torch.zeros(96, 4, 4, 4))
    m = transparency_metrics(frozen_ae, lt, sprites)
    assert m.rgb_change == 0 and m.mean_shift == 0 and m.std_shift == 0 and m.offset_rms == 0
    # at zero offset the identity term is the frozen autoencoder's own squared error
    parts = transparency_loss(frozen_ae, lt, sprites, identity_weight=0.0)
    rgb = composite(sprites)
    with torch.no_grad():
        own = (frozen_ae(rgb) - rgb).pow(2).mean()
    assert parts["identity"].item() == pytest.approx(own.item(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(parts["recon"].item(), rel=1e-6)
    weighted = transparency_loss(frozen_ae, lt, sprites, identity_weight=2.0)
    assert weighted["loss"].item() == pytest.approx(parts["recon"].item() + 2 * own.item(), rel=1e-5)


def test_ablation_without_offset_keeps_the_latent(sprites, frozen_ae):
    run = train_transparency(frozen_ae, sprites, use_offset=False, steps=5, batch=16)
    assert torch.equal(run.model.offset(sprites), torch.zeros(96, 4, 4, 4))
    assert transparency_metrics(frozen_ae, run.model, sprites).offset_rms == 0


def test_identity_term_holds_the_frozen_decoder_in_place(sprites, frozen_ae):
    # Without the identity term the offset drifts freely; with a heavy one it moves D*(x_a) less.
    kw = dict(steps=40, batch=32, lr=1e-2, seed=1)
    before = {k: v.clone() for k, v in frozen_ae.state_dict().items()}
    free = train_transparency(frozen_ae, sprites, identity_weight=0.0, **kw)
    held = train_transparency(frozen_ae, sprites, identity_weight=100.0, **kw)
    m_free = transparency_metrics(frozen_ae, free.model, sprites)
    m_held = transparency_metrics(frozen_ae, held.model, sprites)
    assert m_free.offset_rms > 0 and m_held.offset_rms > 0
    assert m_held.rgb_change < m_free.rgb_change
    assert free.history[-1][0] == 40 and len(free.history) == 2
    after = frozen_ae.state_dict()  # the frozen autoencoder is never trained
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_bad_arguments_are_named(sprites, frozen_ae):
    with pytest.raises(ValueError, match="identity_weight"):
        train_transparency(frozen_ae, sprites, identity_weight=-1.0)
    with pytest.raises(ValueError, match="steps"):
        train_transparency(frozen_ae, sprites, steps=0)
    with pytest.raises(TypeError, match="ae"):
        train_transparency(torch.nn.Identity(), sprites)
    with pytest.raises(ValueError, match="latent_noise"):
        train_autoencoder(sprites, latent_noise=-0.1)
    with pytest.raises(ValueError, match="n"):
        make_sprites(0)
    with pytest.raises(TypeError, match="seed"):
        make_sprites(2, seed=0.5)

"""The DDIM sampling loop: shapes, seeds, shared starting noise, and exactness with a perfect model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from labkit.diffusion import TinyUNet, UNetConfig, balanced_labels, sample
from labkit.diffusion.unet import Features

from tests.diffusion._models import SCHEDULE, random_unet


class Oracle(nn.Module):
    """Knows the data is the single image ``x0``, so predicts the exact noise.

    eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), inverting DDPM eq. 4.
    """

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = nn.Parameter(x0, requires_grad=False)
        self.cfg = SimpleNamespace(in_channels=1, image_size=8, n_classes=None)

    def encode(self, x, t, y=None):
        return Features(h=x, skips=[], emb=t)

    def decode(self, feats, emb=None):
        abar = SCHEDULE.abar(feats.emb).view(-1, 1, 1, 1)
        return (feats.h - abar.sqrt() * self.x0) / (1 - abar).sqrt()


trained_looking = random_unet


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (7, 0.0), (100, 0.0), (10, 1.0)])
def test_a_perfect_noise_predictor_lands_on_the_data(steps, eta):
    x0 = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    out = sample(Oracle(x0), SCHEDULE, n=3, steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0.expand(3, 1, 8, 8), rtol=1e-4, atol=1e-4)


def test_shapes_range_and_trajectory():
    model = trained_looking()
    g = torch.Generator().manual_seed(0)
    images, traj = sample(model, SCHEDULE, n=5, steps=4, generator=g, return_trajectory=True)
    assert images.shape == (5, 1, 8, 8)
    assert images.min() >= -1 and images.max() <= 1
    assert len(traj) == 5 and all(x.shape == (5, 1, 8, 8) for x in traj)


def test_same_seed_or_same_start_gives_the_same_images():
    model = trained_looking()
    a = sample(model, SCHEDULE, n=4, steps=5, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = sample(model, SCHEDULE, n=4, steps=5, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    c, traj = sample(model, SCHEDULE, n=4, steps=5, x_T=x_T, return_trajectory=True)
    d = sample(model, SCHEDULE, n=4, steps=5, x_T=x_T.clone(), generator=torch.Generator().manual_seed(9))
    assert torch.equal(traj[0], x_T) and torch.equal(c, d)  # eta = 0: the start decides everything


def test_labels_default_to_balanced_and_matter():
    model = trained_looking()
    x_T = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert balanced_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    default = sample(model, SCHEDULE, n=10, steps=3, x_T=x_T)
    assert torch.equal(default, sample(model, SCHEDULE, n=10, steps=3, x_T=x_T, labels=torch.arange(10)))
    zeros = torch.zeros(10, dtype=torch.long)
    assert not torch.equal(default, sample(model, SCHEDULE, n=10, steps=3, x_T=x_T, labels=zeros))


def test_bad_arguments_raise():
    model = trained_looking()
    with pytest.raises(ValueError, match="n_sample"):
        sample(model, SCHEDULE, n=2, steps=0)
    with pytest.raises(ValueError, match="n_sample"):
        sample(model, SCHEDULE, n=2, steps=101)
    with pytest.raises(ValueError, match="x_T"):
        sample(model, SCHEDULE, n=2, steps=2, x_T=torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="labels"):
        sample(model, SCHEDULE, n=2, steps=2, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        sample(model, SCHEDULE, n=2, steps=2, labels=torch.tensor([0, 10]))
    uncond = TinyUNet(UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None), init_seed=0)
    with pytest.raises(ValueError, match="unconditional"):
        sample(uncond, SCHEDULE, n=2, steps=2, labels=torch.tensor([0, 1]))


def test_start_state_draws_noise_then_defaults_the_labels():
    from labkit.diffusion.sampling import start_state

    model = TinyUNet(UNetConfig())
    x, y = start_state(model, 20, x_T=None, labels=None, generator=torch.Generator().manual_seed(3),
                       device=torch.device("cpu"))
    assert torch.equal(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(y, balanced_labels(20, model.cfg.n_classes))
    with pytest.raises(ValueError, match="x_T must be"):
        start_state(model, 2, x_T=torch.zeros(3, 1, 8, 8), labels=None, generator=None, device=torch.device("cpu"))

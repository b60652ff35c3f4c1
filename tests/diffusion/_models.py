"""Small UNets for the diffusion tests: every parameter random, so no zero-initialised layer
hides a difference the test looks for."""

from __future__ import annotations

import torch

from labkit.diffusion import NoiseSchedule, TinyUNet, UNetConfig

SMALL = UNetConfig(base_channels=8, groups=4, time_dim=16)
SCHEDULE = NoiseSchedule(n_steps=100)


def randomise(model: TinyUNet, seed: int = 0, *, std: float = 0.2) -> TinyUNet:
    """``model`` in eval mode with every parameter redrawn in place from N(0, std^2) with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def random_unet(seed: int = 0, *, std: float = 0.1, cfg: UNetConfig = SMALL) -> TinyUNet:
    """A ``cfg`` UNet in eval mode whose parameters are all drawn from N(0, std^2) with ``seed``."""
    return randomise(TinyUNet(cfg, init_seed=0), seed, std=std)

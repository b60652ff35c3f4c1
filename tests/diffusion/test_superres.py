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

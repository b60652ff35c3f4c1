"""The ControlNet-style add-on: a no-op at zero init, and the parallel schedule equals the serial one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from labkit.diffusion import TinyUNet
from labkit.diffusion.controlnet import ControlAddon, controlled_noise, sample_controlled

from tests.diffusion._models import SCHEDULE, random_unet


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return random_unet(0, std=0.2)


def noise(B: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_control_addon_zero_init_is_a_no_op_and_parallel_equals_serial(model):
    x, t, y = noise(4), torch.tensor([3, 30, 60, 90]), torch.arange(4)
    hint = noise(4, seed=9)
    with torch.no_grad():
        quiet = ControlAddon(model, seed=0)
        assert torch.equal(controlled_noise(model, quiet, x, t, y, hint), model(x, t, y))
        loud = ControlAddon(model, seed=0, zero_init=False)
        serial = controlled_noise(model, loud, x, t, y, hint)
        assert (serial - model(x, t, y)).abs().max().item() > 1e-4
        events: list = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            parallel = controlled_noise(model, loud, x, t, y, hint, executor=pool, events=events)
            images, timeline = sample_controlled(model, SCHEDULE, loud, hint=hint, x_T=x, steps=2, executor=pool)
    assert torch.equal(serial, parallel)
    assert {lane for lane, *_ in events} == {"base", "add-on"} and all(s <= e for *_, s, e in events)
    assert images.shape == x.shape and len(timeline) == 2 * 3


def test_bad_inputs(model):
    with pytest.raises(TypeError, match="TinyUNet"):
        ControlAddon(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="hint"):
        ControlAddon(model)(noise(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), noise(1))

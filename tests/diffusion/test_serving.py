"""Serving with LoRAs: merged vs on-the-fly requests, bounded asynchronous loading, the cost model."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import TinyUNet
from labkit.diffusion.lora import lora_targets, random_lora, save_lora
from labkit.diffusion.serving import AsyncLoad, LoRACost, serve_bounded_async, serve_with_loras

from tests.diffusion._models import SCHEDULE, random_unet


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return random_unet(0, std=0.2)


def noise(B: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_per_image_loras_in_one_batch_equal_one_request_each(model):
    loras = [random_lora(model, rank=2, seed=k, std=0.1, targets=lora_targets(model, suffixes=("conv1",)))
             for k in range(3)]
    x_T = noise()
    merged, tm = serve_with_loras(model, SCHEDULE, loras, mode="merge", x_T=x_T, steps=3, per_image=True)
    fly, tf = serve_with_loras(model, SCHEDULE, loras, mode="on_the_fly", x_T=x_T, steps=3, per_image=True)
    assert (merged - fly).abs().max().item() < 1e-4
    assert tm.total_s > 0 and tf.total_s >= tf.sample_s
    for b in range(3):  # image b with LoRA b alone
        alone, _ = serve_with_loras(model, SCHEDULE, [loras[b]], mode="merge", x_T=x_T[b:b + 1],
                                    labels=torch.tensor([b]), steps=3)
        assert (alone[0] - fly[b]).abs().max().item() < 1e-4


def test_async_loading_patched_from_the_start_equals_merging(model, tmp_path):
    lora = random_lora(model, rank=3, seed=7, std=0.1, scale=0.7)
    path = save_lora(lora, tmp_path / "a.pt")
    x_T = noise(2, seed=5)
    full, _ = serve_with_loras(model, SCHEDULE, [lora], mode="merge", x_T=x_T, steps=4)
    early, info = serve_bounded_async(model, SCHEDULE, [path], bound=4, patch_at=0, x_T=x_T, steps=4)
    assert isinstance(info, AsyncLoad) and info.patched_at == 0
    assert (early - full).abs().max().item() < 1e-6
    late, info = serve_bounded_async(model, SCHEDULE, [path], bound=1, x_T=x_T, steps=4)
    assert info.patched_at <= 1 and info.total_s >= info.wait_s >= 0


def test_cost_model_by_hand():
    c = LoRACost(merge_s=1.0, merged_step_s=1.0, setup_s=0.0, fly_step_s=2.0)
    assert c.merged(3) == 4.0 and c.on_the_fly(3) == 6.0 and c.crossover_steps == 1.0
    assert LoRACost(merge_s=1.0, merged_step_s=1.0, setup_s=0.0, fly_step_s=1.0).crossover_steps == float("inf")


def test_bad_inputs(model):
    lora = random_lora(model, rank=1, seed=0)
    with pytest.raises(ValueError, match="mode"):
        serve_with_loras(model, SCHEDULE, [lora], mode="fuse", x_T=noise(1), steps=2)
    with pytest.raises(ValueError, match="one LoRA per image"):
        serve_with_loras(model, SCHEDULE, [lora], mode="merge", x_T=noise(2), steps=2, per_image=True)
    with pytest.raises(ValueError, match="merge_s"):
        LoRACost(merge_s=-1.0, merged_step_s=1.0, setup_s=0.0, fly_step_s=1.0)
    with pytest.raises(ValueError, match="bound"):
        serve_bounded_async(model, SCHEDULE, [], bound=5, x_T=noise(1), steps=2)

"""Add-ons: LoRA merging vs on-the-fly branches, serving modes, loading, the cost model, the ControlNet copy."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from labkit.diffusion import TinyUNet
from labkit.diffusion.addons import (AsyncLoad, LoRA, LoRACost, load_lora, lora_branches, lora_targets, merge_loras,
                                     random_lora, save_lora, serve_bounded_async, serve_with_loras, train_lora,
                                     unmerge_loras)
from labkit.diffusion.controlnet import ControlAddon, controlled_noise, sample_controlled

from tests.diffusion._models import SCHEDULE, random_unet


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return random_unet(0, std=0.2)


def noise(B: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_merge_and_branch_by_hand():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    net = nn.Sequential(layer)
    lora = LoRA(name="hand", factors={"0": (torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[2.0], [0.0]]))},
                scale=0.5)
    x = torch.tensor([[3.0, 1.0, 1.0]])
    with lora_branches(net, [lora]):
        assert net(x).tolist() == [[3.0, 0.0]]  # 0.5 * [2, 0] * (1 * 3)
    assert net(x).tolist() == [[0.0, 0.0]]  # the hook is gone
    merged = merge_loras(net, [lora])
    assert layer.weight.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]  # W + 0.5 U D
    unmerge_loras(net, merged)
    assert layer.weight.abs().sum().item() == 0.0


def test_targets(model):
    all_layers = lora_targets(model)
    convs = lora_targets(model, suffixes=("conv1", "conv2"))
    assert "conv_in" in all_layers and "time_mlp.0" in all_layers and "down.0.0.emb_proj" in all_layers
    assert len(convs) == 2 * len(model.res_blocks()) and all(n.endswith(("conv1", "conv2")) for n in convs)


def test_merged_equals_on_the_fly_and_unmerge_restores_bitwise(model):
    loras = [random_lora(model, rank=2, seed=k, std=0.1) for k in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, y = noise(), torch.tensor([1, 50, 99]), torch.tensor([0, 1, 2])
    with torch.no_grad():
        with lora_branches(model, loras):
            fly = model(x, t, y)
        merged = merge_loras(model, loras)
        fused = model(x, t, y)
        unmerge_loras(model, merged)
        assert (fly - fused).abs().max().item() < 1e-4
        assert (fly - model(x, t, y)).abs().max().item() > 1e-3  # the LoRAs do something
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


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


def test_train_lora_starts_as_identity_and_leaves_the_base(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = noise(16, seed=3).clamp(-1, 1), torch.arange(16) % 10
    lora = train_lora(model, SCHEDULE, images, labels, rank=2, steps=3, batch_size=4, seed=0,
                      targets=lora_targets(model, suffixes=("conv2",)))
    assert lora.rank == 2 and set(lora.factors) == set(lora_targets(model, suffixes=("conv2",)))
    assert any(u.abs().sum() > 0 for _, u in lora.factors.values())  # U moved away from zero
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_save_load_roundtrip_and_async_loading(model, tmp_path):
    lora = random_lora(model, rank=3, seed=7, std=0.1, scale=0.7)
    path = save_lora(lora, tmp_path / "a.pt")
    back = load_lora(path)
    assert back.name == lora.name and back.scale == 0.7 and back.nbytes == lora.nbytes
    assert all(torch.equal(back.factors[n][1], u) for n, (_, u) in lora.factors.items())
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


def test_bad_inputs(model, tmp_path):
    with pytest.raises(ValueError, match="rank"):
        random_lora(model, rank=0, seed=0)
    with pytest.raises(ValueError, match="not Conv2d/Linear"):
        random_lora(model, rank=1, seed=0, targets=["nope"])
    with pytest.raises(TypeError, match="suffixes"):
        lora_targets(model, suffixes="conv1")
    bad = LoRA(name="bad", factors={"conv_in": (torch.zeros(2, 5), torch.zeros(8, 2))})
    with pytest.raises(ValueError, match="do not fit"):
        merge_loras(model, [bad])
    with pytest.raises(TypeError, match="LoRA objects"):
        merge_loras(model, ["lora"])
    lora = random_lora(model, rank=1, seed=0)
    with pytest.raises(ValueError, match="mode"):
        serve_with_loras(model, SCHEDULE, [lora], mode="fuse", x_T=noise(1), steps=2)
    with pytest.raises(ValueError, match="one LoRA per image"):
        serve_with_loras(model, SCHEDULE, [lora], mode="merge", x_T=noise(2), steps=2, per_image=True)
    with pytest.raises(ValueError, match="assign"):
        with lora_branches(model, [lora], assign=torch.tensor([0, 1])):
            pass
    with pytest.raises(TypeError, match="merge_loras"):
        unmerge_loras(model, {"conv_in": torch.zeros(1)})
    with pytest.raises(ValueError, match="merge_s"):
        LoRACost(merge_s=-1.0, merged_step_s=1.0, setup_s=0.0, fly_step_s=1.0)
    with pytest.raises(ValueError, match="bound"):
        serve_bounded_async(model, SCHEDULE, [], bound=5, x_T=noise(1), steps=2)
    with pytest.raises(ValueError, match="no LoRA file"):
        load_lora(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="LoRA"):
        save_lora({"factors": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="images"):
        train_lora(model, SCHEDULE, torch.zeros(8, 8), None, steps=1)
    with pytest.raises(TypeError, match="TinyUNet"):
        ControlAddon(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="hint"):
        ControlAddon(model)(noise(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), noise(1))

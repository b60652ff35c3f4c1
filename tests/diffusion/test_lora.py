"""LoRA add-ons: merging vs on-the-fly branches, targets, training, files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labkit.diffusion import TinyUNet
from labkit.diffusion.lora import (LoRA, check_loras, load_lora, lora_branches, lora_targets, merge_loras, random_lora,
                                   save_lora, train_lora, unmerge_loras)

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


def test_train_lora_starts_as_identity_and_leaves_the_base(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = noise(16, seed=3).clamp(-1, 1), torch.arange(16) % 10
    lora = train_lora(model, SCHEDULE, images, labels, rank=2, steps=3, batch_size=4, seed=0,
                      targets=lora_targets(model, suffixes=("conv2",)))
    assert lora.rank == 2 and set(lora.factors) == set(lora_targets(model, suffixes=("conv2",)))
    assert any(u.abs().sum() > 0 for _, u in lora.factors.values())  # U moved away from zero
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_save_load_roundtrip(model, tmp_path):
    lora = random_lora(model, rank=3, seed=7, std=0.1, scale=0.7)
    path = save_lora(lora, tmp_path / "a.pt")
    back = load_lora(path)
    assert back.name == lora.name and back.scale == 0.7 and back.nbytes == lora.nbytes
    assert all(torch.equal(back.factors[n][0], d) and torch.equal(back.factors[n][1], u)
               for n, (d, u) in lora.factors.items())


def test_check_loras_accepts_fitting_factors_and_names_the_bad_one(model):
    good = random_lora(model, rank=2, seed=0)
    assert check_loras(model, (good,)) == [good]
    assert check_loras(model, []) == []
    bad = LoRA(name="bad", factors={"conv_in": (torch.zeros(2, 5), torch.zeros(8, 2))})
    with pytest.raises(ValueError, match="'bad' layer conv_in"):
        check_loras(model, [good, bad])


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
    with pytest.raises(ValueError, match="assign"):
        with lora_branches(model, [lora], assign=torch.tensor([0, 1])):
            pass
    with pytest.raises(TypeError, match="merge_loras"):
        unmerge_loras(model, {"conv_in": torch.zeros(1)})
    with pytest.raises(ValueError, match="no LoRA file"):
        load_lora(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="LoRA"):
        save_lora({"factors": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="images"):
        train_lora(model, SCHEDULE, torch.zeros(8, 8), None, steps=1)

"""Training the tiny DDPM: the loss falls, a seed fixes the weights, the cache returns the same model."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import (DiffusionTrainConfig, NoiseSchedule, UNetConfig, ddpm_recipe, digits_split,
                              pretrained_ddpm, train_ddpm)

CFG = UNetConfig(base_channels=8, groups=4, time_dim=16)
RECIPE = DiffusionTrainConfig(steps=40, batch_size=32, lr=5e-3, warmup=5, eval_every=20)
SCHEDULE = NoiseSchedule(200)


@pytest.fixture(scope="module")
def data():
    x, y, _, _ = digits_split()
    return x[:256], y[:256]


def test_training_lowers_the_loss_and_is_deterministic(data):
    a = train_ddpm(CFG, *data, RECIPE, schedule=SCHEDULE, seed=3, progress=False)
    b = train_ddpm(CFG, *data, RECIPE, schedule=SCHEDULE, seed=3, progress=False)
    assert [h[0] for h in a.history] == [20, 40]
    assert a.loss < 0.6 * a.history[0][1]  # the untrained model predicts 0: a loss of ~1
    assert [h[:3] for h in a.history] == [h[:3] for h in b.history]  # the clock (h[3]) may differ
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert not a.model.training and a.schedule == SCHEDULE


def test_unconditional_training_and_ema(data):
    cfg = UNetConfig(base_channels=8, groups=4, time_dim=16, n_classes=None)
    recipe = DiffusionTrainConfig(steps=6, batch_size=16, warmup=2, eval_every=3, ema=0.5)
    res = train_ddpm(cfg, data[0], None, recipe, schedule=SCHEDULE, seed=0, progress=False)
    assert len(res.history) == 2 and res.model.class_emb is None


def test_pretrained_trains_once_then_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    recipe = DiffusionTrainConfig(steps=4, batch_size=16, warmup=1, eval_every=2)
    first = pretrained_ddpm(CFG, recipe, schedule=SCHEDULE, seed=1, progress=False)
    second = pretrained_ddpm(CFG, recipe, schedule=SCHEDULE, seed=1, progress=False)
    assert "trained and cached" in capsys.readouterr().out
    assert first.history == second.history and second.schedule == SCHEDULE
    for (k, v), w in zip(first.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_tier_recipes():
    ci, default = ddpm_recipe("ci"), ddpm_recipe("default")
    assert ci.steps * ci.batch_size < default.steps * default.batch_size
    assert ddpm_recipe("gpu") == default
    with pytest.raises(ValueError, match="tier"):
        ddpm_recipe("fast")


def test_bad_arguments_raise(data):
    with pytest.raises(ValueError, match="lr"):
        DiffusionTrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        DiffusionTrainConfig(steps=0)
    with pytest.raises(ValueError, match="ema"):
        DiffusionTrainConfig(ema=1.0)
    with pytest.raises(TypeError, match="DiffusionTrainConfig"):
        train_ddpm(CFG, *data, dict(steps=1))
    with pytest.raises(ValueError, match="labels"):
        train_ddpm(CFG, data[0], None, RECIPE)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        train_ddpm(CFG, data[0], data[1] + 1, RECIPE)
    with pytest.raises(ValueError, match="images must be"):
        train_ddpm(CFG, data[0][:, :, :4], data[1], RECIPE)
    with pytest.raises(ValueError, match="8 x 8"):
        pretrained_ddpm(UNetConfig(image_size=16))

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


def test_training_loop_logs_means_clips_and_averages():
    from labkit.diffusion.train import training_loop

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    ema = torch.nn.Linear(3, 1).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    recipe = DiffusionTrainConfig(steps=5, batch_size=8, lr=1e-2, warmup=1, eval_every=2, ema=0.5)
    seen: list[tuple[int, float]] = []

    def step_losses(step):
        loss = 100.0 * torch.mean((model(x) - y) ** 2)  # large: its gradient norm exceeds 1
        return loss, torch.tensor(float(step))

    logs = list(training_loop(model, recipe, step_losses, progress=False, ema=ema,
                              on_step=lambda s, m, g: seen.append((s, g))))
    assert [log.step for log in logs] == [2, 4, 5]
    assert [log.losses[1] for log in logs] == [0.5, 2.5, 4.0]  # means of the steps since the last log
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4] and all(g > 1.0 for _, g in seen)  # before clipping
    assert not torch.equal(ema.weight, model.weight)  # the average lags the weights
    with pytest.raises(ValueError, match="train_cfg.ema"):
        next(training_loop(model, DiffusionTrainConfig(steps=1), step_losses, progress=False, ema=ema))

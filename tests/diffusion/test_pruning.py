"""Block removal: skipping, multiply-add counts, the output-loss criterion, exact search, sampling and distillation."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import TinyUNet, UNetConfig
from labkit.diffusion.pruning import (CalibrationSet, DistillConfig, block_macs, calibration_set, choose_removal,
                                      distill_pruned, feature_gaps, forward_macs, output_losses, prunable_blocks,
                                      pruned_copy, random_removal, sample_inheriting, single_effects, skipped,
                                      stage_blocks)

from tests.diffusion._models import SCHEDULE, randomise

DEEP = UNetConfig(base_channels=8, groups=4, time_dim=16, n_res=2)


# every parameter redrawn: the zero-initialised last convolutions would make every block the identity
randomised = randomise


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    return randomised(TinyUNet(DEEP, init_seed=0))


@pytest.fixture(scope="module")
def calib() -> CalibrationSet:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(20, 1, 8, 8, generator=g) * 2 - 1
    return calibration_set(images, torch.arange(20) % 10, SCHEDULE, n=16, seed=0)


def test_prunable_blocks_are_the_width_keeping_ones(model):
    assert prunable_blocks(model) == ["down.0.0", "down.0.1", "down.1.1", "mid.0", "mid.1"]
    assert stage_blocks(model) == ["down.0.1", "down.1.1", "mid.1", "up.1.2", "up.0.2"]


def test_skipped_makes_blocks_identity_and_restores(model, calib):
    block = dict(model.res_blocks())["mid.0"]
    h = torch.randn(2, 16, 4, 4)
    emb = torch.randn(2, 16)
    with skipped(model, ["mid.0"]):
        assert torch.equal(block(h, emb), h)  # feature inheritance: the input goes on unchanged
    assert not block.skip
    with pytest.raises(RuntimeError), skipped(model, ["mid.0", "mid.1"]):
        raise RuntimeError("boom")
    assert not any(b.skip for _, b in model.res_blocks())  # restored after an exception too


def test_skipped_bad_names(model):
    with pytest.raises(ValueError, match="unknown blocks"), skipped(model, ["mid.7"]):
        pass
    with pytest.raises(ValueError, match="changes width"), skipped(model, ["down.1.0"]):
        pass
    with pytest.raises(TypeError, match="sequence of block names"), skipped(model, "mid.0"):
        pass
    assert not any(b.skip for _, b in model.res_blocks())
    with pytest.raises(TypeError, match="TinyUNet"):
        prunable_blocks(torch.nn.Linear(2, 2))


def test_block_macs_by_hand(model):
    # a 3x3 block of width c at s x s pixels: two convolutions of c*c*9 per pixel, plus the embedding projection
    costs = block_macs(model)
    assert costs["down.0.0"] == 2 * 8 * 8 * 9 * 64 + 16 * 8
    assert costs["mid.0"] == 2 * 16 * 16 * 9 * 16 + 16 * 16
    assert forward_macs(model, skip=["down.0.0", "mid.0"]) == forward_macs(model) - costs["down.0.0"] - costs["mid.0"]


def test_output_losses_zero_without_removal_and_single_effects_agree(model, calib):
    empty, single, pair = output_losses(model, calib, [[], ["mid.0"], ["down.0.0", "mid.1"]])
    assert empty == 0.0 and single > 0 and pair > 0
    effects = single_effects(model, calib)
    assert list(effects) == prunable_blocks(model)
    assert all(v > 0 for v in effects.values())
    assert effects["mid.0"] == pytest.approx(single)
    assert not any(b.skip for _, b in model.res_blocks())  # the model is left whole
    with pytest.raises(ValueError, match="unknown blocks"):
        output_losses(model, calib, [["up.0.0x"]])


def test_calibration_set_shapes_and_bad_input():
    images = torch.zeros(5, 1, 8, 8)
    c = calibration_set(images, torch.arange(5), SCHEDULE, n=7, seed=3)
    assert c.x_t.shape == (7, 1, 8, 8) and c.t.shape == (7,) and c.y.shape == (7,)
    assert int(c.t.max()) < 100
    with pytest.raises(ValueError):
        calibration_set(images, torch.arange(4), SCHEDULE, n=7)
    with pytest.raises(ValueError):
        calibration_set(images, None, SCHEDULE, n=0)
    with pytest.raises(TypeError):
        calibration_set(images, None, "linear", n=3)


def test_choose_removal_hand_checked_knapsack():
    effects = {"a": 1.0, "b": 2.0, "c": 2.5, "d": 10.0}
    costs = {"a": 1, "b": 1, "c": 2, "d": 3}
    assert choose_removal(effects, costs, target=2) == ("c",)  # one double-cost block (2.5) beats a + b (3.0)
    assert choose_removal(effects, {k: 1 for k in effects}, target=2) == ("a", "b")  # equal costs: the lowest scores
    assert choose_removal(effects, costs, target=3) == ("a", "c")  # effect 3.5 for cost 3
    with pytest.raises(ValueError, match="same blocks"):
        choose_removal(effects, {"a": 1}, target=1)
    with pytest.raises(ValueError, match="target"):
        choose_removal(effects, costs, target=100)


def test_random_removal_meets_target_exactly():
    costs = {n: 1 for n in "abcdef"}
    picked = random_removal(costs, target=3, generator=torch.Generator().manual_seed(0))
    assert len(picked) == 3 and list(picked) == sorted(picked)
    with pytest.raises(ValueError):
        random_removal(costs, target=0, generator=torch.Generator())


def test_sample_inheriting_matches_on_inactive_steps(model):
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = sample_inheriting(model, SCHEDULE, skip=(), n=4, steps=3, x_T=x_T)
    off = sample_inheriting(model, SCHEDULE, skip=["mid.0"], n=4, steps=3, x_T=x_T, active=[False] * 3)
    on = sample_inheriting(model, SCHEDULE, skip=["mid.0"], n=4, steps=3, x_T=x_T)
    assert torch.equal(full, off)
    assert not torch.equal(full, on)
    with pytest.raises(ValueError, match="active"):
        sample_inheriting(model, SCHEDULE, skip=[], n=4, steps=3, x_T=x_T, active=[True])
    with pytest.raises(ValueError, match="x_T"):
        sample_inheriting(model, SCHEDULE, skip=[], n=3, steps=3, x_T=x_T)


def test_distillation_pulls_student_towards_teacher(model, calib):
    images = calib.x_t.clamp(-1, 1)
    remove = ["down.0.1", "mid.0"]
    before = feature_gaps(model, pruned_copy(model, remove), calib)
    assert all(raw >= 0 and norm >= 0 for raw, norm in before.values())
    res = distill_pruned(model, remove, images, calib.y, schedule=SCHEDULE,
                         cfg=DistillConfig(steps=30, batch_size=16, lr=3e-3, task_weight=0.0), seed=0)
    assert len(res.history) == 30 and res.history[0][0] == 1
    assert dict(res.student.res_blocks())["mid.0"].skip and not dict(model.res_blocks())["mid.0"].skip
    with torch.no_grad():
        gap = lambda m: torch.nn.functional.mse_loss(m(calib.x_t, calib.t, calib.y), model(calib.x_t, calib.t, calib.y))
        assert gap(res.student) < gap(pruned_copy(model, remove))
    with pytest.raises(TypeError):
        distill_pruned(model, remove, images, calib.y, schedule=SCHEDULE, cfg={"steps": 3})
    with pytest.raises(ValueError):
        DistillConfig(lr=0.0)
    with pytest.raises(ValueError):
        DistillConfig(feature_weight=-1.0)

"""Attacks and the federated run on the frozen trunk: hand values, effects, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.diffusion.quality import pretrained_classifier
from labkit.diffusion.train import digits_split
from labkit.federated.attacks import (
    ATTACKS,
    alie_z,
    apply_attack,
    byzantine_heatmap,
    run_federated,
    trunk_task,
)
from labkit.federated.partition import dirichlet_partition


@pytest.fixture(scope="module")
def task():
    x, y, xt, yt = digits_split(seed=0)
    clf = pretrained_classifier(verbose=False).model
    parts = dirichlet_partition(y, 10, alpha=math.inf, seed=0)
    return trunk_task(clf, x, y, parts, xt, yt)


def test_alie_z_by_hand() -> None:
    # P = 10, f = 3: s = floor(6) - 3 = 3, z = Phi^-1(0.7) = 0.5244
    assert alie_z(10, 3) == pytest.approx(0.5244, abs=1e-4)


def test_attacks_replace_only_the_liars() -> None:
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(5, 6, generator=g)
    flipped = torch.randn(5, 6, generator=g)
    liars = torch.tensor([False, False, False, True, True])
    for attack in ATTACKS:
        out = apply_attack(attack, grads, liars, flipped=flipped, generator=g)
        assert torch.equal(out[:3], grads[:3])
        assert not torch.equal(out[3:], grads[3:])
    sign = apply_attack("sign flip", grads, liars, flipped=flipped)
    assert torch.equal(sign[3:], -10.0 * grads[3:])
    label = apply_attack("label flip", grads, liars, flipped=flipped)
    assert torch.equal(label[3:], flipped[3:])
    alie = apply_attack("alie", grads, liars, flipped=flipped)
    expect = grads[:3].mean(0) - alie_z(5, 2) * grads[:3].std(0)
    assert torch.allclose(alie[3], expect) and torch.equal(alie[3], alie[4])
    none = apply_attack("noise", grads, torch.zeros(5, dtype=torch.bool),
                        flipped=flipped)
    assert torch.equal(none, grads)
    with pytest.raises(ValueError, match="attack"):
        apply_attack("shout", grads, liars, flipped=flipped)
    with pytest.raises(TypeError, match="liars"):
        apply_attack("noise", grads, liars.long(), flipped=flipped)
    with pytest.raises(ValueError, match="liars"):
        apply_attack("noise", grads, liars[:4], flipped=flipped)


def test_task_layout(task) -> None:
    assert task.feats.shape[0] == 10 and task.feats.shape[2] == 512
    assert int(task.mask.sum()) == 1437
    assert task.n_params == 512 * 32 + 32 + 32 * 10 + 10
    rows = task.class_rows()
    assert rows.shape == (10, 33) and int(rows.max()) == task.n_params - 1
    assert task.val_labels.shape == (10, 30)
    assert torch.equal(task.val_labels[0].bincount(), torch.full((10,), 3))


def test_mean_learns_and_sign_flip_breaks_it(task) -> None:
    clean = run_federated(task, rule="mean", f=0, rounds=15, lr=0.1)
    assert clean.final > 0.85
    broken = run_federated(task, rule="mean", attack="sign flip", f=3, rounds=15,
                           lr=0.1)
    assert broken.final < 0.3
    robust = run_federated(task, rule="median", attack="sign flip", f=3, rounds=15,
                           lr=0.1)
    assert robust.final > 0.85


def test_bristle_run_learns_under_attack(task) -> None:
    run = run_federated(task, rule="Bristle", attack="sign flip", f=3, rounds=10,
                        lr=0.1, eval_every=5)
    assert run.rounds == [5, 10]
    assert run.final > 0.85


def test_bad_inputs(task) -> None:
    with pytest.raises(ValueError, match="f must be"):
        run_federated(task, rule="mean", f=10)
    with pytest.raises(ValueError, match="attack"):
        run_federated(task, rule="mean", attack="shout")
    with pytest.raises(ValueError, match="lr"):
        run_federated(task, rule="mean", lr=0.0)
    with pytest.raises(ValueError, match="Krum"):
        run_federated(task, rule="Krum", f=4, rounds=1)
    with pytest.raises(ValueError, match="rule"):
        run_federated(task, rule="best", rounds=1)


def test_heatmap_has_one_trace_per_setting() -> None:
    acc = {(s, a): {"mean": {0: 0.9, 3: 0.1}, "Flag": {0: 0.9, 3: 0.9}}
           for s in ("iid", "0.1") for a in ("sign flip", "noise")}
    fig = byzantine_heatmap(acc, rules=["mean", "Flag"], fs=[0, 3])
    assert len(fig.data) == 4 and fig.data[0].visible and not fig.data[1].visible
    assert fig.data[0].z[0][1] == pytest.approx(10.0)

"""Tests of labkit.diffusion.affinity: bins, gradient affinity, interval clustering."""

import math

import pytest
import torch

from labkit.diffusion import NoiseSchedule, TinyUNet, UNetConfig
from labkit.diffusion.affinity import (bin_gradients, bin_losses, bin_of, brute_force_clusters, continue_on_steps,
                                       gradient_affinity, interval_clusters, interval_costs, timestep_bins)
from labkit.diffusion.train import DDPMResult


def test_timestep_bins_cover_every_step_once():
    bins = timestep_bins(10, 3)
    assert bins == [(0, 3), (3, 7), (7, 10)]
    steps = [t for lo, hi in timestep_bins(1000, 7) for t in range(lo, hi)]
    assert steps == list(range(1000))


def test_bin_of_matches_bins():
    bins = timestep_bins(10, 3)
    t = torch.arange(10)
    assert bin_of(t, bins).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("n_bins", [0, 11])
def test_timestep_bins_rejects_bad_counts(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        timestep_bins(10, n_bins)


def test_gradient_affinity_hand_example():
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    a = gradient_affinity(g)
    s = 1 / math.sqrt(2)
    expect = torch.tensor([[1.0, s, 0.0], [s, 1.0, -s], [0.0, -s, 1.0]])
    assert torch.allclose(a, expect.double(), atol=1e-6)


def test_gradient_affinity_rejects_vectors():
    with pytest.raises(ValueError, match="grads"):
        gradient_affinity(torch.ones(3))


def test_interval_costs_hand_example():
    a = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    c = interval_costs(a)
    assert c[0, 0] == 0 and c[2, 2] == 0
    assert c[0, 1].item() == pytest.approx(2 * (1 - 0.5))
    assert c[1, 2].item() == pytest.approx(2 * (1 - 0.2))
    assert c[0, 2].item() == pytest.approx(3 * (1 - (0.5 + 0.0 + 0.2) / 3))
    assert math.isinf(c[1, 0].item())


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (5, 5), (7, 3), (8, 4)])
def test_dynamic_programme_equals_brute_force(n, k):
    gen = torch.Generator().manual_seed(n * 10 + k)
    g = torch.randn(n, 6, generator=gen)
    cost = interval_costs(gradient_affinity(g))
    dp, dp_cost = interval_clusters(cost, k)
    bf, bf_cost = brute_force_clusters(cost, k)
    assert dp_cost == pytest.approx(bf_cost, abs=1e-9)
    assert sum(float(cost[lo, hi]) for lo, hi in dp) == pytest.approx(dp_cost)
    assert len(dp) == k and dp[0][0] == 0 and dp[-1][1] == n - 1
    assert all(dp[i][1] + 1 == dp[i + 1][0] for i in range(k - 1))


def test_dp_separates_two_blocks():
    a = torch.full((6, 6), -0.5)
    a[:2, :2] = 1.0
    a[2:, 2:] = 1.0
    assert interval_clusters(interval_costs(a), 2)[0] == [(0, 1), (2, 5)]


@pytest.mark.parametrize("k", [0, 4])
def test_interval_clusters_rejects_k_outside_range(k):
    cost = interval_costs(torch.eye(3))
    with pytest.raises(ValueError, match="k"):
        interval_clusters(cost, k)
    with pytest.raises(ValueError, match="k"):
        brute_force_clusters(cost, k)


def test_interval_costs_rejects_non_square():
    with pytest.raises(ValueError, match="affinity"):
        interval_costs(torch.ones(2, 3))


def _tiny():
    cfg = UNetConfig(base_channels=8, channel_mults=(1,), time_dim=16, groups=4)
    schedule = NoiseSchedule(n_steps=20)
    model = TinyUNet(cfg, init_seed=0)
    images = torch.rand(12, 1, 8, 8) * 2 - 1
    labels = torch.arange(12) % 10
    return model, schedule, images, labels


def test_bin_gradients_shape_and_determinism():
    model, schedule, images, labels = _tiny()
    bins = timestep_bins(20, 4)
    g1 = bin_gradients(model, schedule, images, labels, bins, batch=5, seed=1)
    g2 = bin_gradients(model, schedule, images, labels, bins, batch=5, seed=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert g1.shape == (4, n_params)
    assert torch.equal(g1, g2)
    assert all(p.grad is None for p in model.parameters())  # no side effects


def test_continuation_on_one_cluster_leaves_base_and_lowers_its_loss():
    model, schedule, images, labels = _tiny()
    base = DDPMResult(model=model.eval(), schedule=schedule)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bins = timestep_bins(20, 2)
    trained = continue_on_steps(base, images, labels, steps=30, t_range=(10, 20), batch=12, lr=3e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    l0 = bin_losses(model, schedule, images, labels, bins[1:], per_bin=64)
    l1 = bin_losses(trained, schedule, images, labels, bins[1:], per_bin=64)
    assert l1[0] < l0[0]


def test_continuation_rejects_bad_range():
    model, schedule, images, labels = _tiny()
    base = DDPMResult(model=model, schedule=schedule)
    with pytest.raises(ValueError, match="t_range"):
        continue_on_steps(base, images, labels, steps=1, t_range=(5, 5))
    with pytest.raises(ValueError, match="lr"):
        continue_on_steps(base, images, labels, steps=1, lr=0.0)

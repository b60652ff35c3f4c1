"""LightGCN: the normalised adjacency and the propagation against dense algebra worked by hand,
BPR training on a tiny seeded graph, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.graphs.lightgcn import (
    LightGCN,
    LightGCNConfig,
    check_ids,
    bipartite_adjacency,
    lightgcn_epoch,
    lightgcn_loss,
    time_lightgcn_epoch,
    train_lightgcn,
)
from labkit.graphs.train import adam

# 2 users, 3 items: user 0 chose items 0, 1, 2; user 1 chose item 1
PAIRS = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 1]])


def dense_adjacency() -> torch.Tensor:
    """D^{-1/2} A D^{-1/2} of PAIRS by hand: nodes u0, u1, i0, i1, i2; degrees 3, 1, 1, 2, 1."""
    a = torch.zeros(5, 5)
    for u, i in PAIRS.T.tolist():
        a[u, 2 + i] = a[2 + i, u] = 1.0
    deg = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0])
    return a / torch.sqrt(deg.unsqueeze(0) * deg.unsqueeze(1))


def test_adjacency_by_hand() -> None:
    adj = bipartite_adjacency(PAIRS, 2, 3).to_dense()
    assert torch.allclose(adj, dense_adjacency())
    assert adj[0, 3].item() == pytest.approx(1 / math.sqrt(3 * 2))  # user 0 -- item 1


def test_propagation_equals_dense_computation() -> None:
    adj = bipartite_adjacency(PAIRS, 2, 3)
    model = LightGCN(2, 3, adj, dim=4, n_layers=3, generator=torch.Generator().manual_seed(0))
    e0, a = model.embedding.detach(), dense_adjacency()
    expected = (e0 + a @ e0 + a @ a @ e0 + a @ a @ a @ e0) / 4  # mean of layers 0..3
    assert torch.allclose(model.propagate().detach(), expected, atol=1e-6)
    users, items = model.user_item_embeddings()
    assert torch.allclose(model(torch.tensor([0, 1]), torch.tensor([2, 1])).detach(),
                          torch.stack([users[0] @ items[2], users[1] @ items[1]]).detach(), atol=1e-6)


def test_loss_value_by_hand() -> None:
    adj = bipartite_adjacency(PAIRS, 2, 3)
    model = LightGCN(2, 3, adj, dim=2, n_layers=1)
    with torch.no_grad():
        model.embedding.zero_()
    # all scores are 0: BPR = log 2, and the L2 term vanishes
    loss = lightgcn_loss(model, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), l2=1.0)
    assert loss.item() == pytest.approx(math.log(2))


def test_loss_decreases_and_training_is_deterministic(tiny) -> None:
    cfg = LightGCNConfig(dim=16, n_layers=2, lr=0.05, batch_size=None)

    def run() -> tuple[list[float], torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        model = LightGCN.from_config(cfg, tiny.n_users, tiny.n_items, bipartite_adjacency(tiny.train, tiny.n_users,
                                                                                         tiny.n_items), generator=gen)
        opt = adam(model.parameters(), lr=cfg.lr)
        losses = [lightgcn_epoch(model, opt, tiny.train, cfg, generator=gen) for _ in range(6)]
        return losses, model.embedding.detach().clone()

    losses, weights = run()
    assert losses[-1] < losses[0]
    losses_again, weights_again = run()
    assert losses == losses_again and torch.equal(weights, weights_again)


def test_train_lightgcn_minibatch_reports_history(tiny) -> None:
    cfg = LightGCNConfig(dim=8, n_layers=1, lr=0.01, batch_size=64)
    model, result = train_lightgcn(tiny, cfg, max_epochs=3, patience=5)
    assert [p.epoch for p in result.history] == [1, 2, 3]
    assert 0.0 <= result.test.recall <= 1.0 and result.best_epoch in (1, 2, 3)


def test_epoch_timing_counts_steps(tiny) -> None:
    n = tiny.train.shape[1]
    mini = time_lightgcn_epoch(tiny, LightGCNConfig(dim=8, batch_size=64), max_steps=2)
    assert mini.steps_per_epoch == math.ceil(n / 64) and mini.timed_steps == 2 and mini.extrapolated
    full = time_lightgcn_epoch(tiny, LightGCNConfig(dim=8, batch_size=None), max_steps=2)
    assert full.steps_per_epoch == 1 and not full.extrapolated


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_number_of_layers(bad: int) -> None:
    with pytest.raises(ValueError, match="n_layers"):
        LightGCN(2, 3, bipartite_adjacency(PAIRS, 2, 3), n_layers=bad)
    with pytest.raises(ValueError, match="n_layers"):
        LightGCNConfig(n_layers=bad)


def test_wrong_types_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="n_layers must be an int, got float"):
        LightGCNConfig(n_layers=1.5)
    with pytest.raises(TypeError, match="dim must be an int"):
        LightGCN(2, 3, bipartite_adjacency(PAIRS, 2, 3), dim=None)
    with pytest.raises(TypeError, match="n_items must be an int"):
        bipartite_adjacency(PAIRS, 2, 3.0)


def test_bad_config_values() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LightGCNConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        LightGCNConfig(lr=0.0)
    with pytest.raises(ValueError, match="l2"):
        LightGCNConfig(l2=-1.0)


def test_bad_ids_and_shapes() -> None:
    model = LightGCN(2, 3, bipartite_adjacency(PAIRS, 2, 3), dim=4)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 2\)"):
        model(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"items must lie in \[0, 3\)"):
        model(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="share the batch"):
        lightgcn_loss(model, torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1, 2]), l2=0.0)
    with pytest.raises(TypeError, match="int64"):
        check_ids("users", torch.tensor([0.0]), 2)
    with pytest.raises(ValueError, match=r"shape \(N, N\)"):
        LightGCN(2, 4, bipartite_adjacency(PAIRS, 2, 3))  # 6 nodes expected, adjacency has 5
    with pytest.raises(ValueError, match="item ids"):
        bipartite_adjacency(PAIRS, 2, 2)

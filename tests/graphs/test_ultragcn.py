"""UltraGCN: constraint weights and item-item neighbours worked by hand, the fixed point that beta
encodes, the losses, training on a tiny seeded graph, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.graphs.ultragcn import (
    UltraGCN,
    UltraGCNConfig,
    constraint_weights,
    interaction_degrees,
    item_item_constraint_loss,
    item_item_neighbours,
    main_loss,
    time_ultragcn_epoch,
    train_ultragcn,
    ultragcn_graph,
    ultragcn_loss,
    user_item_constraint_loss,
)

# 2 users, 3 items: user 0 chose items 0, 1, 2; user 1 chose item 1.
# d_u = (3, 1), d_i = (1, 2, 1); G = R^T R = [[1,1,1],[1,2,1],[1,1,1]], g = (3, 4, 3)
PAIRS = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 1]])


def dense_omega(train: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    r = torch.zeros(n_users, n_items, dtype=torch.float64)
    r[train[0], train[1]] = 1.0
    g_mat = r.T @ r
    g = g_mat.sum(1)
    omega = g_mat / (g - g_mat.diag()).clamp(min=1).unsqueeze(1) * (g.unsqueeze(1) / g.clamp(min=1).unsqueeze(0)).sqrt()
    return omega.fill_diagonal_(0.0)


def test_beta_by_hand() -> None:
    d_u, d_i = interaction_degrees(PAIRS, 2, 3)
    assert d_u.tolist() == [3.0, 1.0] and d_i.tolist() == [1.0, 2.0, 1.0]
    beta = constraint_weights(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 0]), d_u, d_i)
    # beta_{u,i} = (1/d_u) sqrt((d_u + 1) / (d_i + 1))
    expected = [math.sqrt(4 / 2) / 3, math.sqrt(4 / 3) / 3, math.sqrt(2 / 3), math.sqrt(2 / 2)]
    assert beta.tolist() == pytest.approx(expected)
    # negatives: items may carry a trailing dimension
    assert constraint_weights(torch.tensor([1]), torch.tensor([[0, 2]]), d_u, d_i).shape == (1, 2)


def test_beta_is_the_fixed_point_of_propagation_with_self_loops() -> None:
    d_u, d_i = interaction_degrees(PAIRS, 2, 3)
    e_i = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for u in (0, 1):
        items = PAIRS[1, PAIRS[0] == u]
        beta = constraint_weights(torch.full_like(items, u), items, d_u, d_i).double()
        e_u = (beta.unsqueeze(1) * e_i[items]).sum(0)  # e_u = sum_i beta_{u,i} e_i
        du, di = d_u[u].item(), d_i[items].double()
        one_layer = e_u / (du + 1) + (e_i[items] / torch.sqrt((du + 1) * (di + 1)).unsqueeze(1)).sum(0)
        assert torch.allclose(one_layer, e_u)  # one more layer leaves it unchanged


def test_item_item_neighbours_by_hand() -> None:
    nb = item_item_neighbours(PAIRS, 2, 3, k=2)
    # omega_{0,2} = 1/(3-1) sqrt(3/3) = 0.5 > omega_{0,1} = 1/(3-1) sqrt(3/4)
    assert nb.index[0].tolist() == [2, 1]
    assert nb.weight[0].tolist() == pytest.approx([0.5, 0.5 * math.sqrt(3 / 4)])
    assert nb.index[2].tolist() == [0, 1]
    # item 1: both neighbours tie at 1/(4-2) sqrt(4/3)
    assert sorted(nb.index[1].tolist()) == [0, 2]
    assert nb.weight[1].tolist() == pytest.approx([0.5 * math.sqrt(4 / 3)] * 2)


def test_items_with_few_neighbours_are_padded_with_weight_zero() -> None:
    pairs = torch.tensor([[0, 0, 1], [0, 1, 2]])  # item 2 shares no user with the others
    nb = item_item_neighbours(pairs, 2, 4, k=2)
    assert nb.index[0].tolist() == [1, 0] and nb.weight[0, 1].item() == 0.0
    assert nb.index[2].tolist() == [2, 2] and nb.weight[2].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("max_pairs", [1, 50, 1 << 22])
def test_item_item_neighbours_match_dense_topk_for_any_chunking(tiny, max_pairs: int) -> None:
    omega = dense_omega(tiny.train, tiny.n_users, tiny.n_items)
    nb = item_item_neighbours(tiny.train, tiny.n_users, tiny.n_items, k=5, max_pairs=max_pairs)
    ref = torch.topk(omega, 5, dim=1).values
    assert torch.allclose(nb.weight.double(), ref, atol=1e-6)
    assert torch.allclose(omega.gather(1, nb.index), nb.weight.double(), atol=1e-6)


def test_losses_by_hand() -> None:
    zero_pos, zero_neg = torch.zeros(3), torch.zeros(3, 4)
    log2 = math.log(2)
    assert main_loss(zero_pos, zero_neg, neg_weight=2.0).item() == pytest.approx(log2 + 2 * log2)
    # with every beta = 1 the constraint loss is the main loss
    pos, neg = torch.randn(3), torch.randn(3, 4)
    assert user_item_constraint_loss(pos, neg, torch.ones(3), torch.ones(3, 4), neg_weight=2.0).item() == \
        pytest.approx(main_loss(pos, neg, neg_weight=2.0).item())
    assert user_item_constraint_loss(pos, neg, torch.zeros(3), torch.zeros(3, 4)).item() == 0.0
    omega = torch.tensor([[0.5, 0.25]])
    assert item_item_constraint_loss(torch.zeros(1, 2), omega).item() == pytest.approx(0.75 * log2)


def test_combined_loss_parts(tiny) -> None:
    graph = ultragcn_graph(tiny.train, tiny.n_users, tiny.n_items, n_neighbours=3)
    model = UltraGCN(tiny.n_users, tiny.n_items, dim=4, init_std=0.0)
    users, pos = tiny.train[0, :5], tiny.train[1, :5]
    neg = torch.zeros(5, 2, dtype=torch.int64)
    cfg = UltraGCNConfig(neg_weight=1.0, constraint_weight=2.0, item_weight=3.0, n_neighbours=3, l2=0.0)
    loss, parts = ultragcn_loss(model, users, pos, neg, graph, cfg)
    assert loss.item() == pytest.approx((parts["L_O"] + 2 * parts["L_C"] + 3 * parts["L_I"]).item())
    assert parts["L_O"].item() == pytest.approx(2 * math.log(2))  # all scores 0
    _, without = ultragcn_loss(model, users, pos, neg, graph, UltraGCNConfig(item_weight=0.0, n_neighbours=3))
    assert "L_I" not in without


def test_training_lowers_the_loss_and_is_deterministic(tiny) -> None:
    cfg = UltraGCNConfig(dim=16, lr=0.02, batch_size=128, n_neg=4, n_neighbours=3, init_std=0.1)
    _, first = train_ultragcn(tiny, cfg, max_epochs=6, patience=10)
    assert first.losses[-1] < first.losses[0]
    model_a, again = train_ultragcn(tiny, cfg, max_epochs=6, patience=10)
    assert first.losses == again.losses
    assert [(p.epoch, p.recall, p.ndcg) for p in first.history] == [(p.epoch, p.recall, p.ndcg) for p in again.history]
    model_b, _ = train_ultragcn(tiny, cfg, max_epochs=6, patience=10)
    assert torch.equal(model_a.user_embedding, model_b.user_embedding)


def test_epoch_timing_counts_steps(tiny) -> None:
    timing = time_ultragcn_epoch(tiny, UltraGCNConfig(dim=8, batch_size=100, n_neighbours=3), max_steps=2)
    assert timing.steps_per_epoch == math.ceil(tiny.train.shape[1] / 100) and timing.timed_steps == 2
    assert timing.seconds_per_epoch == pytest.approx(timing.seconds_per_step * timing.steps_per_epoch)


@pytest.mark.parametrize("k", [0, -2, 3])
def test_bad_number_of_neighbours(k: int) -> None:
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\], got"):  # 0 < k < n_items = 3
        item_item_neighbours(PAIRS, 2, 3, k=k)


def test_wrong_types_raise_type_errors() -> None:
    with pytest.raises(TypeError, match="k must be an int, got float"):
        item_item_neighbours(PAIRS, 2, 3, k=1.0)
    with pytest.raises(TypeError, match="dim must be an int"):
        UltraGCN(2, 3, dim=2.0)
    with pytest.raises(TypeError, match="n_neg must be an int"):
        UltraGCNConfig(n_neg=True)
    with pytest.raises(TypeError, match="n_users must be an int"):
        interaction_degrees(PAIRS, "2", 3)


def test_the_loss_checks_no_ids_and_the_epoch_checks_them_once(monkeypatch) -> None:
    import labkit.graphs.ultragcn as ultragcn

    cfg = UltraGCNConfig(dim=4, batch_size=4, n_neg=2, n_neighbours=1)
    graph = ultragcn_graph(PAIRS, 2, 3, n_neighbours=1)
    model = UltraGCN(2, 3, dim=4, generator=torch.Generator().manual_seed(0))
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([2, 1]), torch.tensor([[0, 1], [0, 2]])
    expected, _ = ultragcn_loss(model, users, pos, neg, graph, cfg)

    calls = []
    monkeypatch.setattr(ultragcn, "check_ids", lambda name, ids, upper: calls.append(name) or ids)
    loss, _ = ultragcn_loss(model, users, pos, neg, graph, cfg)
    assert calls == [] and torch.equal(loss, expected)  # a range check is a host sync per call on a GPU
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ultragcn.ultragcn_epoch(model, opt, PAIRS, graph, cfg, generator=torch.Generator().manual_seed(0))
    assert calls == ["train users", "train items"]  # once per epoch, not per step
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"train items must lie in \[0, 3\)"):
        ultragcn.ultragcn_epoch(model, opt, torch.tensor([[0, 1], [1, 3]]), graph, cfg)


def test_bad_ids() -> None:
    d_u, d_i = interaction_degrees(PAIRS, 2, 3)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 2\)"):
        constraint_weights(torch.tensor([-1]), torch.tensor([0]), d_u, d_i)
    with pytest.raises(ValueError, match=r"items must lie in \[0, 3\)"):
        constraint_weights(torch.tensor([0]), torch.tensor([3]), d_u, d_i)
    with pytest.raises(ValueError, match=r"train items must lie in \[0, 2\)"):
        interaction_degrees(PAIRS, 2, 2)
    with pytest.raises(ValueError, match=r"users must lie in \[0, 2\)"):
        UltraGCN(2, 3)(torch.tensor([2]), torch.tensor([0]))


def test_mismatched_shapes() -> None:
    d_u, d_i = interaction_degrees(PAIRS, 2, 3)
    with pytest.raises(ValueError, match="must start with the users' shape"):
        constraint_weights(torch.tensor([0, 1]), torch.tensor([0]), d_u, d_i)
    with pytest.raises(ValueError, match=r"pos \(B,\) and neg \(B, n\)"):
        main_loss(torch.zeros(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="beta shapes"):
        user_item_constraint_loss(torch.zeros(3), torch.zeros(3, 4), torch.ones(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"both be \(B, K\)"):
        item_item_constraint_loss(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"train must be a \(2, E\)"):
        interaction_degrees(PAIRS[0], 2, 3)
    graph = ultragcn_graph(PAIRS, 2, 3, n_neighbours=1)
    with pytest.raises(ValueError, match=r"neg \(B, n\)"):
        ultragcn_loss(UltraGCN(2, 3), torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), graph, UltraGCNConfig())


def test_bad_config_values() -> None:
    with pytest.raises(ValueError, match="n_neg"):
        UltraGCNConfig(n_neg=0)
    with pytest.raises(ValueError, match="item_weight"):
        UltraGCNConfig(item_weight=-1.0)
    with pytest.raises(ValueError, match="lr"):
        UltraGCNConfig(lr=0.0)

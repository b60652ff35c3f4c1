"""Structure attacks and STABLE's refinement (labkit.graphs.robust)."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.csbm import contextual_sbm
from labkit.graphs.linkpred import undirected, unique_pairs
from labkit.graphs.robust import (
    contrastive_embeddings,
    degree_targeted_insertion,
    dice_attack,
    inserted_mask,
    meta_self_attack,
    random_insertion,
    refine_structure,
    robust_adjacency,
    surrogate_loss,
    train_node_gcn,
)


@pytest.fixture(scope="module")
def csbm():
    return contextual_sbm(200, 4, p_in=0.12, p_out=0.01, n_features=8, signal=2.0, seed=0)


def _pairs(ei, n):
    p = unique_pairs(ei, n)
    return set((p[0] * n + p[1]).tolist())


def test_attack_budgets_and_kinds(csbm) -> None:
    n, lab = 200, csbm.labels
    clean = _pairs(csbm.edge_index, n)
    e = len(clean)
    rnd = _pairs(random_insertion(csbm.edge_index, n, 0.2, seed=1), n)
    assert clean <= rnd and len(rnd - clean) == round(0.2 * e)
    dice = _pairs(dice_attack(csbm.edge_index, lab, 0.2, seed=1), n)
    removed, added = clean - dice, dice - clean
    assert len(removed) + len(added) == round(0.2 * e)
    assert all(lab[k // n] == lab[k % n] for k in removed)  # deletes inside classes
    assert all(lab[k // n] != lab[k % n] for k in added)  # connects across them
    tgt = degree_targeted_insertion(csbm.edge_index, lab, 0.2, seed=1)
    added = _pairs(tgt, n) - clean
    assert len(added) == round(0.2 * e) and all(lab[k // n] != lab[k % n] for k in added)


def test_degree_targeting_prefers_low_degree_nodes() -> None:
    # endpoints drawn with probability 1 / degree: the inserted edges touch low-degree nodes
    g = contextual_sbm(120, 2, p_in=0.1, p_out=0.0, seed=3)
    deg = torch.bincount(unique_pairs(g.edge_index, 120).flatten(), minlength=120).float()
    new = unique_pairs(degree_targeted_insertion(g.edge_index, g.labels, 0.5, seed=0), 120)
    added = new[:, inserted_mask(new, g.edge_index, 120)]
    touched = deg[added.flatten()].mean()
    assert touched < deg.mean()


def test_robust_adjacency_by_hand() -> None:
    # path 0 - 1 - 2: d = (A + I) 1 = 2, 3, 2
    ei = undirected(torch.tensor([[0, 1], [1, 2]]))
    plain = robust_adjacency(ei, 3).to_dense()  # alpha = -1/2: GCN's D^-1/2 (A + I) D^-1/2
    assert plain[0, 1] == pytest.approx(1 / (2 * 3) ** 0.5) and plain[1, 1] == pytest.approx(1 / 3)
    assert torch.allclose(plain, plain.T) and plain[0, 2] == 0
    # alpha = 1/2: row 0 weighs itself by sqrt(2) and node 1 by sqrt(3), then sums to one
    a = robust_adjacency(ei, 3, alpha=0.5).to_dense()
    s2, s3 = 2 ** 0.5, 3 ** 0.5
    assert a[0, 0] == pytest.approx(s2 / (s2 + s3)) and a[0, 1] == pytest.approx(s3 / (s2 + s3))
    assert a[1, 1] == pytest.approx(s3 / (2 * s2 + s3)) and a[1, 0] == pytest.approx(s2 / (2 * s2 + s3))
    assert torch.allclose(a.sum(1), torch.ones(3))


def test_robust_adjacency_weighs_high_degree_neighbours_more() -> None:
    # a star centre 0 with leaves 1..4, and leaf 1 also joined to a pendant 5
    ei = undirected(torch.tensor([[0, 0, 0, 0, 1], [1, 2, 3, 4, 5]]))
    for alpha, more in ((0.5, True), (-1.0, False)):
        a = robust_adjacency(ei, 6, alpha=alpha).to_dense()
        assert torch.allclose(a.sum(1), torch.ones(6))
        # node 1 hears the centre (d = 5) against the pendant (d = 2)
        assert bool(a[1, 0] > a[1, 5]) is more


def test_refinement_prunes_dissimilar_and_adds_nearest() -> None:
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    ei = undirected(torch.tensor([[0, 1], [2, 3]]))  # 0-2 dissimilar, 1-3 dissimilar
    r = refine_structure(z, ei, threshold=0.5, k=1)
    assert sorted(map(tuple, r.pruned.T.tolist())) == [(0, 2), (1, 3)]
    assert sorted(map(tuple, r.added.T.tolist())) == [(0, 1), (2, 3)]
    assert _pairs(r.edge_index, 4) == {0 * 4 + 1, 2 * 4 + 3}
    keep_all = refine_structure(z, ei, threshold=-1.0, k=0)
    assert keep_all.pruned.shape[1] == 0 and _pairs(keep_all.edge_index, 4) == _pairs(ei, 4)


def test_contrastive_embeddings_separate_classes_and_prune_attacks(csbm) -> None:
    n = 200
    poisoned = dice_attack(csbm.edge_index, csbm.labels, 0.3, seed=0)
    z = contrastive_embeddings(csbm.x, poisoned, epochs=40, seed=0)
    assert torch.allclose(z.norm(dim=1), torch.ones(n), atol=1e-5)
    same = csbm.labels[:, None] == csbm.labels[None, :]
    sim = z @ z.T
    assert sim[same].mean() > sim[~same].mean() + 0.1
    r = refine_structure(z, poisoned, threshold=0.2, k=0)
    pairs = unique_pairs(poisoned, n)
    assert inserted_mask(r.pruned, csbm.edge_index, n).float().mean() > \
        inserted_mask(pairs, csbm.edge_index, n).float().mean()


def test_gcn_learns_and_attack_hurts(csbm) -> None:
    n = 200
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, valid = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    train[perm[:40]], valid[perm[40:80]] = True, True
    masks = (train, valid, ~(train | valid))
    clean = train_node_gcn(csbm.x, robust_adjacency(csbm.edge_index, n), csbm.labels, masks, epochs=60)
    assert clean.test_acc > 0.8 and 1 <= clean.best_epoch <= 60
    attacked = dice_attack(csbm.edge_index, csbm.labels, 1.0, seed=0)
    hurt = train_node_gcn(csbm.x, robust_adjacency(attacked, n), csbm.labels, masks, epochs=60)
    assert hurt.test_acc < clean.test_acc


def _split(n: int, seed: int = 0) -> torch.Tensor:
    train = torch.zeros(n, dtype=torch.bool)
    train[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // 5]] = True
    return train


def test_meta_self_attack_budget_and_shape() -> None:
    g = contextual_sbm(40, 2, p_in=0.2, p_out=0.03, n_features=8, signal=1.5, seed=1)
    train = _split(40)
    clean = _pairs(g.edge_index, 40)
    for per_step in (1, 7):
        ei = meta_self_attack(g.x, g.edge_index, g.labels, train, 0.25, inner_steps=10,
                              flips_per_step=per_step, seed=0)
        dense = torch.zeros(40, 40)
        dense[ei[0], ei[1]] = 1.0
        assert torch.equal(dense, dense.T) and dense.diagonal().sum() == 0  # symmetric, no loops
        assert ei.shape[1] == 2 * len(_pairs(ei, 40))  # binary: each pair once per direction
        assert len(_pairs(ei, 40) ^ clean) == round(0.25 * len(clean))  # exactly the budget
        assert dense.sum(1).min() >= 1  # nobody left without an edge
    assert torch.equal(ei, meta_self_attack(g.x, g.edge_index, g.labels, train, 0.25, inner_steps=10,
                                            flips_per_step=7, seed=0))
    same = meta_self_attack(g.x, g.edge_index, g.labels, train, 0.0)
    assert _pairs(same, 40) == clean


def test_meta_self_attack_beats_dice_on_the_surrogate() -> None:
    g = contextual_sbm(150, 3, p_in=0.12, p_out=0.01, n_features=16, signal=1.5, seed=2)
    train = _split(150)
    meta = meta_self_attack(g.x, g.edge_index, g.labels, train, 0.2, inner_steps=30,
                            flips_per_step=10, seed=0)
    dice = dice_attack(g.edge_index, g.labels, 0.2, seed=0)
    loss = {name: surrogate_loss(g.x, ei, g.labels, train)
            for name, ei in (("clean", g.edge_index), ("dice", dice), ("meta", meta))}
    assert loss["meta"] > loss["dice"] > loss["clean"]
    # the flips the meta-gradient picks mostly join different classes
    added = unique_pairs(meta, 150)
    added = added[:, inserted_mask(added, g.edge_index, 150)]
    assert (g.labels[added[0]] != g.labels[added[1]]).float().mean() > 0.8


def test_meta_self_attack_keeps_every_node_connected() -> None:
    # a path 0-1-2-3 whose ends have one edge each: whatever is flipped, nobody is isolated
    ei = undirected(torch.tensor([[0, 1, 2], [1, 2, 3]]))
    x = torch.eye(4)
    labels, train = torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, False, True])
    out = meta_self_attack(x, ei, labels, train, 1.0, inner_steps=5)
    assert len(_pairs(out, 4) ^ _pairs(ei, 4)) == 3
    assert torch.bincount(out[0], minlength=4).min() >= 1
    # one edge between two nodes: its removal is the only flip, and it would isolate both
    with pytest.raises(RuntimeError, match="no admissible flip"):
        meta_self_attack(torch.eye(2), undirected(torch.tensor([[0], [1]])), torch.tensor([0, 1]),
                         torch.tensor([True, False]), 1.0, inner_steps=5)
    removed = meta_self_attack(torch.eye(2), undirected(torch.tensor([[0], [1]])), torch.tensor([0, 1]),
                               torch.tensor([True, False]), 1.0, inner_steps=5, no_singletons=False)
    assert removed.shape[1] == 0


def test_bad_inputs(csbm) -> None:
    train = _split(200)
    with pytest.raises(ValueError, match="ratio must be in"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train, 1.5)
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train, -0.1)
    with pytest.raises(TypeError, match="ratio must be a real number"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train, "0.2")
    with pytest.raises(ValueError, match="flips_per_step must be"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train, 0.2, flips_per_step=0)
    with pytest.raises(ValueError, match="inner_steps must be"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train, 0.2, inner_steps=0)
    with pytest.raises(ValueError, match="train must have shape"):
        meta_self_attack(csbm.x, csbm.edge_index, csbm.labels, train.long(), 0.2)
    with pytest.raises(ValueError, match="ratio must be in"):
        dice_attack(csbm.edge_index, csbm.labels, 1.5)
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        random_insertion(csbm.edge_index, 200, -0.1)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        robust_adjacency(csbm.edge_index, 200, alpha=float("nan"))
    with pytest.raises(TypeError, match="alpha must be a real number"):
        robust_adjacency(csbm.edge_index, 200, alpha="0.5")
    with pytest.raises(ValueError, match="drop must be in"):
        contrastive_embeddings(csbm.x, csbm.edge_index, drop=1.0)
    with pytest.raises(ValueError, match="k must be"):
        refine_structure(torch.eye(200), csbm.edge_index, k=-1)
    with pytest.raises(TypeError, match="sparse_csr"):
        train_node_gcn(csbm.x, torch.eye(200), csbm.labels, (csbm.labels > 0,) * 3)

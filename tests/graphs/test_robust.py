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
    random_insertion,
    refine_structure,
    robust_adjacency,
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
    # path 0 - 1 - 2 with lam = 2: degrees + lam = 3, 4, 3
    ei = undirected(torch.tensor([[0, 1], [1, 2]]))
    a = robust_adjacency(ei, 3, self_weight=2.0).to_dense()
    assert a[0, 0] == pytest.approx(2 / 3) and a[1, 1] == pytest.approx(2 / 4)
    assert a[0, 1] == pytest.approx(1 / (3 * 4) ** 0.5) and a[0, 2] == 0
    plain = robust_adjacency(ei, 3).to_dense()  # lam = 1 is GCN's D^-1/2 (A + I) D^-1/2
    assert plain[0, 1] == pytest.approx(1 / (2 * 3) ** 0.5)


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


def test_bad_inputs(csbm) -> None:
    with pytest.raises(ValueError, match="ratio must be in"):
        dice_attack(csbm.edge_index, csbm.labels, 1.5)
    with pytest.raises(ValueError, match="ratio must be >= 0"):
        random_insertion(csbm.edge_index, 200, -0.1)
    with pytest.raises(ValueError, match="self_weight must be > 0"):
        robust_adjacency(csbm.edge_index, 200, self_weight=0.0)
    with pytest.raises(ValueError, match="drop must be in"):
        contrastive_embeddings(csbm.x, csbm.edge_index, drop=1.0)
    with pytest.raises(ValueError, match="k must be"):
        refine_structure(torch.eye(200), csbm.edge_index, k=-1)
    with pytest.raises(TypeError, match="sparse_csr"):
        train_node_gcn(csbm.x, torch.eye(200), csbm.labels, (csbm.labels > 0,) * 3)

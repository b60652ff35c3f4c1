"""Leakage-free splits, negatives and OGB's ranking metrics (labkit.graphs.linkpred)."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.csbm import barabasi_albert, contextual_sbm
from labkit.graphs.linkpred import (
    hits_at_k,
    mrr,
    sample_negatives,
    split_edges,
    undirected,
    unique_pairs,
)


@pytest.fixture(scope="module")
def graph():
    return contextual_sbm(120, 6, p_in=0.5, p_out=0.02, n_features=4, seed=1)


def test_hits_at_k_hand_example() -> None:
    # negatives sorted: 0.95, 0.7, 0.3, 0.2, 0.1; the 2nd best is 0.7 -> 0.9 and 0.8 beat it
    pos = torch.tensor([0.9, 0.8, 0.4])
    neg = torch.tensor([0.1, 0.7, 0.95, 0.3, 0.2])
    assert hits_at_k(pos, neg, 2) == pytest.approx(2 / 3)
    assert hits_at_k(pos, neg, 1) == pytest.approx(0.0)  # nobody beats 0.95
    assert hits_at_k(pos, neg, 5) == pytest.approx(1.0)
    assert hits_at_k(pos, neg, 6) == 1.0  # fewer negatives than K


def test_hits_counts_a_tie_with_the_kth_negative_as_a_miss() -> None:
    assert hits_at_k(torch.tensor([0.7]), torch.tensor([0.7, 0.1]), 1) == 0.0


def test_mrr_hand_example_with_a_tie() -> None:
    # ranks: 0.9 below 0.95 -> 2; 0.8 above all -> 1; 0.4 ties 0.4, below 0.6 -> 1 + (1 + 2) / 2
    pos = torch.tensor([0.9, 0.8, 0.4])
    neg = torch.tensor([[0.95, 0.1], [0.5, 0.2], [0.4, 0.6]])
    assert mrr(pos, neg) == pytest.approx((1 / 2 + 1 + 1 / 2.5) / 3)


def test_metrics_reject_bad_arguments() -> None:
    pos, neg = torch.rand(3), torch.rand(5)
    with pytest.raises(ValueError, match="k must be"):
        hits_at_k(pos, neg, 0)
    with pytest.raises(TypeError, match="pos must be"):
        hits_at_k(torch.ones(3, dtype=torch.int64), neg, 1)
    with pytest.raises(ValueError, match="one row per positive"):
        mrr(pos, torch.rand(4, 2))
    with pytest.raises(ValueError, match="neg must be"):
        mrr(pos, neg)


def test_split_propagates_no_held_out_edge_and_orphans_no_endpoint(graph) -> None:
    split = split_edges(graph.edge_index, graph.num_nodes, valid_ratio=0.1, test_ratio=0.2,
                        n_negatives=50, seed=0)
    n = graph.num_nodes
    seen = set((split.train_edge_index[0] * n + split.train_edge_index[1]).tolist())
    for held in (split.valid, split.test):
        for i, j in held.T.tolist():
            assert i * n + j not in seen and j * n + i not in seen
    deg = torch.bincount(split.train.flatten(), minlength=n)
    assert bool((deg[torch.cat([split.valid, split.test], 1).flatten()] > 0).all())
    total = unique_pairs(graph.edge_index, n).shape[1]
    assert split.train.shape[1] + split.valid.shape[1] + split.test.shape[1] == total
    assert split.test.shape[1] == round(0.2 * total)
    edges = set((unique_pairs(graph.edge_index, n)[0] * n + unique_pairs(graph.edge_index, n)[1]).tolist())
    for negs in (split.valid_neg, split.test_neg):
        assert negs.shape == (2, 50)
        assert not any(i * n + j in edges for i, j in negs.T.tolist())
        assert bool((negs[0] < negs[1]).all())


def test_split_refuses_to_orphan_a_test_endpoint() -> None:
    path = undirected(torch.tensor([[0, 1, 2], [1, 2, 3]]))  # a path: holding out 2 edges orphans a node
    with pytest.raises(ValueError, match="without training edge|no training edge"):
        split_edges(path, 4, valid_ratio=0.0, test_ratio=0.67)


def test_split_rejects_bad_ratios_and_ids(graph) -> None:
    with pytest.raises(ValueError, match="test_ratio must be in"):
        split_edges(graph.edge_index, graph.num_nodes, test_ratio=1.5)
    with pytest.raises(ValueError, match="valid_ratio must be >= 0"):
        split_edges(graph.edge_index, graph.num_nodes, valid_ratio=-0.1)
    with pytest.raises(ValueError, match="out of range"):
        split_edges(graph.edge_index, graph.num_nodes - 10)


def test_negatives_are_distinct_non_edges() -> None:
    ei = undirected(torch.tensor([[0, 0, 1], [1, 2, 2]]))  # a triangle plus isolated nodes 3, 4
    negs = sample_negatives(ei, 5, 7, seed=0)  # all 10 pairs minus 3 edges
    keys = set((negs[0] * 5 + negs[1]).tolist())
    assert len(keys) == 7 and not keys & {1, 2, 7}
    with pytest.raises(ValueError, match="n must be at most"):
        sample_negatives(ei, 5, 8)


def test_generators_are_seeded_and_symmetric() -> None:
    for make in (lambda s: contextual_sbm(50, 5, p_in=0.4, p_out=0.05, seed=s),
                 lambda s: barabasi_albert(50, 2, seed=s)):
        a, b = make(3), make(3)
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
        keys = set((a.edge_index[0] * 50 + a.edge_index[1]).tolist())
        assert all(j * 50 + i in keys for i, j in a.edge_index.T.tolist())
    with pytest.raises(ValueError, match="n_classes"):
        contextual_sbm(10, 1, p_in=0.5, p_out=0.1)

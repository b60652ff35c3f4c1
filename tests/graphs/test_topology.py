"""Topological Concentration, its approximation and the planted generator (labkit.graphs.topology)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from scipy.stats import spearmanr

from labkit.graphs.gcn import link_graph
from labkit.graphs.linkpred import undirected
from labkit.graphs.topology import (
    approx_topological_concentration,
    concentration_graph,
    khop_reach,
    per_node_recall,
    tc_edge_weights,
    topological_concentration,
)

# a triangle 0-1-2 with a pendant 3 on node 2
TOY = undirected(torch.tensor([[0, 0, 1, 2], [1, 2, 2, 3]]))


def test_tc_by_hand() -> None:
    # S0 = {1, 2}, S1 = {0, 2}, S2 = {0, 1, 3}, S3 = {2}
    # own normalisation |S_i| - 1: TC0 = (|{2}| / 1 + |{1}| / 1) / 2 = 1
    # TC2 = (|{1}| / 2 + |{0}| / 2 + 0 / 2) / 3 = 1/3; TC3 = 0 / max(1, 0) = 0
    tc = topological_concentration(TOY, 4, k=1)
    assert tc.tolist() == pytest.approx([1.0, 1.0, 1 / 3, 0.0])
    # union: TC0 = (|{2}| / |{0,1,2}| + |{1}| / |{0,1,2,3}|) / 2 = (1/3 + 1/4) / 2
    # TC2 = (1/4 + 1/4 + 0/4) / 3: edge (2, 3) shares nothing, union {0, 1, 2, 3}
    tc = topological_concentration(TOY, 4, k=1, normalisation="union")
    assert tc.tolist() == pytest.approx([7 / 24, 7 / 24, 1 / 6, 0.0])


def test_tc_at_one_hop_is_common_neighbours_over_degree_less_one() -> None:
    # K = 1, own normalisation: TC_i = mean_j CN(i, j) / (deg(i) - 1), 0 where deg(i) = 1
    g = concentration_graph(90, 3, seed=2)
    nxg = nx.Graph(g.edge_index.T.tolist())
    nxg.add_nodes_from(range(90))
    expected = [sum(len(list(nx.common_neighbors(nxg, i, j))) / max(1, nxg.degree(i) - 1)
                    for j in nxg[i]) / max(1, nxg.degree(i)) for i in range(90)]
    got = topological_concentration(g.edge_index, 90, k=1)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(got.max()) <= 1.0 + 1e-6


def test_khop_reach_matches_shortest_paths() -> None:
    g = concentration_graph(120, 4, seed=3)
    nxg = nx.Graph(g.edge_index.T.tolist())
    nxg.add_nodes_from(range(120))
    for k in (1, 2, 3):
        reach = khop_reach(g.edge_index, 120, k).to_dense()
        ref = torch.zeros(120, 120)
        for i in range(120):
            for u in nx.single_source_shortest_path_length(nxg, i, cutoff=k):
                if u != i:
                    ref[i, u] = 1
        assert torch.equal(reach, ref)


def test_tc_matches_a_direct_set_computation() -> None:
    g = concentration_graph(80, 4, seed=1)
    nxg = nx.Graph(g.edge_index.T.tolist())
    nxg.add_nodes_from(range(80))
    sets = {i: set(nx.single_source_shortest_path_length(nxg, i, cutoff=2)) - {i} for i in range(80)}
    expected = [sum(len(sets[i] & sets[j]) / max(1, len(sets[i]) - 1) for j in nxg[i]) / max(1, len(nxg[i]))
                for i in range(80)]
    assert topological_concentration(g.edge_index, 80, k=2).tolist() == pytest.approx(expected, abs=1e-6)
    jaccard = [sum(len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for j in nxg[i]) / max(1, len(nxg[i]))
               for i in range(80)]
    union = topological_concentration(g.edge_index, 80, k=2, normalisation="union")
    assert union.tolist() == pytest.approx(jaccard, abs=1e-6)


def test_atc_ranks_nodes_like_tc_and_is_seeded() -> None:
    g = concentration_graph(400, 8, seed=0)
    tc = topological_concentration(g.edge_index, 400, k=1)
    atc = approx_topological_concentration(g.edge_index, 400, k=1, dim=256, seed=0)
    assert spearmanr(tc, atc).statistic > 0.4
    assert torch.equal(atc, approx_topological_concentration(g.edge_index, 400, k=1, dim=256, seed=0))


def test_planted_generator_strays_with_q() -> None:
    tight = concentration_graph(300, 6, max_outside=0.0, seed=0)
    loose = concentration_graph(300, 6, max_outside=1.0, seed=0)
    same = lambda g: (g.labels[g.edge_index[0]] == g.labels[g.edge_index[1]]).float().mean()  # noqa: E731
    assert same(tight) == 1.0 and same(loose) < 0.8
    assert topological_concentration(tight.edge_index, 300).mean() > topological_concentration(loose.edge_index, 300).mean()


def test_per_node_recall_by_hand() -> None:
    scores = torch.tensor([[0, 3, 2, 1], [3, 0, 1, 2], [2, 1, 0, 3], [1, 2, 3, 0]], dtype=torch.float32)
    train = torch.tensor([[0], [1]])  # (0, 1) known, so node 0 ranks 2 then 3
    test = torch.tensor([[0, 1], [3, 2]])
    nodes, recall = per_node_recall(scores, train, test, k=1)
    # node 0: top-1 candidate is 2, test link is 3 -> 0; node 1: top-1 candidate 3, test 2 -> 0
    # node 2: candidates 3 (score 3) and 0 -> top 3, test link 1 -> 0; node 3: top 2, test 0 -> 0
    assert nodes.tolist() == [0, 1, 2, 3] and recall.tolist() == [0, 0, 0, 0]
    nodes, recall = per_node_recall(scores, train, test, k=2)
    assert recall.tolist() == [1.0, 1.0, 0.0, 0.0]  # nodes 2 and 3 rank their test link last


def test_tc_weights_and_weighted_graph() -> None:
    w = tc_edge_weights(TOY, 4)
    assert w.tolist() == [2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 2.0, 1.0]
    g = link_graph(TOY, 4, w)
    dense = g.adj.to_dense()
    assert torch.allclose(dense, dense.T)
    # weighted degrees 1 + sum w: node 0 -> 5, node 1 -> 5, node 2 -> 6, node 3 -> 2
    assert dense[0, 1] == pytest.approx(2 / (5 * 5) ** 0.5) and dense[3, 3] == pytest.approx(1 / 2)
    assert dense[2, 3] == pytest.approx(1 / (6 * 2) ** 0.5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="k must be"):
        topological_concentration(TOY, 4, k=0)
    with pytest.raises(ValueError, match="normalisation"):
        topological_concentration(TOY, 4, normalisation="jaccard")
    with pytest.raises(ValueError, match="out of range"):
        topological_concentration(TOY, 3)
    with pytest.raises(ValueError, match="max_outside"):
        concentration_graph(10, 2, max_outside=1.5)
    with pytest.raises(ValueError, match="edges_per_node"):
        concentration_graph(10, 2, edges_per_node=(5, 2))
    with pytest.raises(ValueError, match="dim must be"):
        approx_topological_concentration(TOY, 4, dim=0)
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        link_graph(TOY, 4, torch.ones(3))

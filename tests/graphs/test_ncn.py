"""Common neighbours as a sparse product, NCN, NCNC and their training (labkit.graphs.ncn)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from labkit.graphs.csbm import contextual_sbm
from labkit.graphs.gcn import GAE, GCN, link_graph
from labkit.graphs.linkpred import split_edges, undirected
from labkit.graphs.linktrain import drop_edges, train_link_model
from labkit.graphs.ncn import (
    NCN,
    NCNC,
    common_neighbour_counts,
    common_neighbour_matrix,
    completed_neighbour_matrix,
)

# 0-1, 0-2, 1-2, 1-3, 2-3, 3-4: pairs (0, 3) share {1, 2}; (1, 2) share {0, 3}; (0, 4) share none
EDGES = undirected(torch.tensor([[0, 0, 1, 1, 2, 3], [1, 2, 2, 3, 3, 4]]))


def test_common_neighbours_by_hand() -> None:
    g = link_graph(EDGES, 5)
    pairs = torch.tensor([[0, 1, 0], [3, 2, 4]])
    c = common_neighbour_matrix(g.adj_binary, pairs).to_dense()
    assert c.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    aa = common_neighbour_counts(g.adj_binary, pairs, node_weight=torch.arange(5.0))
    assert aa.tolist() == [3.0, 3.0, 0.0]


def test_common_neighbour_counts_match_networkx() -> None:
    data = contextual_sbm(80, 4, p_in=0.3, p_out=0.03, seed=2)
    g = link_graph(data.edge_index, 80)
    nxg = nx.Graph(data.edge_index.T.tolist())
    nxg.add_nodes_from(range(80))
    pairs = torch.randint(0, 80, (2, 300), generator=torch.Generator().manual_seed(0))
    ours = common_neighbour_counts(g.adj_binary, pairs)
    theirs = [len(list(nx.common_neighbors(nxg, i, j))) if i != j else len(list(nxg[i]))
              for i, j in pairs.T.tolist()]
    assert ours.tolist() == theirs


def test_completion_by_hand() -> None:
    g = link_graph(EDGES, 5)
    pairs = torch.tensor([[0], [4]])  # N(0) = {1, 2}, N(4) = {3}: nothing in common

    def prob(uv):  # p(u, v) = (u + v) / 10, recorded
        return (uv[0] + uv[1]).float() / 10

    c = completed_neighbour_matrix(g.adj_binary, pairs, prob).to_dense()
    # u in N(0) \ N(4) = {1, 2} weighted p(4, u); u in N(4) \ N(0) = {3} weighted p(0, 3)
    assert torch.allclose(c, torch.tensor([[0.0, 0.5, 0.6, 0.3, 0.0]]))
    # the pair itself is never counted: (1, 3) are adjacent, 3 in N(1) but u != j
    c = completed_neighbour_matrix(g.adj_binary, torch.tensor([[1], [3]]), prob).to_dense()
    assert c[0, 3] == 0 and c[0, 1] == 0 and c[0, 2] == 1  # 2 is a true common neighbour


def test_bad_inputs() -> None:
    g = link_graph(EDGES, 5)
    with pytest.raises(ValueError, match="outside"):
        common_neighbour_matrix(g.adj_binary, torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match=r"\(2, P\)"):
        common_neighbour_matrix(g.adj_binary, torch.tensor([[0, 1, 2]]))
    with pytest.raises(TypeError, match="sparse_csr"):
        common_neighbour_matrix(g.adj_binary.to_dense(), torch.tensor([[0], [1]]))
    with pytest.raises(TypeError, match="sparse_csr"):
        GCN(3, 4)(torch.rand(5, 3), g.adj.to_dense())
    with pytest.raises(ValueError, match="min_prob"):
        NCNC(3, 4, NCN(3, 4), min_prob=1.5)
    with pytest.raises(ValueError, match="ratio must be in"):
        drop_edges(torch.zeros(2, 4, dtype=torch.int64), 1.2)
    with pytest.raises(ValueError, match="epochs must be"):
        split = split_edges(EDGES, 5, valid_ratio=0.0, test_ratio=0.2, n_negatives=2)
        train_link_model(GAE(3, 4), torch.rand(5, 3), split, epochs=0)


def test_ncn_sees_common_neighbours_gae_cannot() -> None:
    # two pairs with identical endpoint embeddings differ only in their common neighbours
    g = link_graph(EDGES, 5)
    model = NCN(3, 4)
    x = torch.ones(5, 3)
    logits = model.score(x, g, torch.tensor([[0, 0], [3, 4]]))
    assert logits[0] != logits[1]
    gae = GAE(3, 4)
    scores = gae.score(x, g, torch.tensor([[0, 0], [3, 4]]))
    h = gae.encoder(x, g.adj)
    assert torch.allclose(scores, (h[[0, 0]] * h[[3, 4]]).sum(-1))


def test_ncnc_starts_from_ncn_and_trains_only_its_own_weights() -> None:
    ncn = NCN(3, 4)
    ncnc = NCNC.from_ncn(ncn, min_prob=0.5)
    for a, b in zip(ncn.parameters(), list(ncnc.parameters())[: len(list(ncn.parameters()))]):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in ncnc.completer.parameters())
    assert all(p.requires_grad for n, p in ncnc.named_parameters() if not n.startswith("completer"))


def test_training_beats_chance_on_a_csbm() -> None:
    data = contextual_sbm(200, 20, p_in=0.6, p_out=0.01, n_features=8, seed=0)
    split = split_edges(data.edge_index, 200, n_negatives=400, seed=0)
    torch.manual_seed(0)
    res = train_link_model(NCN(8, 16), data.x, split, epochs=15, batch_size=256, remove_targets=True)
    assert res.test_hits > 0.2  # chance is about 20 / 401
    assert res.history[0][0] == 0 and res.best_epoch > 0

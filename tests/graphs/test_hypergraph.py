"""The dual hypergraph transformation, its convolution and HyperDrop (labkit.graphs.hypergraph)."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from labkit.graphs.hypergraph import (
    DHTEdgeNet,
    EdgeMPNN,
    dual_convolution,
    edge_colour_task,
    hyperdrop,
    incidence,
    train_edge_model,
)


def test_incidence_and_convolution_by_hand() -> None:
    # path 0 - 1 - 2: edges e0 = (0, 1), e1 = (1, 2); node 1 has degree 2
    pairs = torch.tensor([[0, 1], [1, 2]])
    b = incidence(pairs, 3)
    assert b.tolist() == [[1, 0], [1, 1], [0, 1]]
    conv = dual_convolution(b)
    # (B^T D_n^-1 B)[e0, e0] = 1/1 + 1/2, [e0, e1] = 1/2; both scaled by 1 / sqrt(2 * 2)
    assert torch.allclose(conv, torch.tensor([[1.5, 0.5], [0.5, 1.5]]) / 2)


def test_dual_adjacency_is_the_line_graph() -> None:
    g = nx.gnm_random_graph(30, 60, seed=4)
    pairs = torch.tensor(list(g.edges())).T
    b = incidence(pairs, 30)
    dual = (b.T @ b).fill_diagonal_(0)
    order = [tuple(e) for e in pairs.T.tolist()]
    ref = torch.tensor(nx.to_numpy_array(nx.line_graph(g), nodelist=order), dtype=torch.float32)
    assert torch.equal(dual, ref)


def test_hyperdrop_keeps_the_best_hyperedges_and_their_edges() -> None:
    pairs = torch.tensor([[0, 1, 2], [1, 2, 3]])  # path 0-1-2-3
    b = incidence(pairs, 4)
    nodes, edges = hyperdrop(b, torch.tensor([0.1, 0.9, 0.2, 0.8]), 0.5)
    assert nodes.tolist() == [1, 3] and edges.tolist() == [0, 1, 2]
    nodes, edges = hyperdrop(b, torch.tensor([1.0, 0.0, 0.0, 0.0]), 0.25)
    assert nodes.tolist() == [0] and edges.tolist() == [0]


def test_edge_task_labels_by_hand_and_models_learn() -> None:
    pairs, x, y = edge_colour_task(60, 90, seed=0)
    b = incidence(pairs, 60)
    around = (b.T @ b).fill_diagonal_(0) > 0
    colour = x.argmax(1)
    for e in range(0, pairs.shape[1], 7):
        nb = colour[around[e]]
        assert y[e] == int((nb == colour[e]).sum() >= nb.numel() / 2)
    pairs, x, y = edge_colour_task(200, 300, seed=1)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    tr, te = perm[:150], perm[150:]
    torch.manual_seed(0)
    dht = DHTEdgeNet(2, 16, 2)
    conv = dual_convolution(incidence(pairs, 200))
    majority = max(y[te].float().mean().item(), 1 - y[te].float().mean().item())
    assert train_edge_model(lambda: dht(x, conv), dht, y, tr, te, epochs=200) > majority + 0.1
    torch.manual_seed(0)
    mp = EdgeMPNN(2, 10, 2)
    assert train_edge_model(lambda: mp(x, pairs, 200), mp, y, tr, te, epochs=200) > majority + 0.1


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(2, P\)"):
        incidence(torch.tensor([[0, 1, 2]]), 3)
    with pytest.raises(ValueError, match="outside"):
        incidence(torch.tensor([[0], [3]]), 3)
    b = incidence(torch.tensor([[0], [1]]), 2)
    with pytest.raises(ValueError, match="ratio must be in"):
        hyperdrop(b, torch.ones(2), 1.5)
    with pytest.raises(ValueError, match="ratio must be > 0"):
        hyperdrop(b, torch.ones(2), 0.0)
    with pytest.raises(ValueError, match="n_edges must be"):
        edge_colour_task(4, 7)

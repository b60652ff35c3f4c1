"""labkit.graphs.propagation: GCN/LightGCN matrices, layers, over-smoothing measure."""

from __future__ import annotations

import pytest
import torch

from labkit.data import planted_partition_graph
from labkit.graphs.propagation import (
    cosine_similarity_by_group,
    gcn_adjacency,
    layer_to_layer_cosine,
    lightgcn_adjacency,
    propagate_layers,
)


def test_gcn_adjacency_by_hand() -> None:
    ei = torch.tensor([[0, 1], [1, 0]])  # one edge; with loops every degree is 2
    assert torch.allclose(gcn_adjacency(ei, 2).to_dense(), torch.full((2, 2), 0.5))
    assert torch.allclose(lightgcn_adjacency(ei, 2).to_dense(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_layers_match_dense_powers() -> None:
    ei, _ = planted_partition_graph([20, 20], p_in=0.3, p_out=0.05, seed=1)
    adj = gcn_adjacency(ei, 40)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    layers = propagate_layers(x, adj, 3)
    assert len(layers) == 4
    assert torch.allclose(layers[3], torch.linalg.matrix_power(adj.to_dense(), 3) @ x, atol=1e-5)


def test_similarity_matches_brute_force_and_oversmoothing_shows() -> None:
    ei, group = planted_partition_graph([30, 30, 30], p_in=0.3, p_out=0.03, seed=0)
    x = torch.randn(90, 8, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    sim = unit @ unit.T
    same, off = group[:, None] == group[None, :], ~torch.eye(90, dtype=torch.bool)
    within, across = cosine_similarity_by_group(x, group)
    assert within == pytest.approx(sim[same & off].mean().item())
    assert across == pytest.approx(sim[~same].mean().item())
    deep = propagate_layers(x, gcn_adjacency(ei, 90), 64)[-1]
    assert min(cosine_similarity_by_group(deep, group)) > 0.99  # every node points the same way


def test_bad_inputs() -> None:
    x = torch.ones(3, 2)
    adj = torch.eye(3).to_sparse_csr()
    with pytest.raises(ValueError, match="n_layers"):
        propagate_layers(x, adj, -1)
    with pytest.raises(ValueError, match="columns"):
        propagate_layers(torch.ones(4, 2), adj, 1)
    with pytest.raises(ValueError, match="group"):
        cosine_similarity_by_group(x, torch.zeros(2, dtype=torch.long))


def test_layer_to_layer_cosine_by_hand() -> None:
    # one edge without self-loops swaps the two nodes' vectors: x = [[1, 0], [0, 1]] becomes
    # [[0, 1], [1, 0]], orthogonal row by row (cosine 0), and swaps back at the next layer
    adj = lightgcn_adjacency(torch.tensor([[0, 1], [1, 0]]), 2)
    layers = propagate_layers(torch.eye(2), adj, 2)
    assert layer_to_layer_cosine(layers) == pytest.approx([0.0, 0.0])
    # with self-loops both rows become [0.5, 0.5]: cosine 1/sqrt(2) from layer 0, then 1
    layers = propagate_layers(torch.eye(2), gcn_adjacency(torch.tensor([[0, 1], [1, 0]]), 2), 2)
    assert layer_to_layer_cosine(layers) == pytest.approx([2**-0.5, 1.0])


def test_bipartite_graph_without_self_loops_keeps_oscillating() -> None:
    """The eigenvalue -1 of a connected bipartite graph: without self-loops the users and the
    items settle on two directions that swap at each layer, so a node's vector never settles;
    with self-loops every node ends up parallel to every other."""
    from labkit.graphs import bipartite_edge_index

    gen = torch.Generator().manual_seed(0)
    pairs = torch.stack([torch.randint(0, 30, (200,), generator=gen), torch.randint(0, 20, (200,), generator=gen)])
    pairs = torch.unique(pairs, dim=1)
    ei = bipartite_edge_index(pairs, 30, 20)
    side = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    x = torch.randn(50, 8, generator=gen)
    light = propagate_layers(x, lightgcn_adjacency(ei, 50), 200)
    loops = propagate_layers(x, gcn_adjacency(ei, 50), 200)
    assert layer_to_layer_cosine(loops)[-1] > 0.999
    assert cosine_similarity_by_group(loops[-1], side)[1] > 0.999  # users and items parallel
    assert layer_to_layer_cosine(light)[-1] < 0.9  # the directions keep swapping
    within, across = cosine_similarity_by_group(light[-1], side)
    assert within > 0.999 and across < 0.9  # each side aligned, the two sides not
    # two layers apart the swap undoes itself: layer K and K + 2 are parallel
    assert layer_to_layer_cosine([light[-3], light[-1]])[0] > 0.999


def test_layer_to_layer_cosine_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least two"):
        layer_to_layer_cosine([torch.ones(3, 2)])
    with pytest.raises(ValueError, match="one shape"):
        layer_to_layer_cosine([torch.ones(3, 2), torch.ones(4, 2)])

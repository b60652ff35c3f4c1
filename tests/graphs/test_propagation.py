"""labkit.graphs.propagation: GCN/LightGCN matrices, layers, over-smoothing measure."""

from __future__ import annotations

import pytest
import torch

from labkit.data import planted_partition_graph
from labkit.graphs.propagation import cosine_similarity_by_group, gcn_adjacency, lightgcn_adjacency, propagate_layers


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

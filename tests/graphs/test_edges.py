"""labkit.graphs.edges: validation, normalisation and gather-scatter message passing."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.edges import bipartite_edge_index, check_edge_index, degree, gcn_norm, message_passing, to_csr

# a path 0 - 1 - 2 stored in both directions
PATH = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])


def test_message_passing_by_hand() -> None:
    x = torch.tensor([[1.0], [10.0], [100.0]])
    assert torch.equal(message_passing(x, PATH), torch.tensor([[10.0], [101.0], [10.0]]))
    assert torch.equal(message_passing(x, PATH, aggr="mean"), torch.tensor([[10.0], [50.5], [10.0]]))


def test_gcn_norm_by_hand() -> None:
    _, w = gcn_norm(PATH, 3)
    # degrees 1, 2, 1: every edge touches node 1, so each weight is 1/sqrt(1*2)
    assert torch.allclose(w, torch.full((4,), 2 ** -0.5))
    ei, w = gcn_norm(PATH, 3, add_self_loops=True)
    assert ei.shape == (2, 7)
    # with loops degrees are 2, 3, 2: edge 0->1 weight 1/sqrt(6), loop at 1 weight 1/3
    assert torch.isclose(w[0], torch.tensor(6 ** -0.5)) and torch.isclose(w[5], torch.tensor(1 / 3))


def test_csr_product_equals_message_passing() -> None:
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(50, (2, 300), generator=g)
    x = torch.randn(50, 7, generator=g)
    ei2, w = gcn_norm(ei, 50)
    adj = to_csr(ei2, 50, w)
    assert adj.layout == torch.sparse_csr
    assert torch.allclose(adj @ x, message_passing(x, ei2, w), atol=1e-5)


def test_isolated_nodes_get_no_nan() -> None:
    _, w = gcn_norm(torch.tensor([[0], [1]]), 4)
    assert torch.isfinite(w).all()
    assert torch.equal(degree(torch.tensor([0, 0, 3]), 5), torch.tensor([2.0, 0, 0, 1, 0]))


def test_bipartite_edge_index() -> None:
    ei = bipartite_edge_index(torch.tensor([[0, 1], [2, 0]]), n_users=2, n_items=3)
    assert ei.tolist() == [[0, 1, 4, 2], [4, 2, 0, 1]]


@pytest.mark.parametrize("ei, n, err, msg", [
    (torch.tensor([[0, -1], [1, 0]]), 3, ValueError, "negative"),
    (torch.tensor([[0, 5], [1, 0]]), 3, ValueError, "out of range"),
    (torch.tensor([0, 1, 2]), 3, ValueError, "shape"),
    (torch.tensor([[0.0], [1.0]]), 3, TypeError, "int64"),
    ([[0], [1]], 3, TypeError, "tensor"),
    (torch.tensor([[0], [1]]), -1, ValueError, "num_nodes"),
])
def test_bad_edge_index(ei, n, err, msg) -> None:
    with pytest.raises(err, match=msg):
        check_edge_index(ei, n)


def test_bad_message_passing_inputs() -> None:
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match="aggr"):
        message_passing(x, PATH, aggr="max")
    with pytest.raises(ValueError, match="edge_weight"):
        message_passing(x, PATH, torch.ones(3))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        message_passing(torch.ones(3), PATH)
    with pytest.raises(ValueError, match="item ids"):
        bipartite_edge_index(torch.tensor([[0], [3]]), n_users=1, n_items=3)

"""CommFormer: the top-k relaxation, masked attention, errors, and recovery of a tiny graph."""

from __future__ import annotations

import pytest
import torch

from labkit.infocomm import commgraph as cg


def test_top_k_mask_by_hand() -> None:
    logits = torch.tensor([[9.0, 1.0, 3.0, 2.0],
                           [0.0, 9.0, 5.0, 4.0],
                           [1.0, 2.0, 9.0, 0.0],
                           [3.0, 0.0, 1.0, 9.0]])
    mask = cg.top_k_mask(logits, 2)  # the diagonal is never kept
    expected = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1],
                             [1, 1, 0, 0], [1, 0, 1, 0]])
    torch.testing.assert_close(mask, expected)
    assert cg.top_k_mask(logits, 0).sum() == 0


def test_planted_graph_rows_and_task() -> None:
    g = cg.planted_graph(6, 2, seed=3)
    assert torch.equal(g.sum(1), torch.full((6,), 2.0))
    assert g.diagonal().abs().sum() == 0
    x, y = cg.sample_task(g, 5, 3, generator=torch.Generator().manual_seed(0))
    i = 0
    src = g[i].nonzero().flatten()
    torch.testing.assert_close(y[:, i], x[:, src].sum(1))


def test_straight_through_forward_hard_backward_soft() -> None:
    torch.manual_seed(0)
    net = cg.CommFormer(4, 3, 2)
    m = net.graph()
    torch.testing.assert_close(m.detach(), cg.top_k_mask(net.edge_logits, 2))
    m.sum().backward()
    s = torch.sigmoid(net.edge_logits.detach())
    torch.testing.assert_close(net.edge_logits.grad, s * (1 - s))


def test_masked_attention_ignores_dropped_agents() -> None:
    torch.manual_seed(0)
    fixed = torch.tensor([[0.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1],
                          [0, 0, 1, 0]])
    net = cg.CommFormer(4, 3, 1, fixed=fixed)
    x = torch.randn(2, 4, 3)
    x2 = x.clone()
    x2[:, 2:] += 5.0  # agents 0 and 1 never listen to 2 or 3
    out, out2 = net(x), net(x2)
    torch.testing.assert_close(out[:, :2], out2[:, :2])
    assert not torch.allclose(out[:, 2:], out2[:, 2:])


def test_edge_precision() -> None:
    planted = cg.planted_graph(5, 2, seed=0)
    assert cg.edge_precision(planted, planted) == 1.0
    assert cg.edge_precision(1 - planted - torch.eye(5), planted) == 0.0


def test_learned_graph_recovers_planted_edges() -> None:
    torch.manual_seed(0)
    planted = cg.planted_graph(4, 1, seed=1)
    run = cg.train_graph(planted, 1, steps=150, batch=64, seed=0, n_test=256)
    assert cg.edge_precision(run.graph, planted) == 1.0
    empty = cg.train_graph(planted, 0, steps=150, batch=64, n_test=256,
                           fixed=torch.zeros(4, 4))
    assert run.test_loss < 0.5 * empty.test_loss


def test_errors() -> None:
    with pytest.raises(ValueError, match="k must be at most N - 1"):
        cg.planted_graph(6, 6)
    with pytest.raises(ValueError, match="k must be at most N - 1"):
        cg.CommFormer(4, 3, 4)
    with pytest.raises(ValueError, match="k must be in"):
        cg.top_k_mask(torch.zeros(3, 3), -1)
    with pytest.raises(TypeError, match="k must be an int"):
        cg.train_graph(cg.planted_graph(3, 1), 1.5)
    with pytest.raises(ValueError, match="n_agents"):
        cg.planted_graph(1, 0)
    with pytest.raises(ValueError, match="no edges"):
        cg.edge_precision(torch.zeros(3, 3), cg.planted_graph(3, 1))
    with pytest.raises(ValueError, match="one shape"):
        cg.edge_precision(torch.zeros(3, 3), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="steps"):
        cg.train_graph(cg.planted_graph(3, 1), 1, steps=0)

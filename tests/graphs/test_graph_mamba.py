"""The selective scan (loop and parallel forms), Graph Mamba's tokens, ordering and task."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.graph_mamba import (
    MPNN,
    DenseAttentionLayer,
    GraphMamba,
    degree_order,
    hop_tokens,
    long_range_task,
    parameter_count,
)
from labkit.graphs.ssm import (
    SelectiveSSM,
    linear_scan_parallel,
    linear_scan_sequential,
    selective_scan,
)


def test_linear_scan_by_hand() -> None:
    a = torch.tensor([[0.5, 2.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0]])
    # h0 = 1, h1 = 2 * 1 + 1 = 3, h2 = 1 * 3 + 3 = 6
    want = torch.tensor([[1.0, 3.0, 6.0]])
    assert torch.equal(linear_scan_sequential(a, b), want)
    assert torch.allclose(linear_scan_parallel(a, b), want)


@pytest.mark.parametrize("steps", [1, 2, 7, 16, 37])
def test_parallel_scan_equals_loop(steps: int) -> None:
    gen = torch.Generator().manual_seed(steps)
    a = torch.rand(3, steps, 5, 4, generator=gen)
    b = torch.randn(3, steps, 5, 4, generator=gen)
    assert torch.allclose(linear_scan_parallel(a, b),
                          linear_scan_sequential(a, b), atol=1e-5)


def test_selective_scan_forms_agree_and_small_delta_keeps_state() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, generator=gen)
    delta = torch.rand(2, 9, 3, generator=gen)
    a_log = torch.randn(3, 4, generator=gen)
    b_t, c_t = torch.randn(2, 2, 9, 4, generator=gen)
    y_par = selective_scan(x, delta, a_log, b_t, c_t)
    y_seq = selective_scan(x, delta, a_log, b_t, c_t, parallel=False)
    assert torch.allclose(y_par, y_seq, atol=1e-5)
    # Delta = 0 after step 0: the state neither decays nor takes input
    delta0 = delta.clone()
    delta0[:, 1:] = 0.0
    c_const = c_t[:, :1].expand_as(c_t)
    y = selective_scan(x, delta0, a_log, b_t, c_const)
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-6)


def test_selective_scan_bad_input() -> None:
    x = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="delta"):
        selective_scan(x, torch.zeros(1, 4, 2), torch.zeros(3, 2),
                       torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="a_log"):
        selective_scan(x, x, torch.zeros(2, 2), torch.zeros(1, 4, 2),
                       torch.zeros(1, 4, 2))
    with pytest.raises(TypeError, match="x"):
        selective_scan(x.long(), x, torch.zeros(3, 2), torch.zeros(1, 4, 2),
                       torch.zeros(1, 4, 2))
    with pytest.raises(ValueError, match="same shape"):
        linear_scan_parallel(torch.zeros(1, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="dim"):
        SelectiveSSM(0)


def test_ssm_block_forms_agree() -> None:
    torch.manual_seed(0)
    block = SelectiveSSM(6, 4)
    x = torch.randn(2, 11, 6)
    assert torch.allclose(block(x), block(x, parallel=False), atol=1e-5)


def test_long_range_task_distances_and_colours() -> None:
    for ring in (False, True):
        task = long_range_task(50, 12, [1, 3, 5], colours=3, ring=ring,
                               seed=1)
        planted = task.x[:, 3].nonzero().squeeze(1)
        assert planted.numel() == 50
        assert torch.equal(task.x[planted, :3].argmax(1), task.label)
        local_p, local_q = planted % 12, task.query % 12
        gap = (local_p - local_q).abs()
        if ring:
            gap = torch.minimum(gap, 12 - gap)
        assert torch.equal(gap, task.distance)
        assert set(task.distance.tolist()) <= {1, 3, 5}
        # a path has n - 1 edges per graph, a ring n (both directions stored)
        per_graph = 12 if ring else 11
        assert task.edge_index.shape[1] == 2 * 50 * per_graph


def test_long_range_task_bad_input() -> None:
    with pytest.raises(ValueError, match="distances"):
        long_range_task(4, 10, [10])
    with pytest.raises(ValueError, match="distances"):
        long_range_task(4, 10, [6], ring=True)
    with pytest.raises(ValueError, match="distances"):
        long_range_task(4, 10, [])
    with pytest.raises(TypeError, match="n_nodes"):
        long_range_task(4, 10.0, [1])


def test_hop_tokens_by_hand() -> None:
    # path 0 - 1 - 2, feature = node index
    x = torch.tensor([[0.0], [1.0], [2.0]])
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    tok = hop_tokens(x, ei, 2)
    assert tok.shape == (3, 3, 1)
    assert torch.allclose(tok[:, 1, 0], torch.tensor([1.0, 1.0, 1.0]))
    assert torch.allclose(tok[:, 2, 0], torch.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="hops"):
        hop_tokens(x, ei, -1)


def test_degree_order_sorts_within_graphs() -> None:
    task = long_range_task(5, 8, [2], seed=0)
    order = degree_order(task.edge_index, 5, 8,
                         generator=torch.Generator().manual_seed(0))
    assert order.shape == (5, 8)
    # every graph's own nodes, each once; the two path ends (degree 1) first
    for g in range(5):
        assert sorted(order[g].tolist()) == list(range(8 * g, 8 * g + 8))
        assert sorted((order[g, :2] % 8).tolist()) == [0, 7]
    with pytest.raises(ValueError):
        degree_order(task.edge_index, 4, 8)


def test_mpnn_cannot_see_beyond_its_layers() -> None:
    torch.manual_seed(0)
    task = long_range_task(6, 12, [4], seed=0)
    model = MPNN(6, 8, 4, layers=3)
    other = long_range_task(6, 12, [4], seed=0)
    other.x[:, :4] = 0.0  # erase the colours, 4 hops from the queries
    with torch.no_grad():
        assert torch.allclose(model(task), model(other))


def test_graph_mamba_reaches_far_nodes_and_forms_agree() -> None:
    torch.manual_seed(0)
    task = long_range_task(4, 16, [10], seed=0)
    model = GraphMamba(6, 8, 4, hops=1)
    with torch.no_grad():
        a = model(task, generator=torch.Generator().manual_seed(0))
        b = model(task, parallel=False,
                  generator=torch.Generator().manual_seed(0))
        assert torch.allclose(a, b, atol=1e-5)
        other = long_range_task(4, 16, [10], seed=0)
        other.x[:, :4] = 0.0
        c = model(other, generator=torch.Generator().manual_seed(0))
    assert (a - c).abs().max() > 1e-6  # a colour 10 hops away changes it
    assert parameter_count(model) > 0


def test_dense_attention_layer_shape() -> None:
    layer = DenseAttentionLayer(4)
    assert layer(torch.randn(2, 5, 4)).shape == (2, 5, 4)


def test_mpnn_matching_is_closest_width() -> None:
    from labkit.graphs.graph_mamba import mpnn_matching

    model = mpnn_matching(1000, 6, 4, 2)
    count = parameter_count(model)
    for hidden in (model.out.in_features - 1, model.out.in_features + 1):
        other = parameter_count(MPNN(6, hidden, 4, 2))
        assert abs(count - 1000) <= abs(other - 1000)
    with pytest.raises(ValueError, match="params"):
        mpnn_matching(0, 6, 4, 2)

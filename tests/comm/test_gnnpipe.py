"""GNNPipe: partitions, halo volumes, the pipeline on simulated and real ranks."""

import pytest
import torch

from labkit.comm import gnnpipe as G
from labkit.dist import launch
from labkit.graphs.csbm import contextual_sbm
from labkit.graphs.gcn import gcn_adjacency_csr
from labkit.graphs.sparse import spmm


@pytest.fixture(scope="module")
def graph():
    return contextual_sbm(80, 2, p_in=0.15, p_out=0.02, n_features=8, seed=0)


def test_halo_by_hand():
    # path 0-1-2-3, parts {0, 1} and {2, 3}: each part needs one remote node
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    assert G.halo_size(ei, torch.tensor([0, 0, 1, 1])) == 2
    # parts {0, 2} and {1, 3}: part 0 needs 1 and 3, part 1 needs 0 and 2
    assert G.halo_size(ei, torch.tensor([0, 1, 0, 1])) == 4


def test_partitions_equal_and_kl_cuts_less(graph):
    for method in ("kl", "random"):
        a = G.partition_nodes(graph.edge_index, 80, 4, method=method)
        assert torch.bincount(a).tolist() == [20] * 4
    kl = G.halo_size(graph.edge_index, G.partition_nodes(graph.edge_index, 80, 4))
    rnd = G.halo_size(graph.edge_index,
                      G.partition_nodes(graph.edge_index, 80, 4, method="random"))
    assert kl < rnd


def test_halo_exchange_equals_full_product(graph):
    h = torch.randn(80, 5, generator=torch.Generator().manual_seed(1))
    a = G.partition_nodes(graph.edge_index, 80, 4, method="random")
    out, fetched = G.halo_exchange_bytes(h, graph.edge_index, a)
    full = spmm(gcn_adjacency_csr(graph.edge_index, 80), h)
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    assert fetched == G.halo_size(graph.edge_index, a) * 5 * 4
    assert 2 * 3 * fetched == G.graph_parallel_bytes(3, fetched // 20, 5)


def test_pipeline_bytes_formula():
    assert G.pipeline_bytes(2, 10, 3) == 2 * 1 * 10 * 3 * 4
    assert G.pipeline_bytes(1, 10, 3) == 0


def test_one_chunk_equals_full_graph(graph):
    kw = dict(layers=4, hidden=8, epochs=5, lr=0.01, seed=0)
    full = G.train_full_graph(graph, **kw)
    pipe = G.simulate_gnnpipe(graph, stages=2, chunks=1, **kw)
    assert pipe["losses"] == pytest.approx(full["losses"], rel=1e-5)
    assert pipe["accuracy"] == full["accuracy"]
    assert pipe["sent"] == 5 * G.pipeline_bytes(2, 80, 8)


def test_chunks_use_history_and_differ(graph):
    kw = dict(layers=4, hidden=8, epochs=5, lr=0.01, seed=0, stages=2)
    one = G.simulate_gnnpipe(graph, chunks=1, **kw)
    two = G.simulate_gnnpipe(graph, chunks=2, **kw)
    assert one["losses"][0] != two["losses"][0]
    assert two["sent"] == one["sent"]


def test_chunk_adjacency_rows(graph):
    rows = torch.tensor([3, 0, 7])
    sub = G.chunk_adjacency(graph.edge_index, 80, rows)
    full = gcn_adjacency_csr(graph.edge_index, 80).to_dense()
    torch.testing.assert_close(sub.to_dense(), full[rows])


def test_real_ranks_match_simulator(graph):
    kw = dict(graph=graph, layers=4, hidden=8, chunks=2, epochs=3, lr=0.01, seed=0)
    real = launch(G.gnnpipe_training, 2, kwargs=kw, timeout=120)
    sim = G.simulate_gnnpipe(stages=2, **kw)
    assert real[1]["losses"] == sim["losses"]
    assert real[0]["sent"] + real[1]["sent"] == sim["sent"]
    for r in range(2):
        assert all(torch.equal(a, b) for a, b in zip(real[r]["params"][r],
                                                     sim["params"][r]))


def test_bad_arguments(graph):
    with pytest.raises(ValueError, match="parts"):
        G.partition_nodes(graph.edge_index, 80, 3)
    with pytest.raises(ValueError, match="method"):
        G.partition_nodes(graph.edge_index, 80, 2, method="metis")
    with pytest.raises(ValueError, match="stages"):
        G.simulate_gnnpipe(graph, stages=3, layers=4, hidden=8, chunks=2, epochs=1,
                           lr=0.01, seed=0)
    with pytest.raises(ValueError, match="chunks"):
        G.simulate_gnnpipe(graph, stages=2, layers=4, hidden=8, chunks=0, epochs=1,
                           lr=0.01, seed=0)
    with pytest.raises(ValueError, match="world_size"):
        G.gnnpipe_training(0, 1, graph=graph, layers=4, hidden=8, chunks=2, epochs=1,
                           lr=0.01, seed=0)


def test_reshuffle_deals_new_chunks_after_the_first_epoch(graph):
    kw = dict(stages=2, layers=4, hidden=8, chunks=2, epochs=3, lr=0.01, seed=0)
    fixed = G.simulate_gnnpipe(graph, reshuffle=False, **kw)
    dealt = G.simulate_gnnpipe(graph, **kw)
    assert dealt["losses"][0] == fixed["losses"][0]
    assert dealt["losses"][1:] != fixed["losses"][1:]
    assert not torch.equal(G.chunk_assignment(80, 2, 0), G.chunk_assignment(80, 2, 1))

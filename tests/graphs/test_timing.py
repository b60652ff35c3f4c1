"""Netlists, NLDM look-ups, STA against networkx, and PreRoutGNN's order-preserving partition."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from labkit.graphs.timing import (
    LOAD_AXIS,
    SLEW_AXIS,
    Netlist,
    PreRoutGNN,
    TimingGCN,
    batch_graphs,
    bilinear,
    equal_size_gcn,
    fit_timing,
    levelise,
    n_parameters,
    predict_arrival,
    pretrain_autoencoder,
    random_netlist,
    slack_r2_by_depth,
    sta,
    timing_graph,
    with_embeddings,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models


def _tables(n: int, value: float) -> np.ndarray:
    return np.full((n, SLEW_AXIS.size, LOAD_AXIS.size), value)


def test_bilinear_hits_grid_points_and_is_exact_on_a_plane() -> None:
    s, ld = np.meshgrid(SLEW_AXIS, LOAD_AXIS, indexing="ij")
    table = 0.1 + 2.0 * s + 0.3 * ld + 0.5 * s * ld
    assert bilinear(table, SLEW_AXIS, LOAD_AXIS, 0.3, 4.0) == pytest.approx(
        table[2, 2])
    for x, y in [(0.05, 1.0), (0.5, 7.0), (1.5, 20.0), (0.0, 0.1)]:
        # inside, and extrapolated beyond both ends of both axes
        assert bilinear(table, SLEW_AXIS, LOAD_AXIS, x, y) == pytest.approx(
            0.1 + 2.0 * x + 0.3 * y + 0.5 * x * y)
    # hand-checked midpoint of the first cell: the mean of its four corners
    mid = bilinear(table, SLEW_AXIS, LOAD_AXIS, 0.06, 1.0)
    assert mid == pytest.approx(table[:2, :2].mean())


@pytest.mark.parametrize("axis", [[0.1, 0.1, 0.3], [0.3, 0.2, 0.5], [1.0]])
def test_non_increasing_axes_are_rejected(axis: list[float]) -> None:
    table = np.zeros((len(axis), LOAD_AXIS.size))
    with pytest.raises(ValueError, match="x_axis"):
        bilinear(table, np.array(axis), LOAD_AXIS, 0.1, 1.0)
    net = random_netlist(3, 2, seed=0)
    with pytest.raises(ValueError, match="load_axis"):
        Netlist(net.n, net.edges, net.delay, net.slew, net.pin_cap, 0.3,
                load_axis=np.array([0.5, 4.0, 1.5, 10.0]))


def test_a_cycle_is_rejected() -> None:
    edges = np.array([[0, 1, 2, 3], [1, 2, 3, 1]])
    with pytest.raises(ValueError, match="DAG"):
        levelise(edges, 4)
    with pytest.raises(ValueError, match="cycle"):
        Netlist(4, edges, _tables(4, 0.1), _tables(4, 0.1), np.ones(4), 0.3)


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="n_levels"):
        random_netlist(1, 4)
    with pytest.raises(ValueError, match="width"):
        random_netlist(3, 0)
    net = random_netlist(3, 2, seed=0)
    with pytest.raises(ValueError, match="period"):
        sta(net, 0.0)
    with pytest.raises(ValueError, match="delay"):
        Netlist(net.n, net.edges, net.delay[:, :2], net.slew, net.pin_cap, 0.3)
    with pytest.raises(ValueError, match="edges"):
        Netlist(2, np.array([[0], [5]]), _tables(2, 0.1), _tables(2, 0.1),
                np.ones(2), 0.3)
    g = timing_graph(net)
    with pytest.raises(ValueError, match="chunk"):
        PreRoutGNN()(g, chunk=0)
    with pytest.raises(ValueError, match="hidden"):
        PreRoutGNN(hidden=0)
    with pytest.raises(ValueError, match="z must"):
        with_embeddings(g, torch.zeros(g.n + 1, 2))
    with pytest.raises(ValueError, match="graphs"):
        batch_graphs([])
    with pytest.raises(ValueError, match="steps"):
        fit_timing(PreRoutGNN(), g, steps=0)
    with pytest.raises(ValueError, match="dim"):
        pretrain_autoencoder(g, dim=0)
    with pytest.raises(ValueError, match="n"):
        levelise(np.zeros((2, 0)), 0)


def test_levels_of_a_hand_drawn_netlist() -> None:
    # 0 -> 2, 1 -> 2, 2 -> 4, 0 -> 4, 3 isolated: 4 waits for 2, which waits for 0 and 1
    edges = np.array([[0, 1, 2, 0], [2, 2, 4, 4]])
    assert levelise(edges, 5).tolist() == [0, 0, 1, 0, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_levels_match_networkx_generations(seed: int) -> None:
    net = random_netlist(7, 5, seed=seed, skip=0.5)
    level = levelise(net.edges, net.n)
    g = nx.DiGraph(net.edges.T.tolist())
    g.add_nodes_from(range(net.n))
    gens = [sorted(gen) for gen in nx.topological_generations(g)]
    assert len(gens) == level.max() + 1
    for i, gen in enumerate(gens):
        assert sorted(np.nonzero(level == i)[0].tolist()) == gen


def test_sta_on_a_hand_checked_chain() -> None:
    # 0 -> 1 -> 2: delays constant 0.2 and 0.3, pin caps 1, wire cap 0.5
    edges = np.array([[0, 1], [1, 2]])
    delay = np.stack([_tables(1, 0.0)[0], _tables(1, 0.2)[0],
                      _tables(1, 0.3)[0]])
    net = Netlist(3, edges, delay, _tables(3, 0.1), np.ones(3), 0.5)
    res = sta(net, 2.0)
    wire = 0.05 * 1.5  # load = 0.5 x one sink + one pin cap of 1
    np.testing.assert_allclose(res["arrival"], [0, wire + 0.2,
                                                2 * wire + 0.5])
    np.testing.assert_allclose(res["required"], [2.0 - 0.5 - 2 * wire,
                                                 2.0 - 0.3 - wire, 2.0])
    np.testing.assert_allclose(res["slack"], 2.0 - res["arrival"][2])


@pytest.mark.parametrize("seed", [0, 3])
def test_slew_independent_arrival_is_networkx_longest_path(seed: int) -> None:
    net = random_netlist(8, 6, seed=seed, skip=0.5)
    # make every delay table flat along the slew axis
    net.delay[:] = net.delay[:, :1, :]
    res = sta(net, 5.0)
    src, dst = net.edges
    load = net.wire_cap * np.bincount(src, minlength=net.n) + np.bincount(
        src, weights=net.pin_cap[dst], minlength=net.n)
    g = nx.DiGraph()
    for u, v in net.edges.T.tolist():
        d = bilinear(net.delay[v], SLEW_AXIS, LOAD_AXIS, 0.0, load[v])
        g.add_edge(u, v, w=0.05 * load[u] + d)
    assert res["arrival"].max() == pytest.approx(
        nx.dag_longest_path_length(g, weight="w"))
    for v in np.argsort(res["arrival"])[-10:]:
        cone = g.subgraph(nx.ancestors(g, int(v)) | {int(v)})
        assert res["arrival"][v] == pytest.approx(
            nx.dag_longest_path_length(cone, weight="w"))


def test_slack_is_required_minus_arrival_and_endpoints_meet_period() -> None:
    net = random_netlist(6, 4, seed=5)
    g = timing_graph(net, period=2.5)
    np.testing.assert_allclose(g.slack[g.endpoint].numpy(),
                               (2.5 - g.arrival[g.endpoint]).numpy(),
                               rtol=1e-6)
    res = sta(net, 2.5)
    # the worst slack on any path equals the worst endpoint slack
    worst = float(g.slack[g.endpoint].min())
    assert res["slack"].min() == pytest.approx(worst, abs=1e-5)


@pytest.fixture(scope="module")
def graph():
    return timing_graph(random_netlist(9, 6, seed=4))


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 100])
def test_partitioned_run_equals_the_whole_run(graph, chunk: int) -> None:
    torch.manual_seed(0)
    model = PreRoutGNN(hidden=8)
    with torch.no_grad():
        whole, peak_whole = model(graph)
        part, peak = model(graph, chunk=chunk)
    torch.testing.assert_close(part, whole, rtol=0, atol=1e-6)
    assert peak_whole == graph.n * 8 * 4
    if chunk <= 2:
        assert peak < peak_whole


def test_batched_graphs_give_each_graph_its_own_prediction(graph) -> None:
    other = timing_graph(random_netlist(5, 3, seed=8))
    torch.manual_seed(0)
    model = PreRoutGNN(hidden=8)
    with torch.no_grad():
        both, _ = model(batch_graphs([graph, other]))
        torch.testing.assert_close(both[:graph.n], model(graph)[0])
        torch.testing.assert_close(both[graph.n:], model(other)[0])


def test_training_fits_arrival_times(graph) -> None:
    torch.manual_seed(0)
    model = PreRoutGNN(hidden=8)
    stats = fit_timing(model, graph, steps=60)
    pred = predict_arrival(model, graph, stats)
    err = (pred - graph.arrival).pow(2).mean()
    assert err < 0.2 * graph.arrival.var()
    gcn = TimingGCN(4, 8, layers=2)
    assert predict_arrival(gcn, graph, fit_timing(gcn, graph, steps=5)
                           ).shape == (graph.n,)


def test_slack_r2_by_depth(graph) -> None:
    ok = slack_r2_by_depth(graph, graph.arrival, [(1, 4), (5, 8)])
    assert ok == pytest.approx([1.0, 1.0])
    mean = torch.full_like(graph.arrival, float(graph.arrival.mean()))
    assert slack_r2_by_depth(graph, mean, [(1, 8)])[0] < 0.0
    with pytest.raises(ValueError, match="bucket"):
        slack_r2_by_depth(graph, graph.arrival, [(50, 60)])


def test_pretraining_lowers_the_autoencoder_loss(graph) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    short = pretrain_autoencoder(graph, dim=3, steps=1)
    long = pretrain_autoencoder(graph, dim=3, steps=80)
    with torch.no_grad():
        assert long.loss(graph, gen) < short.loss(graph, gen)
        z = long.encode(graph)
    assert with_embeddings(graph, z).x.shape == (graph.n, 4 + 3)


def test_equal_size_gcn_matches_the_parameter_count() -> None:
    ref = PreRoutGNN(hidden=16)
    for layers in (2, 4):
        gcn = equal_size_gcn(ref, layers=layers)
        assert len(gcn.layers) == layers
        assert abs(n_parameters(gcn) / n_parameters(ref) - 1) < 0.1
    # a hand count: 4 inputs + 32 table entries + depth -> 3, then 3 -> 3, 3 -> 1
    assert n_parameters(TimingGCN(4, 3, layers=1)) == 37 * 3 + 3 + 12 + 4

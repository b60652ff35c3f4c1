"""DADAO on Poisson clocks: graph constants, the exact flow, convergence, bad inputs."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.linalg

from labkit.federated import gossip
from labkit.federated.gossip import (
    dadao_constants,
    dadao_ode,
    graph_constants,
    logistic_problem,
    make_graph,
    ode_flow,
    run_dadao,
    run_tracking,
    theorem_rate,
)


def _numpy_constants(graph: nx.Graph) -> tuple[float, float]:
    lap = nx.laplacian_matrix(graph).toarray() / graph.number_of_edges()
    pinv = np.linalg.pinv(lap)
    chi_2 = 0.0
    for i, j in graph.edges:
        e = np.zeros(len(lap))
        e[i], e[j] = 1.0, -1.0
        chi_2 = max(chi_2, 0.5 * e @ pinv @ e)
    return 1.0 / np.linalg.eigvalsh(lap)[1], chi_2


@pytest.mark.parametrize("kind", ["ring", "torus", "regular", "complete"])
def test_graph_constants_match_numpy_and_chi2_below_chi1(kind: str) -> None:
    g = make_graph(kind, 16)
    chi_1, chi_2 = graph_constants(g)
    ref_1, ref_2 = _numpy_constants(g)
    assert chi_1 == pytest.approx(ref_1, rel=1e-6)
    assert chi_2 == pytest.approx(ref_2, rel=1e-6)
    assert chi_2 <= chi_1 + 1e-9


def test_ring_constants_by_hand() -> None:
    # ring of 4, each edge at rate 1/4: Laplacian eigenvalues {0, 2, 2, 4}/4,
    # an edge's effective resistance at conductance 1/4 is 4 * 3/4 = 3
    chi_1, chi_2 = graph_constants(nx.cycle_graph(4))
    assert chi_1 == pytest.approx(2.0)
    assert chi_2 == pytest.approx(1.5)
    assert theorem_rate(chi_1, chi_2) == pytest.approx(np.sqrt(6.0))


def test_scaling_rates_divides_both_constants() -> None:
    g = make_graph("torus", 9)
    c1, c2 = graph_constants(g)
    s1, s2 = graph_constants(g, np.full(g.number_of_edges(), 3.0 / g.number_of_edges()))
    assert (s1, s2) == pytest.approx((c1 / 3, c2 / 3))
    lam = theorem_rate(c1, c2)
    assert (c1 / lam) * (c2 / lam) == pytest.approx(0.5)


def test_flow_is_the_matrix_exponential() -> None:
    prob = logistic_problem(4, per_node=5, dim=3)
    ode = dadao_ode(dadao_constants(prob.mu, prob.smooth, 2.0))
    dts = np.array([0.0, 0.01, 0.7, 3.0, 25.0])
    ref = scipy.linalg.expm(ode[None] * dts[:, None, None])
    assert np.abs(ode_flow(ode)(dts) - ref).max() < 1e-9


def test_optimum_matches_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    prob = logistic_problem(8, per_node=10, dim=4, seed=1)
    a = prob.features.reshape(-1, 4)
    b = prob.labels.reshape(-1)
    n = len(b)
    clf = LogisticRegression(C=1.0 / (prob.mu * n), fit_intercept=False, tol=1e-12,
                             max_iter=10_000).fit(a, b)
    assert np.allclose(clf.coef_[0], prob.x_star, atol=1e-5)
    assert np.linalg.norm(prob.total_grad(prob.x_star)) < 1e-10
    assert prob.smooth / prob.mu == pytest.approx(100.0)


def test_dadao_and_baseline_converge_on_a_small_complete_graph() -> None:
    prob = logistic_problem(6, per_node=8, dim=3, kappa=20.0)
    g = make_graph("complete", 6)
    lam = theorem_rate(*graph_constants(g))
    run = run_dadao(prob, g, rate=lam, max_grads=20_000, eps=1e-6)
    base = run_tracking(prob, g, rate=lam, max_grads=20_000, eps=1e-6)
    assert run.error[-1] <= 1e-6 and base.error[-1] <= 1e-6
    assert run.to_reach(1e-6) <= run.grads[-1]
    # messages: each gossip event sends two vectors
    assert run.messages[-1] % 2 == 0


def test_dadao_diverges_when_the_gossip_rate_is_far_too_low() -> None:
    prob = logistic_problem(8, per_node=8, dim=3, kappa=20.0)
    g = make_graph("ring", 8)
    lam = theorem_rate(*graph_constants(g))
    run = run_dadao(prob, g, rate=lam / 20, max_grads=20_000, eps=1e-6)
    assert run.to_reach(1e-6) == float("inf")


def test_bad_inputs() -> None:
    prob = logistic_problem(4, per_node=5, dim=3)
    g = make_graph("complete", 4)
    with pytest.raises(ValueError, match="connected"):
        graph_constants(nx.Graph([(0, 1), (2, 3)]))
    with pytest.raises(ValueError, match="rates"):
        graph_constants(g, np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="rate"):
        run_dadao(prob, g, rate=0.0, max_grads=10)
    with pytest.raises(ValueError, match="eps"):
        run_dadao(prob, g, rate=1.0, max_grads=10, eps=0.0)
    with pytest.raises(ValueError, match="n"):
        logistic_problem(1)
    with pytest.raises(ValueError, match="graph must have"):
        run_tracking(prob, make_graph("complete", 5), rate=1.0, max_grads=10)
    with pytest.raises(ValueError, match="kind"):
        make_graph("star", 5)
    with pytest.raises(ValueError, match="torus"):
        make_graph("torus", 10)
    with pytest.raises(ValueError, match="eps"):
        gossip.GossipRun(np.zeros(1), np.zeros(1), np.zeros(1)).to_reach(-1.0)


def test_sdp_edge_rates_by_hand_on_a_path():
    # a path 0-1-2 with rates (a, 1 - a): lambda_2 = 1 - sqrt(a^2 + (1-a)^2 - a(1-a)),
    # largest at the symmetric point a = 1/2, where the eigenvalues are 0, 1/2 and 3/2
    rates = gossip.sdp_edge_rates(nx.path_graph(3))
    assert np.allclose(rates, [0.5, 0.5], atol=1e-4)
    chi_1, _ = graph_constants(nx.path_graph(3), rates)
    assert abs(chi_1 - 2.0) < 1e-3


def test_sdp_edge_rates_raise_lambda_2_on_a_bottleneck():
    # two 8-cliques joined by one edge: uniform rates starve the bridge
    graph = nx.barbell_graph(8, 0)
    rates = gossip.sdp_edge_rates(graph)
    assert rates.shape == (graph.number_of_edges(),) and abs(rates.sum() - 1) < 1e-9
    assert rates.min() >= 0.01 / graph.number_of_edges() * (1 - 1e-9)
    uniform, tuned = graph_constants(graph)[0], graph_constants(graph, rates)[0]
    assert tuned < uniform / 4  # chi_1 = 1 / lambda_2 falls several-fold
    bridge = list(graph.edges).index((7, 8))
    assert rates[bridge] == rates.max()


def test_sdp_edge_rates_bad_inputs_and_missing_cvxpy(monkeypatch):
    with pytest.raises(ValueError, match="connected"):
        gossip.sdp_edge_rates(nx.Graph([(0, 1), (2, 3)]))
    with pytest.raises(ValueError, match="floor"):
        gossip.sdp_edge_rates(nx.path_graph(3), floor=1.0)
    monkeypatch.setitem(__import__("sys").modules, "cvxpy", None)
    with pytest.raises(ImportError, match="cvxpy"):
        gossip.sdp_edge_rates(nx.path_graph(3))

"""Graphs, placement and belief dynamics of labkit.security.agents."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from labkit.security import agents as ag


@pytest.fixture(scope="module")
def ba() -> ag.Community:
    return ag.build_community("barabasi_albert", n_agents=120, n_seeds=4, seed=1)


def tiny(trust: list[float], prior: list[float]) -> ag.Community:
    """Two agents joined both ways: trust[0] is 0 -> 1 (1 trusts 0), trust[1] is 1 -> 0."""
    return ag.Community("toy", torch.tensor([[0, 1], [1, 0]]), torch.tensor(trust),
                        torch.tensor([prior]), torch.tensor([[0.2, 0.8]]))


# --- graphs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ag.GRAPH_KINDS)
def test_graphs_have_the_agents_and_a_mean_degree_near_six(kind: str) -> None:
    g = ag.community_graph(kind, n_agents=300, seed=0)
    assert g.number_of_nodes() == 300 and sorted(g.nodes) == list(range(300))
    assert 5.0 < 2 * g.number_of_edges() / 300 < 7.0


def test_preferential_attachment_makes_hubs_and_blocks_keep_edges_inside() -> None:
    degrees = [d for _, d in ag.community_graph("barabasi_albert", n_agents=300).degree]
    ws = [d for _, d in ag.community_graph("watts_strogatz", n_agents=300).degree]
    assert max(degrees) > 3 * max(ws)
    g = ag.community_graph("sbm", n_agents=300, seed=0)
    block = nx.get_node_attributes(g, "block")
    inside = sum(block[u] == block[v] for u, v in g.edges) / g.number_of_edges()
    assert inside > 0.7


def test_community_edges_stay_within_a_seed_and_run_both_ways(ba: ag.Community) -> None:
    src, dst = ba.edge_index
    assert torch.equal(src // 120, dst // 120)
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert all((d, s) in pairs for s, d in pairs)
    assert ba.trust.min() >= 0.5 and ba.trust.max() <= 1.5
    assert ba.prior.min() >= 0 and ba.prior.max() <= 0.1
    assert ba.n_seeds == 4 and ba.n_agents == 120
    # pagerank sums to one per graph
    assert torch.allclose(ba.centrality.sum(1), torch.ones(4), atol=1e-4)


def test_trust_matrix_puts_trust_at_dst_src() -> None:
    com = tiny([0.5, 2.0], [0.0, 0.0])
    dense = com.trust_matrix().to_dense()
    assert torch.equal(dense, torch.tensor([[0.0, 2.0], [0.5, 0.0]]))


def test_betweenness_centrality_ranks_the_hub_of_a_star_first() -> None:
    com = ag.build_community("barabasi_albert", n_agents=30, n_seeds=1,
                             centrality="betweenness")
    g = ag.community_graph("barabasi_albert", n_agents=30, seed=0)
    hub = max(g.degree, key=lambda nd: nd[1])[0]
    assert int(com.centrality[0].argmax()) == hub


def test_negative_trust_and_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="trust must be >= 0"):
        ag.build_community("sbm", n_agents=50, n_seeds=1, trust=(-0.1, 1.0))
    with pytest.raises(ValueError, match="trust must be >= 0"):
        tiny([1.0, -0.5], [0.0, 0.0])
    with pytest.raises(ValueError, match="low <= high"):
        ag.build_community("sbm", n_agents=50, n_seeds=1, trust=(1.0, 0.5))
    with pytest.raises(ValueError, match="kind must be one of"):
        ag.build_community("erdos", n_agents=50, n_seeds=1)
    with pytest.raises(ValueError, match="centrality must be one of"):
        ag.build_community("sbm", n_agents=50, n_seeds=1, centrality="degree")
    with pytest.raises(ValueError, match="prior"):
        ag.build_community("sbm", n_agents=50, n_seeds=1, prior=(0.0, 1.5))
    with pytest.raises(ValueError, match="prior must lie in"):
        tiny([1.0, 1.0], [0.0, 2.0])


# --- placement ---------------------------------------------------------------------------------

def test_central_placement_takes_the_top_centrality(ba: ag.Community) -> None:
    mask = ag.place(ba, 5)
    assert mask.sum(1).tolist() == [5] * 4
    top = ba.centrality.topk(5, dim=1).indices
    assert mask.gather(1, top).all()
    # by hand on the toy: agent 1 is the more central
    assert ag.place(tiny([1.0, 1.0], [0.0, 0.0]), 1).tolist() == [[False, True]]


def test_random_placement_is_seeded_and_respects_exclusions(ba: ag.Community) -> None:
    att = ag.place(ba, 10)
    a = ag.place(ba, 20, how="random", exclude=att, seed=3)
    assert torch.equal(a, ag.place(ba, 20, how="random", exclude=att, seed=3))
    assert not (a & att).any() and a.sum(1).tolist() == [20] * 4
    # everyone left after the exclusions
    rest = ag.place(ba, 110, how="central", exclude=att)
    assert torch.equal(rest, ~att)


def test_more_guardians_than_agents_raise(ba: ag.Community) -> None:
    with pytest.raises(ValueError, match="more agents than the 120 free"):
        ag.place(ba, 121)
    att = ag.place(ba, 10)
    with pytest.raises(ValueError, match="more agents than the 110 free"):
        ag.place(ba, 111, exclude=att)
    with pytest.raises(ValueError, match="how must be one of"):
        ag.place(ba, 3, how="hubs")
    with pytest.raises(ValueError, match="exclude must have shape"):
        ag.place(ba, 3, exclude=torch.zeros(2, 120, dtype=torch.bool))


# --- one round by hand -------------------------------------------------------------------------

def test_belief_step_by_hand() -> None:
    # agent 0 hears agent 1 (t = 1, p = 2, b = 1): pull 2, weight 2, message 1;
    # target (1 * 0.1 + 2) / (1 + 2) = 0.7, belief 0.5 * 0 + 0.5 * 0.7 = 0.35,
    # memory 0.5 * 0.2 + 0.5 * 1 = 0.6.
    # agent 1 hears agent 0 (t = 0.5, p = 1, b = 0): pull 0, weight 0.5, message 0;
    # target 1 / 1.5, belief 0.5 + 1 / 3 = 0.8333, memory 0.5 * 0.4 = 0.2.
    # with rho = 1 agent 0's target is (0.1 + 2 + 0.2) / 4 = 0.575: belief 0.2875
    com = tiny([0.5, 1.0], [0.1, 1.0])
    dyn = ag.Dynamics(rate=0.5, stubbornness=1.0, decay=0.5)
    belief, memory = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.2, 0.2],
                                                                         [0.4, 0.4]])
    prior = torch.tensor([[0.1, 0.1], [1.0, 1.0]])
    speaking = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    b, m = ag.belief_step(belief, memory, prior, com.trust_matrix(), speaking,
                          torch.tensor([0.0, 1.0]), dyn)
    assert torch.allclose(b, torch.tensor([[0.35, 0.2875], [5 / 6, 0.78]]))
    # agent 1 with rho = 1: target (1 + 0 + 0.4) / 2.5 = 0.56, belief 0.78
    assert torch.allclose(b[1, 1], torch.tensor(0.78))
    assert torch.allclose(m, torch.tensor([[0.6, 0.6], [0.2, 0.2]]))


# --- simulation --------------------------------------------------------------------------------

def test_simulate_shapes_and_a_quiet_community_keeps_its_priors(ba: ag.Community) -> None:
    none = torch.zeros(4, 120, dtype=torch.bool)
    out = ag.simulate(ba, [ag.Scenario(none), ag.Scenario(none, memory=2.0)],
                      dynamics=ag.Dynamics(rounds=12, attack_rounds=6))
    assert out.shape == (2, 13, 4)
    assert torch.allclose(out[:, 0], ba.prior.mean(1).expand(2, 4))
    # beliefs are weighted means of priors: they never leave [min prior, max prior]
    assert out.min() >= float(ba.prior.min()) and out.max() <= float(ba.prior.max())


def test_attack_needs_manipulated_knowledge_and_persuasion_adds_to_it(ba: ag.Community) -> None:
    att = ag.place(ba, 6)
    sc = [ag.Scenario(att, persuasiveness=8.0), ag.Scenario(att),
          ag.Scenario(att, persuasiveness=8.0, manipulated=False)]
    end = ag.simulate(ba, sc, dynamics=ag.Dynamics(rounds=20, attack_rounds=20))[:, -1]
    both, knowledge, persuasion = end.mean(1).tolist()
    assert both > knowledge > 0.1 and persuasion <= float(ba.prior.max())


def test_scenarios_run_together_equal_scenarios_run_alone(ba: ag.Community) -> None:
    att = ag.place(ba, 6)
    grd = ag.place(ba, 10, how="random", exclude=att, seed=2)
    a = ag.Scenario(att, persuasiveness=4.0, memory=1.0)
    b = ag.Scenario(att, grd, persuasiveness=2.0)
    dyn = ag.Dynamics(rounds=10, attack_rounds=5)
    both = ag.simulate(ba, [a, b], dynamics=dyn)
    assert torch.allclose(both[0], ag.simulate(ba, [a], dynamics=dyn)[0], atol=1e-6)
    assert torch.allclose(both[1], ag.simulate(ba, [b], dynamics=dyn)[0], atol=1e-6)


def test_guardians_and_fact_checking_hold_beliefs_down(ba: ag.Community) -> None:
    att = ag.place(ba, 6)
    grd = ag.place(ba, 20, exclude=att)
    dyn = ag.Dynamics(rounds=15, attack_rounds=15)
    out = ag.simulate(ba, [ag.Scenario(att, persuasiveness=8.0),
                           ag.Scenario(att, grd, persuasiveness=8.0),
                           ag.Scenario(att, persuasiveness=8.0, fact_check=1.0)], dynamics=dyn)
    free, guarded, checked = out[:, -1].mean(1).tolist()
    assert guarded < free
    # checked every round: every benign agent is back at its prior after each round
    benign = ~att
    expected = (ba.prior * benign).sum(1) / benign.sum(1)
    assert torch.allclose(out[2, 1:], expected.expand(15, 4))


def test_memory_keeps_the_spread_after_the_attack(ba: ag.Community) -> None:
    att = ag.place(ba, 6)
    dyn = ag.Dynamics(rounds=30, attack_rounds=15)
    out = ag.simulate(ba, [ag.Scenario(att, persuasiveness=8.0),
                           ag.Scenario(att, persuasiveness=8.0, memory=2.0)], dynamics=dyn)
    without, with_memory = out[:, 25].mean(1).tolist()
    assert with_memory > without


def test_bad_scenarios_and_dynamics_raise(ba: ag.Community) -> None:
    att = ag.place(ba, 6)
    with pytest.raises(ValueError, match="both an attacker and a guardian"):
        ag.simulate(ba, [ag.Scenario(att, att)])
    with pytest.raises(ValueError, match="attackers must have shape"):
        ag.simulate(ba, [ag.Scenario(att[:2])])
    with pytest.raises(TypeError, match="attackers must be"):
        ag.simulate(ba, [ag.Scenario(att.float())])
    with pytest.raises(ValueError, match="persuasiveness must be >= 0"):
        ag.simulate(ba, [ag.Scenario(att, persuasiveness=-1.0)])
    with pytest.raises(ValueError, match="fact_check must be in"):
        ag.simulate(ba, [ag.Scenario(att, fact_check=1.5)])
    with pytest.raises(ValueError, match="at least one Scenario"):
        ag.simulate(ba, [])
    with pytest.raises(TypeError, match="Scenario objects"):
        ag.simulate(ba, [att])
    with pytest.raises(ValueError, match="rate must be in"):
        ag.Dynamics(rate=0.0)
    with pytest.raises(ValueError, match="decay must be in"):
        ag.Dynamics(decay=1.0)
    with pytest.raises(ValueError, match="attack_rounds must be in"):
        ag.Dynamics(rounds=5, attack_rounds=6)


def test_figures_have_controls(ba: ag.Community) -> None:
    y = torch.linspace(0, 1, 5)
    curves = {g: {n: {"central": y, "random": y * 0.5} for n in (0, 5)} for g in ("a", "b")}
    fig = ag.spread_figure(curves, attack_rounds=2)
    assert len(fig.data) == 8 and sum(t.visible for t in fig.data) == 2
    assert len(fig.layout.updatemenus[0].buttons) == 2
    assert len(fig.layout.sliders[0].steps) == 2
    bars = ag.outcome_figure({"x": {"a": (0.5, 0.1)}}, title="t", y_title="y")
    assert list(bars.data[0].error_y.array) == [0.1]


def test_flooding_scenarios_names_and_guardian_seats(ba: ag.Community) -> None:
    sc = ag.flooding_scenarios(ba, n_attackers=6, persuasiveness=8.0, memory=2.0,
                               guardians=(0, 5), seed=1)
    assert list(sc) == ["no attack", "central", "random", "persuasiveness only",
                        "knowledge only", "central + memory", "5 central guardians",
                        "5 random guardians"]
    central = sc["central"].attackers
    assert torch.equal(central, ag.place(ba, 6)) and not sc["no attack"].attackers.any()
    assert sc["persuasiveness only"].manipulated is False
    assert sc["knowledge only"].persuasiveness == 1.0 and sc["central + memory"].memory == 2.0
    for how in ("central", "random"):
        grd = sc[f"5 {how} guardians"].guardians
        assert grd.sum(1).tolist() == [5] * 4 and not (grd & central).any()
    with pytest.raises(ValueError, match="n_attackers must be >= 1"):
        ag.flooding_scenarios(ba, n_attackers=0, persuasiveness=1.0, memory=0.0)
    with pytest.raises(ValueError, match="more agents than"):
        ag.flooding_scenarios(ba, n_attackers=6, persuasiveness=1.0, memory=0.0,
                              guardians=(115,))


def test_mean_se_by_hand() -> None:
    # mean 2, sample std 1, standard error 1 / sqrt(3)
    mean, se = ag.mean_se(torch.tensor([1.0, 2.0, 3.0]))
    assert mean == pytest.approx(2.0) and se == pytest.approx(3 ** -0.5)
    assert ag.mean_se(torch.tensor([0.4])) == pytest.approx((0.4, 0.0))
    with pytest.raises(ValueError, match="x must be a 1-D"):
        ag.mean_se(torch.zeros(2, 2))


def test_no_one_placed_and_too_small_graphs() -> None:
    com = tiny([1.0, 1.0], [0.0, 0.0])
    assert not ag.place(com, 0).any()
    with pytest.raises(ValueError, match="n_agents must be >= 10"):
        ag.community_graph("sbm", n_agents=4)

"""labkit.comm.topology: the leaf-spine fabric, the job's flows and the four routing schemes."""

from __future__ import annotations

import pytest

from labkit.comm.topology import (
    SCHEMES,
    Flow,
    build_topology,
    job_flows,
    max_congestion,
    route_flows,
    split_factor,
)


def test_leaf_spine_counts() -> None:
    g = build_topology(n_leaves=3, n_spines=2, hosts_per_leaf=4, capacity=10.0)
    tiers = [d["tier"] for _, d in g.nodes(data=True)]
    assert (tiers.count("host"), tiers.count("leaf"), tiers.count("spine")) == (12, 3, 2)
    assert g.number_of_edges() == 2 * (12 + 3 * 2)
    assert all(d["capacity"] == 10.0 for *_, d in g.edges(data=True))
    assert g.has_edge("h5", "l1") and g.has_edge("l2", "s1") and not g.has_edge("h0", "s0")


def test_sprayed_load_by_hand_on_two_by_two() -> None:
    # 2 leaves, 2 spines, 1 host each: h0 -> h1 of size 1 sprays 1/2 on each spine path
    g = build_topology(n_leaves=2, n_spines=2, hosts_per_leaf=1)
    load = route_flows(g, [Flow(0, 1, 1.0)], scheme="spray")
    assert load["h0", "l0"] == load["l1", "h1"] == 1.0
    for s in ("s0", "s1"):
        assert load["l0", s] == load[s, "l1"] == 0.5
    assert load["l1", "s0"] == load["h1", "l1"] == 0.0
    assert max_congestion(g, load) == 1.0 and max_congestion(g, load, fabric_only=True) == 0.5
    # two flows hashed onto one spine give 2 on that uplink; split gives 1 on each
    two = [Flow(0, 1, 1.0), Flow(0, 1, 1.0)]
    assert max_congestion(g, route_flows(g, two, scheme="split"), fabric_only=True) == 1.0


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("pattern", ["ring", "all_to_all"])
def test_traffic_is_conserved(scheme: str, pattern: str) -> None:
    g = build_topology(n_leaves=4, n_spines=3, hosts_per_leaf=2)
    flows = job_flows(pattern, n_leaves=4, hosts_per_leaf=2, seed=1)
    load = route_flows(g, flows, scheme=scheme, seed=2)
    hops = sum(f.size * (2 if f.src // 2 == f.dst // 2 else 4) for f in flows)
    assert sum(load.values()) == pytest.approx(hops)
    # every spine forwards what it receives
    for s in range(3):
        assert sum(load[f"l{j}", f"s{s}"] for j in range(4)) == pytest.approx(sum(load[f"s{s}", f"l{j}"] for j in range(4)))


def test_split_reaches_the_sprayed_optimum_and_ecmp_does_not() -> None:
    g = build_topology(n_leaves=6, n_spines=4, hosts_per_leaf=6)
    worse = 0
    for seed in range(20):
        flows = job_flows("ring", n_leaves=6, hosts_per_leaf=6, seed=seed)
        spray = max_congestion(g, route_flows(g, flows, scheme="spray"))
        assert max_congestion(g, route_flows(g, flows, scheme="split")) == pytest.approx(spray)
        worse += max_congestion(g, route_flows(g, flows, scheme="ecmp", seed=seed)) > spray + 1e-9
    assert worse >= 15


def test_split_factor_by_hand() -> None:
    # leaf 0 sends 3 flows: D = 3; with 2 spines each flow splits in 2, with 3 spines not at all
    cross = [(0, 1, 1.0), (0, 2, 1.0), (0, 1, 1.0)]
    assert split_factor(cross, 2) == 2 and split_factor(cross, 3) == 1 and split_factor([], 4) == 1


def test_job_flows_counts() -> None:
    assert len(job_flows("ring", n_leaves=2, hosts_per_leaf=3)) == 6
    assert len(job_flows("all_to_all", n_leaves=2, hosts_per_leaf=3)) == 30
    ring = job_flows("ring", n_leaves=2, hosts_per_leaf=3, seed=0)
    assert sorted(f.src for f in ring) == sorted(f.dst for f in ring) == list(range(6))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown topology kind"):
        build_topology("torus", n_leaves=2, n_spines=2, hosts_per_leaf=1)
    with pytest.raises(ValueError, match="n_spines must be >= 1"):
        build_topology(n_leaves=2, n_spines=0, hosts_per_leaf=1)
    with pytest.raises(TypeError, match="n_leaves must be an int"):
        build_topology(n_leaves=2.0, n_spines=1, hosts_per_leaf=1)
    with pytest.raises(ValueError, match="capacity"):
        build_topology(n_leaves=2, n_spines=1, hosts_per_leaf=1, capacity=0)
    with pytest.raises(ValueError, match="unknown pattern"):
        job_flows("tree", n_leaves=2, hosts_per_leaf=1)
    with pytest.raises(ValueError, match="size must be"):
        job_flows("ring", n_leaves=2, hosts_per_leaf=1, size=-1.0)
    g = build_topology(n_leaves=2, n_spines=2, hosts_per_leaf=1)
    with pytest.raises(ValueError, match="unknown scheme"):
        route_flows(g, [], scheme="valiant")
    with pytest.raises(ValueError, match="rates\\) must be >= 0"):
        route_flows(g, [Flow(0, 1, -1.0)], scheme="spray")
    with pytest.raises(ValueError, match="distinct hosts"):
        route_flows(g, [Flow(0, 7, 1.0)], scheme="spray")
    with pytest.raises(ValueError, match="equal size"):
        route_flows(g, [Flow(0, 1, 1.0), Flow(0, 1, 2.0)], scheme="split")
    with pytest.raises(TypeError, match="build_topology"):
        route_flows(object(), [], scheme="spray")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="link loads must be >= 0"):
        max_congestion(g, {("l0", "s0"): -1.0})
    with pytest.raises(ValueError, match="lacks"):
        max_congestion(g, {("h0", "s0"): 1.0})

"""A leaf-spine fabric, the flows of a training job on it, and four ways to route them.

Paper: "Challenging the Need for Packet Spraying in Large-Scale Distributed Training" (2024).

Intuition. A collective starts all its flows at once and they have (nearly) the same size. In a
leaf-spine fabric every path between two leaves crosses exactly one spine, so routing a flow is
choosing a spine. ECMP hashes each flow onto one spine at random; when two big flows hash onto
the same uplink, that link carries twice its share and the whole collective waits for it.
Packet spraying splits every flow evenly over all spines: the fluid optimum. The paper's point
is that spraying is not needed: split each flow at the application into a few sub-flows and
place them deterministically, and the maximum link load equals the sprayed one. Here the
placement is an edge colouring of the leaf-to-leaf demand multigraph (Konig's theorem: a
bipartite multigraph of maximum degree D has a proper colouring with D colours); colour c goes
to spine c mod S, and each flow is split into ``k = S / gcd(D, S)`` sub-flows so that ``D k``
colours share out evenly over S spines.

What the miniature leaves out: time (loads are fluid, per collective), queues and packet
reordering, failures and asymmetric fabrics, flows of unequal size for the splitting scheme,
and more than two tiers.

Shapes and letters: L leaves, S spines, H hosts per leaf, N = L H hosts, F flows. Nodes are
named ``h<i>`` (host), ``l<j>`` (leaf), ``s<k>`` (spine); host i hangs off leaf i // H. A load
is a dict ``(u, v) -> traffic`` over the directed links, in the unit of the flow sizes.

Section: chapter 11, "Packet spraying or a single path?".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..validation import check_int

__all__ = ["Flow", "SCHEMES", "TOPOLOGIES", "build_topology", "job_flows", "max_congestion", "route_flows", "split_factor"]

TOPOLOGIES: tuple[str, ...] = ("leaf_spine",)
SCHEMES: tuple[str, ...] = ("ecmp", "spray", "split", "greedy")
PATTERNS: tuple[str, ...] = ("ring", "all_to_all")


@dataclass(frozen=True)
class Flow:
    """One flow of a collective: ``size`` units from host ``src`` to host ``dst``."""

    src: int
    dst: int
    size: float



def build_topology(kind: str = "leaf_spine", *, n_leaves: int, n_spines: int, hosts_per_leaf: int,
                   capacity: float = 1.0) -> nx.DiGraph:
    """Build a two-tier fabric as a directed graph, every link in both directions.

    Args:
        kind: ``"leaf_spine"`` (the only kind: every leaf linked to every spine).
        n_leaves: L >= 1 leaf (top-of-rack) switches.
        n_spines: S >= 1 spine switches.
        hosts_per_leaf: H >= 1 hosts under each leaf.
        capacity: the capacity of every link (> 0), stored as the edge attribute ``capacity``.

    Returns:
        A ``networkx.DiGraph`` with N + L + S nodes (attribute ``tier``: host/leaf/spine) and
        2 (N + L S) directed links. Graph attributes ``n_leaves``, ``n_spines``, ``hosts_per_leaf``.
    """
    if kind not in TOPOLOGIES:
        raise ValueError(f"unknown topology kind {kind!r}; expected one of {TOPOLOGIES}")
    n_leaves = check_int("n_leaves", n_leaves, 1)
    n_spines = check_int("n_spines", n_spines, 1)
    hosts_per_leaf = check_int("hosts_per_leaf", hosts_per_leaf, 1)
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not capacity > 0:
        raise ValueError(f"capacity must be a number > 0, got {capacity!r}")
    g = nx.DiGraph(n_leaves=n_leaves, n_spines=n_spines, hosts_per_leaf=hosts_per_leaf)
    for j in range(n_leaves):
        g.add_node(f"l{j}", tier="leaf")
        for k in range(n_spines):
            g.add_node(f"s{k}", tier="spine")
            g.add_edge(f"l{j}", f"s{k}", capacity=float(capacity))
            g.add_edge(f"s{k}", f"l{j}", capacity=float(capacity))
        for i in range(j * hosts_per_leaf, (j + 1) * hosts_per_leaf):
            g.add_node(f"h{i}", tier="host")
            g.add_edge(f"h{i}", f"l{j}", capacity=float(capacity))
            g.add_edge(f"l{j}", f"h{i}", capacity=float(capacity))
    return g


def job_flows(pattern: str, *, n_leaves: int, hosts_per_leaf: int, size: float = 1.0,
              seed: int | None = None) -> list[Flow]:
    """The flows of one collective of a training job, one rank per host.

    Args:
        pattern: ``"ring"``: the ring of a ring all-reduce, rank r sends to rank r + 1; ranks are
            placed on hosts by a random permutation (``seed``; host order when ``None``), as a
            scheduler would place them, so neighbours often sit under different leaves.
            ``"all_to_all"``: every host sends to every other host (expert parallelism).
        n_leaves, hosts_per_leaf: L and H of the fabric.
        size: the size of every flow (> 0): collective flows are near-equal (observation ii).
        seed: seed of the rank placement (ring only).

    Returns:
        F flows: N for the ring, N (N - 1) for all-to-all.
    """
    n = check_int("n_leaves", n_leaves, 1) * check_int("hosts_per_leaf", hosts_per_leaf, 1)
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"size must be a number > 0, got {size!r}")
    if n < 2:
        raise ValueError(f"a job needs at least 2 hosts, got n_leaves * hosts_per_leaf = {n}")
    if pattern == "ring":
        order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
        return [Flow(int(order[r]), int(order[(r + 1) % n]), float(size)) for r in range(n)]
    if pattern == "all_to_all":
        return [Flow(a, b, float(size)) for a in range(n) for b in range(n) if a != b]
    raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


def _leaf_of(topo: nx.DiGraph, host: int) -> int:
    return host // topo.graph["hosts_per_leaf"]


def _check_flows(topo: nx.DiGraph, flows: Sequence[Flow]) -> None:
    n = topo.graph["n_leaves"] * topo.graph["hosts_per_leaf"]
    for f in flows:
        if not isinstance(f, Flow):
            raise TypeError(f"flows must hold Flow objects, got {type(f).__name__}")
        if not (0 <= f.src < n and 0 <= f.dst < n) or f.src == f.dst:
            raise ValueError(f"flow {f} needs two distinct hosts in [0, {n})")
        if not f.size >= 0:
            raise ValueError(f"flow sizes (rates) must be >= 0, got {f.size} in {f}")


def _edge_coloring(edges: list[tuple[int, int]], n_colors: int) -> list[int]:
    """Properly colour a bipartite multigraph (left u, right v) with
    ``n_colors`` >= its max degree.

    Konig's alternating-path argument: take a colour a free at u and b free
    at v; if a is busy at v, swap a and b along the a/b path from v (it cannot
    reach u in a bipartite graph) and use a.
    """
    # (side, node) -> colour -> edge id
    at: dict[tuple[str, int], dict[int, int]] = {}
    colour = [-1] * len(edges)

    def free(node: tuple[str, int]) -> int:
        used = at.setdefault(node, {})
        return next(c for c in range(n_colors) if c not in used)

    for e, (u, v) in enumerate(edges):
        left, right = ("L", u), ("R", v)
        a, b = free(left), free(right)
        if a in at[right]:
            path, node, c = [], right, a  # the alternating a/b path starting at v
            while c in at.setdefault(node, {}):
                edge = at[node][c]
                path.append(edge)
                eu, ev = edges[edge]
                node = ("L", eu) if node[0] == "R" else ("R", ev)
                c = b if c == a else a
            for edge in path:  # swap a <-> b on the path
                eu, ev = edges[edge]
                del at[("L", eu)][colour[edge]], at[("R", ev)][colour[edge]]
            for edge in path:
                colour[edge] = b if colour[edge] == a else a
                eu, ev = edges[edge]
                at[("L", eu)][colour[edge]] = at[("R", ev)][colour[edge]] = edge
        colour[e] = a
        at[left][a] = at[right][a] = e
    return colour


def route_flows(topo: nx.DiGraph, flows: Sequence[Flow], *, scheme: str,
                seed: int | None = None) -> dict[tuple[str, str], float]:
    """Route every flow over the fabric and return the traffic on each directed link.

    Args:
        topo: a fabric from :func:`build_topology`.
        flows: the job's flows (sizes >= 0).
        scheme: how a flow between two leaves picks its spine(s):
            ``"ecmp"``: one spine per flow, hashed uniformly at random (``seed``);
            ``"spray"``: 1/S of the flow on every spine (ideal packet spraying, the fluid optimum);
            ``"split"``: single-path sub-flows, each flow split into ``k = S / gcd(D, S)`` equal
            parts placed by an edge colouring of the leaf-to-leaf multigraph (D its max degree);
            needs equal flow sizes; provably reaches the sprayed maximum load (the paper's theorem);
            ``"greedy"``: one spine per flow, no splitting, the spine whose busier of uplink and
            downlink is least loaded so far (a central planner, as in C4's traffic planning).
        seed: seed of the ECMP hash.

    Returns:
        ``(u, v) -> traffic`` for every directed link of ``topo`` (zero where nothing flows).
        Flows under one leaf use host->leaf->host; the rest host->leaf->spine->leaf->host.
    """
    if not isinstance(topo, nx.DiGraph) or "n_spines" not in topo.graph:
        raise TypeError("topo must be a fabric built by build_topology")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    _check_flows(topo, flows)
    n_spines = topo.graph["n_spines"]
    load = {edge: 0.0 for edge in topo.edges}
    cross: list[tuple[int, int, float]] = []  # (src leaf, dst leaf, size) of flows crossing spines
    for f in flows:
        a, b = _leaf_of(topo, f.src), _leaf_of(topo, f.dst)
        load[f"h{f.src}", f"l{a}"] += f.size
        load[f"l{b}", f"h{f.dst}"] += f.size
        if a != b:
            cross.append((a, b, f.size))

    def put(a: int, b: int, spine: int, amount: float) -> None:
        load[f"l{a}", f"s{spine}"] += amount
        load[f"s{spine}", f"l{b}"] += amount

    if scheme == "ecmp":
        spines = np.random.default_rng(seed).integers(0, n_spines, size=len(cross))
        for (a, b, size), s in zip(cross, spines):
            put(a, b, int(s), size)
    elif scheme == "spray":
        for a, b, size in cross:
            for s in range(n_spines):
                put(a, b, s, size / n_spines)
    elif scheme == "greedy":
        for a, b, size in sorted(cross, key=lambda c: -c[2]):  # biggest first
            s = min(range(n_spines), key=lambda k: (max(load[f"l{a}", f"s{k}"], load[f"s{k}", f"l{b}"]), k))
            put(a, b, s, size)
    elif cross:  # split
        if len({size for _, _, size in cross}) > 1:
            raise ValueError("scheme='split' needs flows of equal size "
                             "(the paper's observation ii)")
        # show: start split
        k = split_factor(cross, n_spines)  # k = S / gcd(D, S) sub-flows per flow
        sub = [(a, b) for a, b, _ in cross for _ in range(k)]  # D k per port
        degree = max(max(np.bincount([a for a, _ in sub])),
                     max(np.bincount([b for _, b in sub])))
        # Konig: D k colours, no two sub-flows of one colour at a leaf port
        colours = _edge_coloring(sub, int(degree))
        for (a, b), c in zip(sub, colours):
            # colour c -> spine c mod S: each port gets D k / S per spine
            put(a, b, c % n_spines, cross[0][2] / k)
        # show: end split
    return load


def split_factor(cross: Sequence[tuple[int, int, float]], n_spines: int) -> int:
    """Sub-flows per flow for ``scheme="split"``: ``S / gcd(D, S)``, D = max flows in or out of a leaf.

    With D k sub-flows at the busiest leaf port and D k divisible by S, a colouring with D k
    colours hands every spine exactly D k / S of them: load D / S, the sprayed optimum.
    """
    n_spines = check_int("n_spines", n_spines, 1)
    if not cross:
        return 1
    out_deg = np.bincount([c[0] for c in cross])
    in_deg = np.bincount([c[1] for c in cross])
    degree = int(max(out_deg.max(), in_deg.max()))
    return n_spines // math.gcd(degree, n_spines)


def max_congestion(topo: nx.DiGraph, load: dict[tuple[str, str], float], *, fabric_only: bool = False) -> float:
    """The maximum over links of load / capacity: what sets a collective's completion time.

    Args:
        topo: the fabric the load was routed on.
        load: ``(u, v) -> traffic`` from :func:`route_flows`.
        fabric_only: only the leaf-spine links (the host links carry the same load in every scheme).
    """
    if not isinstance(load, dict):
        raise TypeError(f"load must be a dict (u, v) -> traffic, got {type(load).__name__}")
    worst = 0.0
    for (u, v), traffic in load.items():
        if not topo.has_edge(u, v):
            raise ValueError(f"load names a link {u}->{v} that the topology lacks")
        if traffic < 0:
            raise ValueError(f"link loads must be >= 0, got {traffic} on {u}->{v}")
        if fabric_only and (u.startswith("h") or v.startswith("h")):
            continue
        worst = max(worst, traffic / topo.edges[u, v]["capacity"])
    return worst

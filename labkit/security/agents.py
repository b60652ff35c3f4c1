"""Manipulated knowledge spreading through a community of agents: opinion dynamics on a graph.

Paper: "Flooding Spread of Manipulated Knowledge in LLM-Based Multi-Agent Communities" (Ju et
al., 2024, arXiv 2407.07791). LLM agents chat on a trusted platform; an attacker edits one agent
in two stages, *persuasiveness injection* (the agent learns to argue convincingly, its knowledge
intact) then *manipulated knowledge injection* (it now holds a counterfactual), and benign agents
that talk to it take up the falsehood, pass it on, and keep it in retrieval-augmented memories
after the conversation ends. Guardian agents and fact-checking are the defences it proposes.

The miniature replaces every LLM by a number: the belief b_i ∈ [0, 1] of agent i in one
counterfactual claim (0: the truth, 1: the manipulated version). Each round an agent hears what
its neighbours believe, each weighted by the trust t_ij it places in neighbour j times j's
persuasiveness p_j, mixes in its own prior b⁰_i (its world knowledge, weight s) and, with a
retrieval memory, the messages it stored (weight ρ):

    m_i = Σ_j t_ij p_j b_j / Σ_j t_ij p_j                       (what i hears)
    b_i ← (1 - λ) b_i + λ (s b⁰_i + P_i m_i + ρ r_i) / (s + P_i + ρ),   P_i = Σ_j t_ij p_j
    r_i ← δ r_i + (1 - δ) m_i                                   (the memory, decay δ)

Attackers are fixed points: b = 1 once their knowledge is manipulated (else their prior),
persuasiveness p > 1 once injected (else 1), silent after the attack. Guardians are fixed at
b = 0 and never update; fact-checking resets an agent's belief and memory to its prior with
probability q per round. What it leaves out: language, the content of the knowledge, and whether
an LLM is persuadable at all; it shows what topology, placement and trust decide.

Shapes: S seeds (one graph each), N agents, C scenarios run together, T rounds.
Section: chapter 15, "Flooding of manipulated knowledge".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch

from labkit.graphs.edges import to_csr
from labkit.validation import check_int, check_real, check_tensor

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["CENTRALITIES", "GRAPH_KINDS", "Community", "Dynamics", "Scenario", "belief_step",
           "build_community", "community_graph", "flooding_scenarios", "mean_se",
           "outcome_figure", "place", "simulate", "spread_figure"]

GRAPH_KINDS: tuple[str, ...] = ("watts_strogatz", "barabasi_albert", "sbm")
CENTRALITIES: tuple[str, ...] = ("pagerank", "betweenness")
_DEGREE = 6  # mean degree of every graph kind
_BLOCKS = 5  # communities of the stochastic block model


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _check_range(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, got {type(value).__name__}")
    low, high = (check_real(name, v) for v in value)
    if low < 0:
        raise ValueError(f"{name} must be >= 0 (a negative {name} is not defined), got {value}")
    if high < low:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return low, high


def community_graph(kind: str, *, n_agents: int = 500, seed: int = 0) -> nx.Graph:
    """One graph of ``n_agents`` agents of mean degree about 6, by networkx's generators.

    ``watts_strogatz``: a ring lattice of degree 6 with 10 % of the edges rewired (small world);
    ``barabasi_albert``: preferential attachment, 3 edges per new agent (hubs);
    ``sbm``: five equal communities, about 5 neighbours inside and 1 outside.
    """
    _check_choice("kind", kind, GRAPH_KINDS)
    n = check_int("n_agents", n_agents, 2 * _BLOCKS)
    if kind == "watts_strogatz":
        return nx.connected_watts_strogatz_graph(n, _DEGREE, 0.1, seed=seed)
    if kind == "barabasi_albert":
        return nx.barabasi_albert_graph(n, _DEGREE // 2, seed=seed)
    sizes = [n // _BLOCKS + (b < n % _BLOCKS) for b in range(_BLOCKS)]
    p_in, p_out = (_DEGREE - 1) / (n / _BLOCKS - 1), 1 / (n - n / _BLOCKS)
    probs = [[p_in if a == b else p_out for b in range(_BLOCKS)] for a in range(_BLOCKS)]
    return nx.stochastic_block_model(sizes, probs, seed=seed)


@dataclass(frozen=True)
class Community:
    """``S`` communities of ``N`` agents, one per seed, as one block-diagonal graph.

    Agent ``i`` of seed ``s`` has the global index ``a = s * N + i``; edges never cross seeds.

    Attributes:
        kind: the graph generator (one of :data:`GRAPH_KINDS`).
        edge_index: (2, M) int64 ``(src, dst)`` global indices, both directions of every edge.
        trust: (M,) ≥ 0, how much ``dst`` trusts what ``src`` says.
        prior: (S, N) each agent's own belief in the claim before any message, in [0, 1].
        centrality: (S, N) the centrality that placement by ``"central"`` ranks by.
    """

    kind: str
    edge_index: torch.Tensor
    trust: torch.Tensor
    prior: torch.Tensor
    centrality: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("edge_index", self.edge_index, dims=2, dtype=torch.int64, shape="(2, M)")
        check_tensor("trust", self.trust, dims=1, dtype="float", shape="(M,)")
        check_tensor("prior", self.prior, dims=2, dtype="float", shape="(S, N)")
        check_tensor("centrality", self.centrality, dims=2, dtype="float", shape="(S, N)")
        n_all = self.prior.numel()
        if self.edge_index.shape[0] != 2 or self.trust.shape[0] != self.edge_index.shape[1]:
            raise ValueError(f"edge_index (2, M) and trust (M,) disagree: "
                             f"{tuple(self.edge_index.shape)}, {tuple(self.trust.shape)}")
        if self.centrality.shape != self.prior.shape:
            raise ValueError(f"prior and centrality must both be (S, N), got "
                             f"{tuple(self.prior.shape)}, {tuple(self.centrality.shape)}")
        if self.edge_index.numel() and (int(self.edge_index.min()) < 0
                                        or int(self.edge_index.max()) >= n_all):
            raise ValueError(f"edge_index must hold agent indices in [0, {n_all - 1}]")
        if bool((self.trust < 0).any()):
            raise ValueError(f"trust must be >= 0 on every edge (negative trust is not "
                             f"defined), got a minimum of {float(self.trust.min()):.3g}")
        if bool((self.prior < 0).any() or (self.prior > 1).any()):
            raise ValueError("prior must lie in [0, 1] (a belief)")

    @property
    def n_seeds(self) -> int:
        return self.prior.shape[0]

    @property
    def n_agents(self) -> int:
        return self.prior.shape[1]

    def trust_matrix(self) -> torch.Tensor:
        """(S·N, S·N) sparse CSR matrix ``T[dst, src] = trust``: ``T @ x`` is what each hears."""
        return to_csr(self.edge_index, self.prior.numel(), self.trust)


def build_community(kind: str, *, n_agents: int = 500, n_seeds: int = 50, seed: int = 0,
                    centrality: str = "pagerank", trust: tuple[float, float] = (0.5, 1.5),
                    prior: tuple[float, float] = (0.0, 0.1)) -> Community:
    """``n_seeds`` graphs of one kind, with trust on every edge and a prior per agent.

    Graph ``s`` comes from seed ``seed + s``; trust is uniform in ``trust`` per directed edge,
    the prior uniform in ``prior`` per agent.

    Raises:
        ValueError: an unknown kind or centrality, a negative trust or prior bound.
    """
    _check_choice("centrality", centrality, CENTRALITIES)
    check_int("n_seeds", n_seeds, 1)
    t_low, t_high = _check_range("trust", trust)
    p_low, p_high = _check_range("prior", prior)
    if p_high > 1:
        raise ValueError(f"prior must lie within [0, 1], got {prior}")
    gen = torch.Generator().manual_seed(seed)
    edges, cent = [], []
    for s in range(n_seeds):
        g = community_graph(kind, n_agents=n_agents, seed=seed + s)
        e = torch.tensor(list(g.edges()), dtype=torch.int64).reshape(-1, 2).T  # (2, M_s / 2)
        edges.append(torch.cat([e, e.flip(0)], 1) + s * n_agents)  # both directions
        score = (nx.pagerank(g) if centrality == "pagerank"
                 else nx.betweenness_centrality(g))
        cent.append(torch.tensor([score[i] for i in range(n_agents)], dtype=torch.float32))
    edge_index = torch.cat(edges, 1)
    t = t_low + (t_high - t_low) * torch.rand(edge_index.shape[1], generator=gen)
    b0 = p_low + (p_high - p_low) * torch.rand(n_seeds, n_agents, generator=gen)
    return Community(kind, edge_index, t, b0, torch.stack(cent))


def place(community: Community, n: int, *, how: str = "central",
          exclude: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Pick ``n`` agents per seed: the most central ones, or ``n`` at random.

    Args:
        community: the communities to place into.
        n: how many agents per seed.
        how: ``"central"`` (highest ``community.centrality``) or ``"random"``.
        exclude: (S, N) bool, agents that may not be picked (e.g. the attackers, when placing
            guardians).
        seed: for ``"random"``.

    Returns:
        (S, N) bool mask with ``n`` agents set per seed.

    Raises:
        ValueError: ``n`` exceeds the agents left to pick from, or an unknown ``how``.
    """
    _check_choice("how", how, ("central", "random"))
    s, n_agents = community.prior.shape
    taken = torch.zeros(s, n_agents, dtype=torch.bool)
    if exclude is not None:
        taken = check_tensor("exclude", exclude, dims=2, dtype=torch.bool, shape="(S, N)")
        if taken.shape != (s, n_agents):
            raise ValueError(f"exclude must have shape {(s, n_agents)}, got {tuple(taken.shape)}")
    free = n_agents - int(taken.sum(1).max())
    check_int("n", n, 0)
    if n > free:
        raise ValueError(f"n = {n} is more agents than the {free} free ones of a community of "
                         f"{n_agents} (after {n_agents - free} excluded)")
    if how == "central":
        score = community.centrality.clone()
    else:
        score = torch.rand(s, n_agents, generator=torch.Generator().manual_seed(seed))
    score[taken] = -torch.inf
    mask = torch.zeros(s, n_agents, dtype=torch.bool)
    mask.scatter_(1, score.topk(n, dim=1).indices, True)
    return mask


@dataclass(frozen=True)
class Dynamics:
    """The knobs shared by every scenario of one run.

    Attributes:
        rate: λ, how far an agent moves toward what it hears per round, in (0, 1].
        stubbornness: s ≥ 0, the weight of an agent's own prior against its neighbours.
        decay: δ ∈ [0, 1), how slowly the memory forgets (the share kept per round).
        rounds: T, the rounds simulated.
        attack_rounds: the attackers speak in rounds ``[0, attack_rounds)``, then go silent.
    """

    rate: float = 0.5
    stubbornness: float = 1.0
    decay: float = 0.9
    rounds: int = 60
    attack_rounds: int = 30

    def __post_init__(self) -> None:
        if not 0 < check_real("rate", self.rate) <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        check_real("stubbornness", self.stubbornness, 0)
        if not 0 <= check_real("decay", self.decay) < 1:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        check_int("rounds", self.rounds, 1)
        check_int("attack_rounds", self.attack_rounds, 0, self.rounds)


@dataclass(frozen=True)
class Scenario:
    """One condition: who attacks, how, who guards, which defences run.

    Attributes:
        attackers: (S, N) bool, the edited agents.
        guardians: (S, N) bool or None, agents fixed at b = 0 that never update.
        persuasiveness: p of the attackers (1: no persuasiveness injection).
        manipulated: whether the attackers hold the counterfactual (b = 1) or their prior.
        memory: ρ ≥ 0, the weight of each agent's retrieval memory (0: no memory).
        fact_check: q ∈ [0, 1], the chance per round that an agent is reset to its prior.
    """

    attackers: torch.Tensor
    guardians: torch.Tensor | None = None
    persuasiveness: float = 1.0
    manipulated: bool = True
    memory: float = 0.0
    fact_check: float = 0.0


def _check_scenario(sc: Scenario, shape: tuple[int, int]) -> None:
    if not isinstance(sc, Scenario):
        raise TypeError(f"scenarios must hold Scenario objects, got {type(sc).__name__}")
    for name, mask in (("attackers", sc.attackers), ("guardians", sc.guardians)):
        if mask is None:
            continue
        check_tensor(name, mask, dims=2, dtype=torch.bool, shape="(S, N)")
        if tuple(mask.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
    if sc.guardians is not None and bool((sc.attackers & sc.guardians).any()):
        raise ValueError("an agent cannot be both an attacker and a guardian")
    check_real("persuasiveness", sc.persuasiveness, 0)
    check_real("memory", sc.memory, 0)
    if not 0 <= check_real("fact_check", sc.fact_check) <= 1:
        raise ValueError(f"fact_check must be in [0, 1], got {sc.fact_check}")


# show: start belief-step
def belief_step(belief: torch.Tensor, memory: torch.Tensor,
                prior: torch.Tensor, trust: torch.Tensor,
                speaking: torch.Tensor, rho: torch.Tensor,
                dyn: Dynamics) -> tuple[torch.Tensor, torch.Tensor]:
    """One round for every agent of every seed and scenario at once.

    Shapes: belief, memory, prior, speaking (A, C) with A = S·N;
    trust (A, A) sparse, ``trust[i, j]`` = t_ij; rho (C,). ``speaking``
    is p_j this round (0: silent). Returns the new (belief, memory)
    before attackers and guardians are pinned again.
    """
    c = belief.shape[1]
    # one sparse product: Σ_j t_ij p_j b_j and P_i = Σ_j t_ij p_j
    heard = trust @ torch.cat([speaking * belief, speaking], 1)  # (A, 2C)
    pull, weight = heard[:, :c], heard[:, c:]
    # m_i, what agent i hears (its memory when no one speaks to it)
    message = torch.where(weight > 0, pull / weight.clamp_min(1e-12),
                          memory)
    # the target mixes the prior (s), the neighbours (P_i), the memory (ρ)
    s = dyn.stubbornness
    target = (s * prior + pull + rho * memory) / (s + weight + rho)
    belief = (1 - dyn.rate) * belief + dyn.rate * target
    # the memory stores what was heard; older messages decay by δ a round
    memory = dyn.decay * memory + (1 - dyn.decay) * message
    return belief, memory
# show: end belief-step


def simulate(community: Community, scenarios: Sequence[Scenario], *,
             dynamics: Dynamics | None = None, seed: int = 0) -> torch.Tensor:
    """Run every scenario on every seed's community; return the benign agents' mean belief.

    Benign agents start at their prior, with that prior as their memory. Attackers hold b = 1
    (``manipulated``) or their prior and speak with ``persuasiveness`` during the attack rounds,
    then fall silent; guardians hold b = 0 and speak with persuasiveness 1 throughout.

    Returns:
        (C, T + 1, S): the mean belief of the agents that are neither attackers nor guardians,
        before round 0 and after each round.

    Raises:
        TypeError, ValueError: a malformed scenario (shapes, overlaps, negative knobs).
    """
    if not isinstance(community, Community):
        raise TypeError(f"community must be a Community, got {type(community).__name__}")
    dyn = Dynamics() if dynamics is None else dynamics
    if not isinstance(dyn, Dynamics):
        raise TypeError(f"dynamics must be a Dynamics, got {type(dyn).__name__}")
    if not scenarios:
        raise ValueError("scenarios must hold at least one Scenario")
    shape = tuple(community.prior.shape)
    for sc in scenarios:
        _check_scenario(sc, shape)
    n_s, n_a, n_c = *shape, len(scenarios)
    no_one = torch.zeros(shape, dtype=torch.bool)
    # the scenarios side by side on a last axis C: (A, C), A = S·N
    att = torch.stack([sc.attackers for sc in scenarios], 2).reshape(-1, n_c)
    grd = torch.stack([no_one if sc.guardians is None else sc.guardians
                       for sc in scenarios], 2).reshape(-1, n_c)
    p_att = torch.tensor([float(sc.persuasiveness) for sc in scenarios])
    manip = torch.tensor([bool(sc.manipulated) for sc in scenarios])
    rho = torch.tensor([float(sc.memory) for sc in scenarios])
    q = torch.tensor([float(sc.fact_check) for sc in scenarios])
    prior = community.prior.reshape(-1, 1).expand(-1, n_c).contiguous()
    fixed = torch.where(att & manip, 1.0, torch.where(grd, 0.0, prior))
    pinned = att | grd
    benign = (~pinned).float().reshape(n_s, n_a, n_c)
    n_benign = benign.sum(1).clamp_min(1)  # (S, C)

    def mean(b: torch.Tensor) -> torch.Tensor:
        return (b.reshape(n_s, n_a, n_c) * benign).sum(1) / n_benign  # (S, C)

    trust = community.trust_matrix()
    gen = torch.Generator().manual_seed(seed)
    belief, memory = torch.where(pinned, fixed, prior), prior.clone()
    out = [mean(belief)]
    for t in range(dyn.rounds):
        p_now = p_att if t < dyn.attack_rounds else torch.zeros_like(p_att)
        speaking = torch.where(att, p_now, 1.0)
        belief, memory = belief_step(belief, memory, prior, trust, speaking, rho, dyn)
        # fact-checking resets an agent to its prior and wipes its memory
        checked = torch.rand(belief.shape, generator=gen) < q
        belief = torch.where(checked, prior, belief)
        memory = torch.where(checked, prior, memory)
        belief = torch.where(pinned, fixed, belief)
        out.append(mean(belief))
    return torch.stack(out).permute(2, 0, 1)  # (C, T + 1, S)


def flooding_scenarios(community: Community, *, n_attackers: int, persuasiveness: float,
                       memory: float, guardians: Sequence[int] = (), seed: int = 0
                       ) -> dict[str, Scenario]:
    """The section's conditions, by name, for one set of communities.

    ``"no attack"``; the two-stage attack from the most central agents (``"central"``) and
    from random ones (``"random"``); each stage alone from the central agents
    (``"persuasiveness only"``: persuasive attackers with intact knowledge, ``"knowledge
    only"``: manipulated knowledge at persuasiveness 1); ``"central + memory"`` (every agent
    with a retrieval memory of weight ``memory``); and for each ``n`` in ``guardians`` (0
    skipped) the central attack against ``n`` central or ``n`` random guardians
    (``"n central guardians"``, ``"n random guardians"``).
    """
    check_int("n_attackers", n_attackers, 1)
    att = {how: place(community, n_attackers, how=how, seed=seed)
           for how in ("central", "random")}
    p = check_real("persuasiveness", persuasiveness, 0)
    central = att["central"]
    out = {"no attack": Scenario(torch.zeros_like(central)),
           "central": Scenario(central, persuasiveness=p),
           "random": Scenario(att["random"], persuasiveness=p),
           "persuasiveness only": Scenario(central, persuasiveness=p, manipulated=False),
           "knowledge only": Scenario(central),
           "central + memory": Scenario(central, persuasiveness=p, memory=memory)}
    for n in guardians:
        for how in ("central", "random") if n else ():
            grd = place(community, n, how=how, exclude=central, seed=seed + 1)
            out[f"{n} {how} guardians"] = Scenario(central, grd, persuasiveness=p)
    return out


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error over seeds of a (S,) tensor (0 error for one seed)."""
    check_tensor("x", x, dims=1, dtype="float", shape="(S,)")
    se = float(x.std() / len(x) ** 0.5) if len(x) > 1 else 0.0
    return float(x.mean()), se


# --- figures ---------------------------------------------------------------------------------

def spread_figure(curves: Mapping[str, Mapping[int, Mapping[str, torch.Tensor]]], *,
                  attack_rounds: int, active: int = 0) -> "go.Figure":
    """Mean belief over rounds; a dropdown picks the graph, a slider the number of guardians.

    Args:
        curves: graph name -> guardians -> trace name -> (T + 1,) mean belief.
        attack_rounds: where the attack ends (a dashed line).
        active: the slider's starting position.
    """
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    fig, index = go.Figure(), []
    for g_name, by_n in curves.items():
        for n_g, traces in by_n.items():
            for t_i, (name, y) in enumerate(traces.items()):
                fig.add_scatter(y=y.tolist(), name=name, mode="lines",
                                line=dict(color=PALETTE[t_i % len(PALETTE)]),
                                visible=False, legendgroup=name)
                index.append((g_name, n_g))
    graphs = list(curves)

    def visible(g: str, n: int) -> list[bool]:
        return [key == (g, n) for key in index]

    def slider(g: str) -> dict:
        steps = [dict(label=str(n), method="restyle", args=[{"visible": visible(g, n)}])
                 for n in curves[g]]
        return dict(active=active, steps=steps, currentvalue=dict(prefix="guardians: "),
                    pad=dict(t=50))

    first = list(curves[graphs[0]])[active]
    for trace, key in zip(fig.data, index):
        trace.visible = key == (graphs[0], first)
    buttons = [dict(label=g, method="update",
                    args=[{"visible": visible(g, list(curves[g])[active])},
                          {"sliders": [slider(g)]}]) for g in graphs]
    fig.add_vline(x=attack_rounds, line_dash="dash", line_color="grey")
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, y=1.2)],
                      sliders=[slider(graphs[0])], yaxis_range=[0, 1])
    return styled(fig, title="Spread of a counterfactual (dropdown: graph; slider: guardians)",
                  x_title="round (attack ends at the dashed line)",
                  y_title="mean belief of benign agents", height=480)


def outcome_figure(values: Mapping[str, Mapping[str, tuple[float, float]]], *,
                   title: str, y_title: str) -> "go.Figure":
    """Grouped bars with error bars: condition -> graph -> (mean, standard error)."""
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    for i, (cond, by_graph) in enumerate(values.items()):
        fig.add_bar(x=list(by_graph), y=[m for m, _ in by_graph.values()], name=cond,
                    error_y=dict(type="data", array=[e for _, e in by_graph.values()]),
                    marker_color=PALETTE[i % len(PALETTE)])
    fig.update_layout(barmode="group")
    return styled(fig, title=title, x_title="graph", y_title=y_title)

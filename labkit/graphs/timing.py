"""Circuit timing: levelised netlists, NLDM tables, static timing analysis and PreRoutGNN.

After "PreRoutGNN for Timing Prediction with Order Preserving Partition: Global Circuit
Pre-training, Local Delay Learning and Attentional Cell Modeling" (Zhong et al.,
arXiv:2403.00012). A netlist is a DAG of cells; each cell's delay and output slew come from
NLDM tables (non-linear delay model), read by bilinear interpolation in input slew x output
load. Static timing analysis (STA) propagates arrival times level by level, takes the latest
fan-in, and compares each endpoint with the clock period: ``slack = required - arrival``.

PreRoutGNN learns that propagation. Its states are updated in topological order, one level at
a time, with a residual local delay (the paper's local delay learning):
``h_v = max_u (h_u + delta_uv)``, where ``delta_uv`` is computed from the driver's state and
the sink cell's context; the context comes from attention over the cell's table entries
(attentional cell modelling). Running the levels chunk by chunk (the order-preserving
partition) keeps only the states that later levels still read, and gives the same result as
the whole run. A graph auto-encoder pre-trained on unlabelled netlists (global circuit
pre-training) adds node embeddings to the inputs. The baseline is a plain GCN.

Shapes: N cells, M wires, S x L table (K = S L entries), F features, D hidden.
Section: chapter 04, "PreRoutGNN".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import networkx as nx
import numpy as np
import torch
from torch import nn

from ..validation import check_int, check_real
from .edges import gcn_norm, message_passing

__all__ = [
    "CircuitAutoencoder",
    "LOAD_AXIS",
    "Netlist",
    "PreRoutGNN",
    "SLEW_AXIS",
    "TimingGCN",
    "TimingGraph",
    "batch_graphs",
    "bilinear",
    "check_axis",
    "check_dag",
    "equal_size_gcn",
    "fit_timing",
    "levelise",
    "n_parameters",
    "predict_arrival",
    "pretrain_autoencoder",
    "random_netlist",
    "slack_r2_by_depth",
    "sta",
    "timing_graph",
    "with_embeddings",
]

SLEW_AXIS = np.array([0.02, 0.1, 0.3, 0.8])  # input slew (ns)
LOAD_AXIS = np.array([0.5, 1.5, 4.0, 10.0])  # output load (fF)


def check_axis(name: str, axis: object) -> np.ndarray:
    """A table axis: 1-D, at least two finite entries, strictly increasing."""
    a = np.asarray(axis, dtype=float)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{name} must be 1-D with >= 2 entries, got shape "
                         f"{a.shape}")
    if not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
        raise ValueError(f"{name} must be strictly increasing, got {a}")
    return a


def bilinear(table: np.ndarray, x_axis: np.ndarray, y_axis: np.ndarray,
             x: float, y: float) -> float:
    """NLDM look-up: bilinear interpolation (and extrapolation) of ``table[i, j]``.

    ``table`` is (S, L) over ``x_axis`` (S,) and ``y_axis`` (L,); outside the axes the
    edge cell's plane is extended, as STA tools do.
    """
    x_axis, y_axis = check_axis("x_axis", x_axis), check_axis("y_axis", y_axis)
    table = np.asarray(table, dtype=float)
    if table.shape != (x_axis.size, y_axis.size):
        raise ValueError(f"table must have shape ({x_axis.size}, {y_axis.size})"
                         f", got {table.shape}")
    i = int(np.clip(np.searchsorted(x_axis, x) - 1, 0, x_axis.size - 2))
    j = int(np.clip(np.searchsorted(y_axis, y) - 1, 0, y_axis.size - 2))
    tx = (x - x_axis[i]) / (x_axis[i + 1] - x_axis[i])
    ty = (y - y_axis[j]) / (y_axis[j + 1] - y_axis[j])
    t = table[i:i + 2, j:j + 2]
    return float((1 - tx) * (1 - ty) * t[0, 0] + tx * (1 - ty) * t[1, 0]
                 + (1 - tx) * ty * t[0, 1] + tx * ty * t[1, 1])


def check_dag(edges: np.ndarray, n: int) -> nx.DiGraph:
    """The netlist as a networkx DiGraph; ``ValueError`` if ``edges`` hold a cycle."""
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(np.asarray(edges).T.tolist())
    if not nx.is_directed_acyclic_graph(g):
        cycle = [int(u) for u, _ in nx.find_cycle(g)]
        raise ValueError(f"edges must form a DAG; cycle through cells {cycle}")
    return g


def levelise(edges: np.ndarray, n: int) -> np.ndarray:
    """Level of each cell: 0 for cells without fan-in, else 1 + the latest fan-in's level.

    Kahn's algorithm by generations (the same sets as networkx's
    ``topological_generations``). Raises ``ValueError`` on a cycle.
    """
    n = check_int("n", n, 1)
    src, dst = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    indeg = np.bincount(dst, minlength=n)
    order = np.argsort(src, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    level = np.full(n, -1)
    frontier, lv = np.nonzero(indeg == 0)[0], 0
    while frontier.size:
        level[frontier] = lv
        out = np.concatenate([dst[order[ptr[u]:ptr[u + 1]]] for u in frontier])
        np.subtract.at(indeg, out, 1)
        frontier = np.unique(out[indeg[out] == 0])
        lv += 1
    if np.any(level < 0):
        raise ValueError(f"edges must form a DAG; {int((level < 0).sum())} "
                         "cells lie on or behind a cycle")
    return level


@dataclass
class Netlist:
    """A DAG of cells.

    ``edges`` (2, M) driver -> sink; ``delay`` and ``slew`` (N, S, L) NLDM tables over
    ``slew_axis`` (S,) x ``load_axis`` (L,) (cells without fan-in are primary inputs: their
    tables are ignored); ``pin_cap`` (N,) each cell's input capacitance; ``wire_cap`` the
    capacitance a net adds per sink.
    """

    n: int
    edges: np.ndarray
    delay: np.ndarray
    slew: np.ndarray
    pin_cap: np.ndarray
    wire_cap: float
    slew_axis: np.ndarray = field(default_factory=lambda: SLEW_AXIS.copy())
    load_axis: np.ndarray = field(default_factory=lambda: LOAD_AXIS.copy())

    def __post_init__(self) -> None:
        self.n = check_int("n", self.n, 1)
        self.slew_axis = check_axis("slew_axis", self.slew_axis)
        self.load_axis = check_axis("load_axis", self.load_axis)
        self.edges = np.asarray(self.edges, dtype=np.int64)
        if self.edges.ndim != 2 or self.edges.shape[0] != 2:
            raise ValueError(f"edges must have shape (2, M), got "
                             f"{self.edges.shape}")
        if self.edges.size and (self.edges.min() < 0
                                or self.edges.max() >= self.n):
            raise ValueError(f"edges must hold cell ids in [0, {self.n})")
        shape = (self.n, self.slew_axis.size, self.load_axis.size)
        for name in ("delay", "slew"):
            t = np.asarray(getattr(self, name), dtype=float)
            if t.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got "
                                 f"{t.shape}")
            setattr(self, name, t)
        self.pin_cap = np.asarray(self.pin_cap, dtype=float)
        if self.pin_cap.shape != (self.n,):
            raise ValueError(f"pin_cap must have shape ({self.n},)")
        self.wire_cap = check_real("wire_cap", self.wire_cap, 0.0)
        check_dag(self.edges, self.n)


def random_netlist(n_levels: int, width: int, *, seed: int = 0,
                   skip: float = 0.3) -> Netlist:
    """Seeded levelised netlist: ``width`` cells per stage, each with 1-3 fan-ins.

    A fan-in comes from the previous stage, or with probability ``skip`` from any earlier
    one. Each cell draws its own delay plane ``a + b slew + c load + d slew load`` and an
    output slew that grows with load; cells nobody reads are the endpoints.
    """
    n_levels = check_int("n_levels", n_levels, 2)
    width = check_int("width", width, 1)
    skip = check_real("skip", skip, 0.0)
    rng = np.random.default_rng(seed)
    n = n_levels * width
    src, dst = [], []
    for lvl in range(1, n_levels):
        for k in range(width):
            for _ in range(int(rng.integers(1, 4))):
                back = 1 if rng.random() > skip else int(rng.integers(1, lvl + 1))
                src.append((lvl - back) * width + int(rng.integers(width)))
                dst.append(lvl * width + k)
    e = np.unique(np.array([src, dst]), axis=1)
    coef = rng.uniform([0.02, 0.2, 0.01, 0.02], [0.06, 0.6, 0.05, 0.1],
                       size=(n, 4))
    s, ld = np.meshgrid(SLEW_AXIS, LOAD_AXIS, indexing="ij")
    c = coef[:, :, None, None]
    delay = c[:, 0] + c[:, 1] * s + c[:, 2] * ld + c[:, 3] * s * ld
    slew = 0.01 + 0.15 * s[None] + 2 * c[:, 2] * ld
    return Netlist(n, e, delay, slew, rng.uniform(0.5, 2.0, n), 0.3)


def sta(net: Netlist, period: float) -> dict[str, np.ndarray]:
    """Static timing analysis: arrival, slew, load, delay, required time and slack per cell.

    A cell's load is its net's wire cap times its fan-out plus the sinks' pin caps; the
    wire's delay is ``0.05 x load``. A cell's delay and output slew are its tables read at
    (worst input slew, load); its arrival is the latest ``arrival_u + wire_u`` over its
    fan-ins plus its delay. Primary inputs arrive at 0 with slew 0.05. Endpoints (no
    fan-out) are required at ``period``; required times propagate backwards by the min.
    """
    period = check_real("period", period, 0.0, strict=True)
    g = check_dag(net.edges, net.n)
    src, dst = net.edges
    fanout = np.bincount(src, minlength=net.n)
    load = net.wire_cap * fanout + np.bincount(
        src, weights=net.pin_cap[dst], minlength=net.n)
    wire = 0.05 * load
    arr, slw, delay = np.zeros(net.n), np.full(net.n, 0.05), np.zeros(net.n)
    order = list(nx.topological_sort(g))
    # show: start sta
    for v in order:                       # drivers before sinks
        preds = list(g.predecessors(v))
        if not preds:
            continue                      # primary input: arrives at 0
        s_in = max(slw[u] for u in preds)  # worst input slew
        delay[v] = bilinear(net.delay[v], net.slew_axis, net.load_axis, s_in,
                            load[v])
        slw[v] = bilinear(net.slew[v], net.slew_axis, net.load_axis, s_in,
                          load[v])
        arr[v] = max(arr[u] + wire[u] for u in preds) + delay[v]
    req = np.full(net.n, float(period))   # endpoints: the clock period
    for v in reversed(order):
        succ = list(g.successors(v))
        if succ:
            req[v] = min(req[w] - delay[w] for w in succ) - wire[v]
    # show: end sta
    return dict(arrival=arr, slew=slw, load=load, delay=delay, wire=wire,
                required=req, slack=req - arr)


@dataclass
class TimingGraph:
    """One netlist (or a batch) as tensors: model inputs, levels and STA targets."""

    x: torch.Tensor          # (N, F) load, pin cap, fan-out, fan-in (scaled)
    tables: torch.Tensor     # (N, K, 2) delay and output-slew entries
    edges: torch.Tensor      # (2, M) int64 driver -> sink
    level: torch.Tensor      # (N,) int64 topological generation
    arrival: torch.Tensor    # (N,) STA arrival time (ns)
    slack: torch.Tensor      # (N,) STA slack (ns)
    endpoint: torch.Tensor   # (N,) bool: has fan-in, no fan-out
    period: float
    axes: torch.Tensor       # (K, 2) slew and log-load of each table entry

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.level.shape[0])


def timing_graph(net: Netlist, period: float = 6.0) -> TimingGraph:
    """STA targets and model inputs of ``net`` (endpoints required at ``period`` ns)."""
    res = sta(net, period)
    src, dst = net.edges
    fanout = np.bincount(src, minlength=net.n)
    fanin = np.bincount(dst, minlength=net.n)
    x = np.stack([res["load"] / 10, net.pin_cap, fanout / 3.0, fanin / 3.0], 1)
    tables = np.stack([net.delay.reshape(net.n, -1),
                       net.slew.reshape(net.n, -1)], -1)
    s, ld = np.meshgrid(net.slew_axis, net.load_axis, indexing="ij")

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float32)

    return TimingGraph(
        f32(x), f32(tables), torch.tensor(net.edges),
        torch.tensor(levelise(net.edges, net.n)), f32(res["arrival"]),
        f32(res["slack"]), torch.tensor((fanout == 0) & (fanin > 0)),
        float(period), f32(np.stack([s.ravel(), np.log(ld.ravel())], 1)))


def batch_graphs(graphs: list[TimingGraph]) -> TimingGraph:
    """Disjoint union of netlists (levels keep their numbers): one forward pass for all."""
    if not graphs:
        raise ValueError("graphs must hold at least one TimingGraph")
    if len({g.period for g in graphs}) != 1:
        raise ValueError("graphs must share one period")
    offsets = np.cumsum([0] + [g.n for g in graphs[:-1]])
    cat = lambda name: torch.cat([getattr(g, name) for g in graphs])  # noqa
    return TimingGraph(
        cat("x"), cat("tables"),
        torch.cat([g.edges + int(o) for g, o in zip(graphs, offsets)], 1),
        cat("level"), cat("arrival"), cat("slack"), cat("endpoint"),
        graphs[0].period, graphs[0].axes)


def with_embeddings(g: TimingGraph, z: torch.Tensor) -> TimingGraph:
    """``g`` with ``z`` (N, E) appended to its node features."""
    if z.dim() != 2 or z.shape[0] != g.n:
        raise ValueError(f"z must have shape ({g.n}, E), got {tuple(z.shape)}")
    return replace(g, x=torch.cat([g.x, z.detach()], 1))


def _scatter(n: int, index: torch.Tensor, src: torch.Tensor, reduce: str,
             fill: float = 0.0) -> torch.Tensor:
    out = torch.full((n, src.shape[1]), fill, dtype=src.dtype)
    idx = index.unsqueeze(1).expand_as(src)
    return out.scatter_reduce(0, idx, src, reduce=reduce, include_self=False)


class PreRoutGNN(nn.Module):
    """Level-by-level propagation with a residual local delay and attention over tables.

    Args:
        in_dim: node features F (4, plus any pre-trained embedding).
        hidden: state width D.
    """

    def __init__(self, in_dim: int = 4, hidden: int = 16) -> None:
        super().__init__()
        in_dim = check_int("in_dim", in_dim, 1)
        hidden = check_int("hidden", hidden, 1)
        self.key = nn.Linear(2, hidden)
        self.value = nn.Linear(2, hidden)
        self.query = nn.Linear(in_dim + hidden, hidden)
        self.delta = nn.Sequential(nn.Linear(2 * hidden + in_dim, hidden),
                                   nn.ReLU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, 1)
        self.hidden = hidden

    def cell(self, g: TimingGraph, v: torch.Tensor,
             h_in: torch.Tensor) -> torch.Tensor:
        """Context of cells ``v``: attention over their K table entries, queried by inputs."""
        # show: start cell_attention
        q = self.query(torch.cat([g.x[v], h_in], 1))         # (n, D)
        k = self.key(g.axes)                                  # (K, D) slew, load
        val = self.value(g.tables[v])                         # (n, K, D)
        att = torch.softmax(q @ k.T / self.hidden ** 0.5, 1)  # (n, K)
        return (att.unsqueeze(2) * val).sum(1)                # (n, D)
        # show: end cell_attention

    def forward(self, g: TimingGraph, *, chunk: int | None = None
                ) -> tuple[torch.Tensor, int]:
        """Predicted (standardised) arrival (N,) and the peak bytes of states held.

        ``chunk`` levels run at a time (the order-preserving partition): a chunk holds the
        states of its own levels plus those of earlier cells that it or a later chunk still
        reads; the rest are dropped. ``None`` runs every level in one chunk.
        """
        n_lv = int(g.level.max()) + 1
        chunk = n_lv if chunk is None else check_int("chunk", chunk, 1)
        src, dst = g.edges
        last_use = torch.full_like(g.level, -1).scatter_reduce(
            0, src, g.level[dst], reduce="amax")          # last level reading v
        pred = torch.zeros(g.n)
        slot = torch.full_like(g.level, -1)               # cell -> row of h
        live = torch.zeros(0, dtype=torch.long)
        live_h = torch.zeros(0, self.hidden)
        peak = 0
        for start in range(0, n_lv, chunk):
            stop = min(start + chunk, n_lv)
            new = torch.nonzero((g.level >= start) & (g.level < stop))[:, 0]
            ids = torch.cat([live, new])
            slot[ids] = torch.arange(ids.numel())
            h = torch.cat([live_h, torch.zeros(new.numel(), self.hidden)])
            peak = max(peak, h.numel() * h.element_size())
            for lv in range(start, stop):
                v = torch.nonzero(g.level == lv)[:, 0]
                if lv == 0:  # primary inputs: their own context only
                    h = h.index_copy(0, slot[v], self.cell(
                        g, v, torch.zeros(v.numel(), self.hidden)))
                    continue
                # show: start level_update
                e = torch.nonzero(g.level[dst] == lv)[:, 0]   # wires into lv
                u, w = src[e], dst[e]
                h_u = h[slot[u]]
                mean_in = _scatter(h.shape[0], slot[w], h_u, "mean")
                c = self.cell(g, w, mean_in[slot[w]])         # sink context
                # local delay learning: a residual step per wire
                msg = h_u + self.delta(torch.cat([h_u, c, g.x[u]], 1))
                # latest fan-in wins, as in STA's max
                agg = _scatter(h.shape[0], slot[w], msg, "amax", -1e9)
                h = h.index_copy(0, slot[v], agg[slot[v]])
                # show: end level_update
            pred[new] = self.out(h[slot[new]])[:, 0]
            keep = last_use[ids] >= stop
            live, live_h = ids[keep], h[keep]
        return pred, peak


def _gcn_inputs(g: TimingGraph) -> torch.Tensor:
    return torch.cat([g.x, g.tables.reshape(g.n, -1)], 1)


class TimingGCN(nn.Module):
    """Plain GCN baseline on the undirected netlist: node features plus the flat tables.

    ``layers`` rounds of ``h = ReLU(W (D^-1/2 (A + I) D^-1/2) h)`` after an input map. With
    ``depth`` the cell's level (divided by 10) is one more input: the depth that
    PreRoutGNN's schedule knows and a few rounds of a GCN cannot see.
    """

    def __init__(self, in_dim: int, hidden: int, layers: int = 2,
                 table_size: int = 16, depth: bool = True) -> None:
        super().__init__()
        in_dim = check_int("in_dim", in_dim, 1)
        hidden = check_int("hidden", hidden, 1)
        layers = check_int("layers", layers, 1)
        self.depth = bool(depth)
        self.inp = nn.Linear(in_dim + 2 * table_size + self.depth, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden)
                                    for _ in range(layers))
        self.out = nn.Linear(hidden, 1)

    def forward(self, g: TimingGraph) -> torch.Tensor:
        """Predicted (standardised) arrival (N,)."""
        ei = torch.cat([g.edges, g.edges.flip(0)], 1)
        ei, w = gcn_norm(ei, g.n, add_self_loops=True)
        x = _gcn_inputs(g)
        if self.depth:
            x = torch.cat([x, g.level[:, None].float() / 10], 1)
        h = torch.relu(self.inp(x))
        for lin in self.layers:
            h = torch.relu(lin(message_passing(h, ei, w)))
        return self.out(h)[:, 0]


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def equal_size_gcn(reference: nn.Module, in_dim: int = 4, *, layers: int = 2,
                   depth: bool = True) -> TimingGCN:
    """The :class:`TimingGCN` whose parameter count is closest to ``reference``'s."""
    target = n_parameters(reference)
    return min((TimingGCN(in_dim, h, layers, depth=depth)
                for h in range(1, 257)),
               key=lambda m: abs(n_parameters(m) - target))


def fit_timing(model: nn.Module, g: TimingGraph, *, steps: int,
               lr: float = 1e-2, seed: int = 0) -> tuple[float, float]:
    """Train ``model`` on ``g``'s standardised arrival times (every cell); Adam, MSE.

    Returns the target's (mean, std), which :func:`predict_arrival` undoes.
    """
    steps = check_int("steps", steps, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    torch.manual_seed(seed)
    mu, sd = float(g.arrival.mean()), float(g.arrival.std())
    y = (g.arrival - mu) / sd
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        out = model(g)
        pred = out[0] if isinstance(out, tuple) else out
        loss = (pred - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mu, sd


def predict_arrival(model: nn.Module, g: TimingGraph,
                    stats: tuple[float, float]) -> torch.Tensor:
    """Arrival times (ns) predicted by a model trained with :func:`fit_timing`."""
    with torch.no_grad():
        out = model(g)
    pred = out[0] if isinstance(out, tuple) else out
    return pred * stats[1] + stats[0]


def slack_r2_by_depth(g: TimingGraph, arrival: torch.Tensor,
                      buckets: list[tuple[int, int]]) -> list[float]:
    """R^2 of endpoint slack (``period - arrival``) within each depth bucket [lo, hi]."""
    from sklearn.metrics import r2_score
    true = g.slack[g.endpoint].numpy()
    pred = (g.period - arrival[g.endpoint]).numpy()
    depth = g.level[g.endpoint].numpy()
    out = []
    for lo, hi in buckets:
        m = (depth >= lo) & (depth <= hi)
        if m.sum() < 2:
            raise ValueError(f"bucket {(lo, hi)} holds {int(m.sum())} endpoints")
        out.append(float(r2_score(true[m], pred[m])))
    return out


class CircuitAutoencoder(nn.Module):
    """Graph auto-encoder for global pre-training: a GCN encodes cells into ``dim`` numbers.

    The decoder rebuilds each cell's features (features and flat tables) from its code and
    scores wires by ``z_u . z_v``; no timing label is used.
    """

    def __init__(self, in_dim: int, dim: int = 4, hidden: int = 16,
                 table_size: int = 16) -> None:
        super().__init__()
        in_dim = check_int("in_dim", in_dim, 1)
        dim = check_int("dim", dim, 1)
        f = in_dim + 2 * table_size
        self.enc = nn.ModuleList([nn.Linear(f, hidden), nn.Linear(hidden, dim)])
        self.dec = nn.Linear(dim, f)

    def encode(self, g: TimingGraph) -> torch.Tensor:
        """Cell codes (N, dim) from two GCN rounds over the undirected netlist."""
        ei = torch.cat([g.edges, g.edges.flip(0)], 1)
        ei, w = gcn_norm(ei, g.n, add_self_loops=True)
        h = _gcn_inputs(g)
        h = torch.relu(self.enc[0](message_passing(h, ei, w)))
        return self.enc[1](message_passing(h, ei, w))

    def loss(self, g: TimingGraph, gen: torch.Generator) -> torch.Tensor:
        """Feature reconstruction MSE plus wire-vs-random-pair cross-entropy."""
        z = self.encode(g)
        feats = _gcn_inputs(g)
        rec = (self.dec(z) - feats).pow(2).mean()
        src, dst = g.edges
        fake = torch.randint(0, g.n, src.shape, generator=gen)
        pos = (z[src] * z[dst]).sum(1)
        neg = (z[src] * z[fake]).sum(1)
        bce = nn.functional.binary_cross_entropy_with_logits
        return rec + bce(pos, torch.ones_like(pos)) + bce(
            neg, torch.zeros_like(neg))


def pretrain_autoencoder(g: TimingGraph, *, dim: int = 4, steps: int = 200,
                         lr: float = 1e-2, seed: int = 0) -> CircuitAutoencoder:
    """Pre-train a :class:`CircuitAutoencoder` on unlabelled netlists ``g`` (a batch)."""
    steps = check_int("steps", steps, 1)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ae = CircuitAutoencoder(g.x.shape[1], dim, table_size=g.tables.shape[1])
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    for _ in range(steps):
        loss = ae.loss(g, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ae

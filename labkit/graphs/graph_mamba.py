"""Graph Mamba: neighbourhood tokens, nodes ordered by degree, a bidirectional selective scan.

After "Graph Mamba: Towards Learning on Graphs with State Space Models" (Behrouz & Hashemi,
arXiv:2402.08678). A message-passing network with k layers sees k hops and no further; a graph
transformer sees every node at a cost of N^2 per layer. Graph Mamba orders the nodes into a
sequence (by degree, ties broken at random) and runs a selective state-space scan over it in
both directions, which reaches every node at a cost linear in N (plus log N for the parallel
scan). Each node's token is itself a short scan over its neighbourhood tokens (the mean
features at hop 0, 1, ..., m), and a local MPNN layer encodes the node first.

The task is the paper's long-range benchmarks made small: on a path or a ring, one node holds a
colour and a query node d hops away must report it.

Shapes: G graphs, n nodes per graph, N = G n nodes, F features, D hidden, C colours.
Section: chapter 04, "Graph Mamba".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_int, check_tensor
from .edges import check_edge_index, degree, message_passing
from .ssm import SelectiveSSM

__all__ = ["DenseAttentionLayer", "GraphMamba", "LongRangeTask", "MPNN",
           "accuracy", "degree_order", "hop_tokens", "long_range_task",
           "mpnn_matching", "parameter_count", "train_node_classifier"]


@dataclass(frozen=True)
class LongRangeTask:
    """G graphs of n nodes each, batched into one graph of N = G n nodes.

    Attributes:
        x: (N, C + 2) features: the colour one-hot (planted node only), a planted flag and a
            query flag.
        edge_index: (2, M) undirected edges (both directions).
        query: (G,) global index of each graph's query node.
        label: (G,) the planted colour.
        distance: (G,) hops between planted and query node.
        n_nodes: n.
    """

    x: torch.Tensor
    edge_index: torch.Tensor
    query: torch.Tensor
    label: torch.Tensor
    distance: torch.Tensor
    n_nodes: int


def long_range_task(n_graphs: int, n_nodes: int, distances: list[int], *,
                    colours: int = 4, ring: bool = False,
                    seed: int = 0) -> LongRangeTask:
    """Paths (or rings) where a query node must report the colour planted d hops away.

    Each graph draws d from ``distances``, a planted node and the query node at distance d
    (along the path; on a ring the shorter way round is d).
    """
    check_int("n_graphs", n_graphs, 1)
    check_int("n_nodes", n_nodes, 2)
    check_int("colours", colours, 2)
    if not distances:
        raise ValueError("distances must not be empty")
    limit = n_nodes // 2 if ring else n_nodes - 1
    for d in distances:
        check_int("distances[i]", d, 1, limit)
    gen = torch.Generator().manual_seed(seed)
    d = torch.tensor(distances)[torch.randint(len(distances), (n_graphs,),
                                              generator=gen)]
    # planted position on the path so that planted + d fits; a ring wraps
    high = torch.full_like(d, n_nodes) if ring else n_nodes - d
    planted = (torch.rand(n_graphs, generator=gen) * high).long()
    query = (planted + d) % n_nodes
    flip = torch.rand(n_graphs, generator=gen) < 0.5  # query left or right
    planted, query = torch.where(flip, query, planted), torch.where(
        flip, planted, query)
    label = torch.randint(colours, (n_graphs,), generator=gen)
    offset = torch.arange(n_graphs) * n_nodes
    x = torch.zeros(n_graphs * n_nodes, colours + 2)
    x[offset + planted, label] = 1.0
    x[offset + planted, colours] = 1.0
    x[offset + query, colours + 1] = 1.0
    i = torch.arange(n_nodes - 1)
    pairs = torch.stack([i, i + 1])
    if ring:
        pairs = torch.cat([pairs, torch.tensor([[n_nodes - 1], [0]])], 1)
    pairs = (pairs.unsqueeze(1) + offset.view(1, -1, 1)).reshape(2, -1)
    edge_index = torch.cat([pairs, pairs.flip(0)], 1)
    return LongRangeTask(x, edge_index, offset + query, label, d, n_nodes)


def hop_tokens(x: torch.Tensor, edge_index: torch.Tensor, hops: int) -> torch.Tensor:
    """Neighbourhood tokens: token j of node v is the mean feature over the walk of j hops.

    Token 0 is the node itself and token j is ``(D^-1 A)^j x``: the mean over random walks of
    length j, a cheap stand-in for the paper's sampled j-hop subgraphs.

    Returns:
        (N, hops + 1, F), hop 0 first.
    """
    check_tensor("x", x, dims=2, dtype="float", shape="(N, F)")
    check_edge_index(edge_index, x.shape[0])
    check_int("hops", hops, 0)
    tokens = [x]
    for _ in range(hops):
        tokens.append(message_passing(tokens[-1], edge_index, aggr="mean"))
    return torch.stack(tokens, dim=1)


def degree_order(edge_index: torch.Tensor, n_graphs: int, n_nodes: int, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Each graph's nodes sorted by degree, ties broken at random (Graph Mamba's ordering).

    Returns:
        (G, n) global node indices, low degree first.
    """
    check_int("n_graphs", n_graphs, 1)
    check_int("n_nodes", n_nodes, 1)
    total = n_graphs * n_nodes
    check_edge_index(edge_index, total)
    deg = degree(edge_index[1], total).float().view(n_graphs, n_nodes)
    # show: start degree_order
    # a random tie-break below 1 never reorders different degrees
    noise = torch.rand(deg.shape, generator=generator)
    order = torch.argsort(deg + noise, dim=1)             # (G, n) local indices
    return order + torch.arange(n_graphs).unsqueeze(1) * n_nodes
    # show: end degree_order


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mpnn_matching(params: int, in_dim: int, classes: int, layers: int) -> "MPNN":
    """The :class:`MPNN` of ``layers`` layers whose parameter count is closest to ``params``."""
    check_int("params", params, 1)
    best = min(range(1, 257), key=lambda h: abs(parameter_count(
        MPNN(in_dim, h, classes, layers)) - params))
    return MPNN(in_dim, best, classes, layers)


class MPNN(nn.Module):
    """A k-layer mean-aggregation MPNN (GraphSAGE-style), the baseline that sees k hops."""

    def __init__(self, in_dim: int, hidden: int, classes: int, layers: int) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden", hidden),
                        ("classes", classes), ("layers", layers)):
            check_int(name, v, 1)
        self.inp = nn.Linear(in_dim, hidden)
        self.self_lin = nn.ModuleList(nn.Linear(hidden, hidden)
                                      for _ in range(layers))
        self.nbr_lin = nn.ModuleList(nn.Linear(hidden, hidden, bias=False)
                                     for _ in range(layers))
        self.out = nn.Linear(hidden, classes)

    def forward(self, task: LongRangeTask) -> torch.Tensor:
        """(G, C) logits at the query nodes."""
        h = F.relu(self.inp(task.x))
        for s, m in zip(self.self_lin, self.nbr_lin):
            agg = message_passing(h, task.edge_index, aggr="mean")
            h = F.relu(s(h) + m(agg))
        return self.out(h[task.query])


class GraphMamba(nn.Module):
    """Local MPNN encoding, a scan over each node's hop tokens, a bidirectional scan over nodes.

    Args:
        in_dim: F.
        hidden: D.
        classes: C.
        hops: neighbourhood tokens per node beyond the node itself.
        state: S of each selective scan.
    """

    def __init__(self, in_dim: int, hidden: int, classes: int, *, hops: int = 2,
                 state: int = 8) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden", hidden),
                        ("classes", classes)):
            check_int(name, v, 1)
        self.hops = check_int("hops", hops, 0)
        self.inp = nn.Linear(in_dim, hidden)
        self.local = nn.Linear(hidden, hidden)
        self.token_scan = SelectiveSSM(hidden, state, bidirectional=False)
        self.node_scan = SelectiveSSM(hidden, state, bidirectional=True)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, task: LongRangeTask, *, parallel: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """(G, C) logits at the query nodes."""
        n = task.n_nodes
        g = task.x.shape[0] // n
        # show: start graph_mamba
        h = F.relu(self.inp(task.x))                               # (N, D)
        # local MPNN encoding: one mean-aggregation layer
        h = h + F.relu(self.local(
            message_passing(h, task.edge_index, aggr="mean")))
        # neighbourhood tokens, scanned from the farthest hop to the node
        tokens = hop_tokens(h, task.edge_index, self.hops).flip(1)
        h = self.token_scan(tokens, parallel=parallel)[:, -1]     # (N, D)
        # nodes as a sequence ordered by degree; bidirectional scan
        order = degree_order(task.edge_index, g, n, generator=generator)
        seq = self.norm(h[order])                                  # (G, n, D)
        y = self.node_scan(seq, parallel=parallel)
        out = torch.empty_like(h)
        out[order.reshape(-1)] = y.reshape(-1, y.shape[-1])        # unsort
        # show: end graph_mamba
        return self.out(torch.cat([h, out], dim=1)[task.query])


class DenseAttentionLayer(nn.Module):
    """One single-head graph-transformer layer over all nodes (N x N scores), for timing."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(L, T, D) -> (L, T, D)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5       # (L, T, T)
        return x + torch.softmax(scores, dim=-1) @ v


def accuracy(logits: torch.Tensor, label: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(1) == label).float().mean())


def train_node_classifier(model: nn.Module, train: LongRangeTask, *,
                          steps: int = 300, lr: float = 1e-2,
                          seed: int = 0) -> list[float]:
    """Adam on the cross-entropy at the query nodes (full batch). Returns the losses."""
    check_int("steps", steps, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        kwargs = {"generator": gen} if isinstance(model, GraphMamba) else {}
        loss = F.cross_entropy(model(train, **kwargs), train.label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses

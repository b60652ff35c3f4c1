"""GNNPipe: a deep GCN split by layers across ranks, fed graph chunk by graph chunk.

Full-graph GNN training is usually split by *graph*: each of P ranks owns a partition of the
nodes and, at every layer, fetches the embeddings of the remote neighbours of its nodes (the
*halo*) forward and sends their gradients back, ``2 L |halo| d`` numbers per epoch for L layers
of width d. GNNPipe (Chen et al., "GNNPipe: Scaling Deep GNN Training with Pipelined Model
Parallelism") splits by *layers* instead: rank r owns L/P consecutive layers for every node, and
only the (N, d) activations between consecutive ranks travel, ``2 (P - 1) N d`` per epoch,
independent of L. To pipeline, the nodes are cut into C chunks processed one after the other;
a layer of chunk c reads the embeddings of neighbours in later chunks from the previous epoch
(*historical embeddings*), those of earlier chunks from this epoch. Here the chunks are dealt
anew every epoch by default (a choice of this book), so that no edge is cut in every epoch.

The model is a residual stack of chapter 02's GCN layer (:class:`labkit.graphs.GCN`, one layer
``A_hat (H W)`` each): ``H_{l+1} = H_l + relu(A_hat H_l W_l)``, between an input and an output
projection. :func:`simulate_gnnpipe` runs the P stages in one process; :func:`gnnpipe_training`
is the same code on real ranks under :func:`labkit.dist.launch` (point-to-point sends).

Shapes: N nodes, F features, d hidden width, K classes, L layers, P stages, C chunks.
Section: chapter 12, "GNNPipe: pipelined layers over graph chunks".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import torch
import torch.distributed as dist
from torch import nn

from ..graphs.csbm import Graph
from ..graphs.edges import gcn_norm
from ..graphs.gcn import GCN, gcn_adjacency_csr
from ..validation import check_int, check_real, check_tensor

__all__ = ["ResidualGCN", "chunk_adjacency", "chunk_assignment", "gnnpipe_training", "graph_parallel_bytes",
           "halo_exchange_bytes", "halo_size", "partition_nodes", "pipeline_bytes",
           "simulate_gnnpipe", "train_full_graph", "volume_figure"]

_FLOAT_BYTES = 4


def partition_nodes(edge_index: torch.Tensor, num_nodes: int, parts: int, *,
                    method: str = "kl", seed: int = 0) -> torch.Tensor:
    """Part id (N,) of every node: ``parts`` (a power of 2) near-equal parts.

    ``method="kl"`` bisects recursively with networkx's ``kernighan_lin_bisection`` (few cut
    edges); ``method="random"`` deals a random permutation into equal parts.
    """
    num_nodes = check_int("num_nodes", num_nodes, 1)
    parts = check_int("parts", parts, 1, num_nodes)
    if parts & (parts - 1):
        raise ValueError(f"parts must be a power of 2, got {parts}")
    if method not in ("kl", "random"):
        raise ValueError(f"method must be 'kl' or 'random', got {method!r}")
    out = torch.empty(num_nodes, dtype=torch.long)
    if method == "random":
        perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(seed))
        out[perm] = torch.arange(num_nodes) * parts // num_nodes
        return out
    g = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    g.add_edges_from(edge_index.t().tolist())
    groups = [list(range(num_nodes))]
    while len(groups) < parts:
        halves = []
        for i, nodes in enumerate(groups):
            a, b = nx.algorithms.community.kernighan_lin_bisection(
                g.subgraph(nodes), seed=seed + i)
            halves += [sorted(a), sorted(b)]
        groups = halves
    for p, nodes in enumerate(groups):
        out[nodes] = p
    return out


def halo_size(edge_index: torch.Tensor, assignment: torch.Tensor) -> int:
    """Sum over parts of the remote nodes adjacent to the part: ``|halo|``."""
    src, dst = edge_index
    cross = assignment[src] != assignment[dst]
    # (part that needs it, remote node) pairs, each counted once
    pairs = torch.unique(assignment[dst[cross]] * assignment.numel() + src[cross])
    return int(pairs.numel())


def graph_parallel_bytes(layers: int, halo: int, hidden: int) -> int:
    """Bytes per epoch of graph parallelism: ``2 L |halo| d * 4`` (forward + backward)."""
    return 2 * check_int("layers", layers, 1) * check_int("halo", halo, 0) \
        * check_int("hidden", hidden, 1) * _FLOAT_BYTES


def pipeline_bytes(stages: int, num_nodes: int, hidden: int) -> int:
    """Bytes per epoch of a P-stage layer pipeline: ``2 (P - 1) N d * 4``."""
    return 2 * (check_int("stages", stages, 1) - 1) * check_int("num_nodes", num_nodes, 1) \
        * check_int("hidden", hidden, 1) * _FLOAT_BYTES


def halo_exchange_bytes(h: torch.Tensor, edge_index: torch.Tensor,
                        assignment: torch.Tensor) -> tuple[torch.Tensor, int]:
    """One graph-parallel propagation ``A_hat h``, part by part, from local rows and halo rows.

    Each part fetches the rows of its remote neighbours, then computes its own rows. Returns
    the (N, d) result (equal to the full-graph product) and the forward bytes fetched.
    """
    check_tensor("h", h, dims=2, dtype="float", shape="(N, d)")
    n = h.shape[0]
    ei, w = gcn_norm(edge_index, n, add_self_loops=True)
    out = torch.zeros_like(h)
    fetched = 0
    for p in assignment.unique().tolist():
        mine = assignment[ei[0]] == p
        src = ei[1][mine]
        remote = torch.unique(src[assignment[src] != p])
        fetched += remote.numel() * h.shape[1] * _FLOAT_BYTES
        local = torch.zeros_like(h)  # this part's copy: own rows and received halo rows
        own = assignment == p
        local[own] = h[own]
        local[remote] = h[remote]
        out.index_add_(0, ei[0][mine], w[mine, None] * local[src])
    return out, fetched


class ResidualGCN(nn.Module):
    """``H_0 = X W_in``; ``H_{l+1} = H_l + relu(A_hat H_l W_l)``; logits ``H_L W_out``.

    Each residual block is chapter 02's :class:`~labkit.graphs.GCN` with one layer.
    """

    def __init__(self, in_features: int, hidden: int, classes: int, *, layers: int = 8) -> None:
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("hidden", hidden, 1)
        check_int("classes", classes, 2)
        check_int("layers", layers, 1)
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(GCN(hidden, hidden, n_layers=1) for _ in range(layers))
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """(N, F) features, (N, N) CSR ``A_hat`` -> (N, K) logits."""
        h = self.inp(x)
        for block in self.blocks:
            h = h + torch.relu(block(h, adj))
        return self.out(h)


def chunk_adjacency(edge_index: torch.Tensor, num_nodes: int, rows: torch.Tensor) -> torch.Tensor:
    """The rows ``rows`` of ``A_hat``, a (len(rows), N) CSR matrix."""
    ei, w = gcn_norm(edge_index, num_nodes, add_self_loops=True)
    pos = torch.full((num_nodes,), -1, dtype=torch.long)
    pos[rows] = torch.arange(rows.numel())
    keep = pos[ei[0]] >= 0
    coo = torch.sparse_coo_tensor(torch.stack([pos[ei[0][keep]], ei[1][keep]]), w[keep],
                                  (rows.numel(), num_nodes),
                                  check_invariants=False).coalesce()
    with warnings.catch_warnings():  # torch calls sparse CSR support "beta"
        warnings.simplefilter("ignore", UserWarning)
        return coo.to_sparse_csr()


def chunk_assignment(num_nodes: int, chunks: int, seed: int) -> torch.Tensor:
    """Chunk id (N,) of every node: a random deal into ``chunks`` near-equal chunks."""
    num_nodes = check_int("num_nodes", num_nodes, 1)
    chunks = check_int("chunks", chunks, 1, num_nodes)
    gen = torch.Generator().manual_seed(seed + 3)
    return torch.randperm(num_nodes, generator=gen) % chunks


def _split(graph: Graph, train_frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(graph.num_nodes, generator=torch.Generator().manual_seed(seed + 7))
    n_train = int(train_frac * graph.num_nodes)
    train = torch.zeros(graph.num_nodes, dtype=torch.bool)
    train[perm[:n_train]] = True
    return train, ~train


def _accuracy(model: ResidualGCN, graph: Graph, mask: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(graph.x, gcn_adjacency_csr(graph.edge_index, graph.num_nodes))
    return float((logits[mask].argmax(-1) == graph.labels[mask]).float().mean())


def _model(graph: Graph, hidden: int, layers: int, seed: int) -> ResidualGCN:
    torch.manual_seed(seed)
    return ResidualGCN(graph.x.shape[1], hidden, int(graph.labels.max()) + 1, layers=layers)


def train_full_graph(graph: Graph, *, layers: int, hidden: int, epochs: int, lr: float,
                     seed: int, train_frac: float = 0.5,
                     keep_edges: torch.Tensor | None = None) -> dict:
    """Full-graph training (what graph parallelism computes); test accuracy on the full graph.

    ``keep_edges`` (M,) bool trains on a subset of the edges (e.g. without cross-chunk edges).
    """
    check_int("epochs", epochs, 1)
    check_real("lr", lr, 0.0, strict=True)
    train, test = _split(graph, train_frac, seed)
    ei = graph.edge_index if keep_edges is None else graph.edge_index[:, keep_edges]
    adj = gcn_adjacency_csr(ei, graph.num_nodes)
    model = _model(graph, hidden, layers, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(graph.x, adj)[train], graph.labels[train])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return dict(losses=losses, accuracy=_accuracy(model, graph, test))


@dataclass
class _Stage:
    """Stage p of the pipeline: its blocks, their historical inputs (N, d) and its projections."""

    model: ResidualGCN
    blocks: Sequence[int]
    first: bool
    last: bool
    history: list[torch.Tensor]

    def forward(self, h: torch.Tensor, rows: torch.Tensor, adj_rows: torch.Tensor,
                x_rows: torch.Tensor) -> torch.Tensor:
        # show: start stage
        if self.first:
            h = self.model.inp(x_rows)
        for hist, b in zip(self.history, self.blocks):
            hist[rows] = h.detach()  # later chunks will read this epoch's rows
            # neighbours: this chunk live, other chunks from the history
            full = hist.index_put((rows,), h)
            h = h + torch.relu(self.model.blocks[b](full, adj_rows))
        return self.model.out(h) if self.last else h
        # show: end stage


def _stages(model: ResidualGCN, stages: int, num_nodes: int, hidden: int) -> list[_Stage]:
    per = len(model.blocks) // stages
    return [_Stage(model, range(p * per, (p + 1) * per), p == 0, p == stages - 1,
                   [torch.zeros(num_nodes, hidden) for _ in range(per)]) for p in range(stages)]


def _stage_params(model: ResidualGCN, stage: _Stage) -> list[nn.Parameter]:
    params = [p for b in stage.blocks for p in model.blocks[b].parameters()]
    if stage.first:
        params = list(model.inp.parameters()) + params
    if stage.last:
        params += list(model.out.parameters())
    return params


def _check_pipe(graph: Graph, stages: int, layers: int, chunks: int, epochs: int) -> None:
    check_int("stages", stages, 1)
    check_int("layers", layers, 1)
    check_int("chunks", chunks, 1, graph.num_nodes)
    check_int("epochs", epochs, 1)
    if layers % stages:
        raise ValueError(f"stages must divide layers: {stages} stages, {layers} layers")


def _pipeline(graph: Graph, ranks: Sequence[int], n_stages: int, *, layers: int, hidden: int,
              chunks: int, epochs: int, lr: float, seed: int, train_frac: float,
              reshuffle: bool, rank: int | None) -> dict:
    """The GNNPipe loop; ``rank`` None runs every stage here (the simulator)."""
    train, test = _split(graph, train_frac, seed)
    n_train = int(train.sum())
    def deal(epoch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        chunk_of = chunk_assignment(graph.num_nodes, chunks, seed + epoch * reshuffle)
        rows = [torch.nonzero(chunk_of == c).flatten() for c in range(chunks)]
        return rows, [chunk_adjacency(graph.edge_index, graph.num_nodes, r) for r in rows]

    model = _model(graph, hidden, layers, seed)
    stages = _stages(model, n_stages, graph.num_nodes, hidden)
    opts = {p: torch.optim.Adam(_stage_params(model, stages[p]), lr=lr) for p in ranks}
    sent = 0
    losses = []
    for epoch in range(epochs):
        if epoch == 0 or reshuffle:  # a new random deal of the chunks each epoch
            rows, adjs = deal(epoch)
        for p in ranks:
            opts[p].zero_grad()
        epoch_loss = 0.0
        # show: start pipeline
        for r, adj in zip(rows, adjs):  # the chunks enter one after the other
            ins: dict[int, torch.Tensor] = {}
            outs: dict[int, torch.Tensor] = {}
            h = torch.empty(0)
            for p in ranks:  # forward, stage by stage
                if p > 0:
                    if rank is not None:
                        h = torch.empty(r.numel(), hidden)
                        dist.recv(h, src=p - 1)
                    h = h.detach().requires_grad_()
                    ins[p] = h
                outs[p] = h = stages[p].forward(h, r, adj, graph.x[r])
                if p < n_stages - 1:
                    sent += h.numel() * _FLOAT_BYTES
                    if rank is not None:
                        dist.send(h.detach().contiguous(), dst=p + 1)
            for p in reversed(ranks):  # backward, stage by stage
                if p == n_stages - 1:
                    mask = train[r]
                    loss = nn.functional.cross_entropy(
                        outs[p][mask], graph.labels[r][mask], reduction="sum") / n_train
                    loss.backward()
                    epoch_loss += float(loss.detach())
                else:
                    grad = ins[p + 1].grad if rank is None else torch.empty(r.numel(), hidden)
                    if rank is not None:
                        dist.recv(grad, src=p + 1)
                    outs[p].backward(grad)
                if p > 0:
                    sent += ins[p].grad.numel() * _FLOAT_BYTES
                    if rank is not None:
                        dist.send(ins[p].grad.contiguous(), dst=p - 1)
        # show: end pipeline
        for p in ranks:
            opts[p].step()
        losses.append(epoch_loss)
    params = {p: [t.detach().clone() for t in _stage_params(model, stages[p])] for p in ranks}
    out = dict(losses=losses, sent=sent, params=params)
    if rank is None:
        out["accuracy"] = _accuracy(model, graph, test)
    return out


def simulate_gnnpipe(graph: Graph, *, stages: int, layers: int, hidden: int, chunks: int,
                     epochs: int, lr: float, seed: int, train_frac: float = 0.5,
                     reshuffle: bool = True) -> dict:
    """GNNPipe with ``stages`` simulated ranks in this process.

    With ``reshuffle`` the nodes are dealt into new random chunks every epoch, so that no edge
    is cut (its gradient lost) in every epoch; without it the chunks stay fixed.

    Returns the training loss per epoch (summed over chunks), the bytes all stages sent, the
    parameters of each stage and the test accuracy of the full-graph model after training.
    """
    _check_pipe(graph, stages, layers, chunks, epochs)
    return _pipeline(graph, list(range(stages)), stages, layers=layers, hidden=hidden,
                     chunks=chunks, epochs=epochs, lr=lr, seed=seed, train_frac=train_frac,
                     reshuffle=reshuffle, rank=None)


def gnnpipe_training(rank: int, world_size: int, *, graph: Graph, layers: int, hidden: int,
                     chunks: int, epochs: int, lr: float, seed: int,
                     train_frac: float = 0.5, reshuffle: bool = True) -> dict:
    """Worker for :func:`labkit.dist.launch`: this rank is stage ``rank`` of the pipeline.

    Returns the epoch losses (meaningful on the last rank), the bytes this rank sent and its
    stage's parameters (under key ``rank``).
    """
    check_int("world_size", world_size, 2)
    _check_pipe(graph, world_size, layers, chunks, epochs)
    if not dist.is_initialized():
        raise ValueError("gnnpipe_training runs under labkit.dist.launch")
    return _pipeline(graph, [rank], world_size, layers=layers, hidden=hidden, chunks=chunks,
                     epochs=epochs, lr=lr, seed=seed, train_frac=train_frac,
                    reshuffle=reshuffle, rank=rank)


def volume_figure(halos: dict[int, dict[str, int]], *, num_nodes: int, hidden: int,
                  layers: Sequence[int]) -> "go.Figure":
    """Graph-parallel over pipeline bytes per epoch against L, one slider step per P.

    ``halos[P][method]`` is ``|halo|`` of the P-part partition made by ``method``.
    """
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    owner = []
    for k, (p, by_method) in enumerate(halos.items()):
        ls = [n for n in layers if n % p == 0]
        for j, (method, halo) in enumerate(by_method.items()):
            ratio = [graph_parallel_bytes(n, halo, hidden)
                     / pipeline_bytes(p, num_nodes, hidden) for n in ls]
            fig.add_trace(go.Scatter(x=ls, y=ratio, mode="lines+markers", visible=k == 0,
                                     name=f"{method} partition",
                                     line=dict(color=PALETTE[j % len(PALETTE)])))
            owner.append(k)
        fig.add_trace(go.Scatter(x=ls, y=[n / 2 for n in ls], mode="lines", visible=k == 0,
                                 name="L / 2", line=dict(color="grey", dash="dot")))
        owner.append(k)
    steps = [dict(label=str(p), method="update",
                  args=[{"visible": [o == k for o in owner]}])
             for k, p in enumerate(halos)]
    fig.update_layout(sliders=[dict(steps=steps, currentvalue=dict(prefix="P = "))])
    fig.update_xaxes(title_text="layers L", type="log")
    fig.update_yaxes(title_text="graph-parallel bytes / pipeline bytes per epoch")
    return styled(fig, title="Communication volume per epoch: halo exchange over GNNPipe",
                  height=460)

"""Edges as nodes: the dual hypergraph transformation (DHT), hypergraph convolution, HyperDrop.

Jo, Baek, Lee, Kim, Kang & Hwang, "Edge Representation Learning with Hypergraphs"
(arXiv:2106.15845). A node-centred GNN keeps edge information only as messages; DHT swaps the
roles. With the incidence matrix ``B`` (N, M), ``B[v, e] = 1`` when edge e touches node v, the
*dual hypergraph* has one node per edge and one hyperedge per original node, holding the edges
that meet there: its incidence matrix is ``B^T``. Any node-level hypergraph network then learns
edge representations directly, and two edges interact exactly when they share an endpoint
(``B^T B`` minus the diagonal is the line graph's adjacency).

The convolution is HGNN's (Feng et al., "Hypergraph Neural Networks", arXiv:1809.09401) on the
dual, with hyperedge (original node) degrees ``D_n`` and node (edge) degrees ``D_m = 2``:

    X' = relu(D_m^{-1/2} B^T D_n^{-1} B D_m^{-1/2} X Theta).

HyperDrop pools a hypergraph by scoring its hyperedges (the original nodes) and dropping the
lowest-scoring ones, with the hypernodes (edges) that only they held.

The baseline, :class:`EdgeMPNN`, is node-centred: nodes average their edges' messages, and an
edge reads the sum of its two endpoints' states with its own feature. What the miniature leaves
out: the paper's attention-based hypergraph layers, its graph-level pooling benchmarks and its
molecular and social edge tasks; HyperDrop's scores here are given, not learned.

Shapes: N nodes (hyperedges of the dual), M undirected edges (its nodes), F features.
Section: chapter 02, "Beyond 1-WL".
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import torch
from torch import nn

from ..validation import check_int, check_real, check_tensor
from .linkpred import check_pairs

__all__ = ["DHTEdgeNet", "EdgeMPNN", "dual_convolution", "edge_colour_task", "hyperdrop", "incidence",
           "train_edge_model"]


def incidence(pairs: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """(N, M) dense incidence of the undirected ``pairs`` (2, M): ``B[v, e] = 1`` if v is in e."""
    check_pairs("pairs", pairs, num_nodes)
    b = torch.zeros(num_nodes, pairs.shape[1])
    cols = torch.arange(pairs.shape[1])
    b[pairs[0], cols] = 1.0
    b[pairs[1], cols] = 1.0
    return b


def dual_convolution(b: torch.Tensor) -> torch.Tensor:
    """``D_m^{-1/2} B^T D_n^{-1} B D_m^{-1/2}``, (M, M): one hypergraph convolution on the dual."""
    check_tensor("b", b, dims=2, dtype="float", shape="(N, M)")
    # show: start dht
    d_node = b.sum(1).clamp(min=1)  # hyperedge sizes of the dual = node degrees
    d_edge = b.sum(0).clamp(min=1)  # hypernode degrees of the dual = 2 for every edge
    inner = b.T @ (b / d_node[:, None])  # B^T D_n^{-1} B: edges meeting at a node
    return inner / (d_edge[:, None].sqrt() * d_edge[None, :].sqrt())
    # show: end dht


class DHTEdgeNet(nn.Module):
    """Edge classifier on the dual hypergraph: convolutions over edges, then a linear read-out."""

    def __init__(self, in_features: int, hidden: int, n_classes: int, *, n_layers: int = 2) -> None:
        super().__init__()
        dims = [in_features] + [hidden] * check_int("n_layers", n_layers, 1)
        self.layers = nn.ModuleList(nn.Linear(a, c) for a, c in zip(dims[:-1], dims[1:]))
        self.out = nn.Sequential(nn.Linear(hidden + in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x_edge: torch.Tensor, conv: torch.Tensor) -> torch.Tensor:
        """(M, F) edge features, (M, M) :func:`dual_convolution` -> (M, classes) logits."""
        h = x_edge
        for layer in self.layers:
            h = torch.relu(conv @ layer(h))
        return self.out(torch.cat([h, x_edge], 1))


class EdgeMPNN(nn.Module):
    """The node-centred baseline: nodes aggregate their edges' features, an edge reads its two
    endpoints (summed) and its own feature."""

    def __init__(self, in_features: int, hidden: int, n_classes: int, *, n_layers: int = 2) -> None:
        super().__init__()
        check_int("n_layers", n_layers, 1)
        self.embed = nn.Linear(in_features, hidden)
        self.layers = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(n_layers))
        self.out = nn.Sequential(nn.Linear(hidden + in_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x_edge: torch.Tensor, pairs: torch.Tensor, num_nodes: int) -> torch.Tensor:
        msg = self.embed(x_edge)  # (M, hidden): what each edge sends to its endpoints
        h = torch.zeros(num_nodes, msg.shape[1])
        deg = torch.bincount(pairs.flatten(), minlength=num_nodes).clamp(min=1)[:, None]
        for layer in self.layers:
            agg = torch.zeros_like(h).index_add_(0, pairs[0], msg).index_add_(0, pairs[1], msg) / deg
            h = torch.relu(layer(torch.cat([h, agg], 1)))
            msg = h[pairs[0]] + h[pairs[1]]  # the edge's view of its endpoints
        return self.out(torch.cat([msg, x_edge], 1))


def hyperdrop(b: torch.Tensor, scores: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``ratio`` best-scoring hyperedges of the dual (original nodes) and the edges
    that at least one of them holds.

    Args:
        b: (N, M) incidence.
        scores: (N,) hyperedge scores (learned in the paper, any here).
        ratio: share of hyperedges kept, in (0, 1].

    Returns:
        ``(kept_nodes, kept_edges)``: sorted int64 indices.
    """
    check_tensor("scores", scores, dims=1, dtype="float", shape="(N,)")
    ratio = check_real("ratio", ratio, 0.0, strict=True)
    if ratio > 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    n_keep = max(1, round(ratio * b.shape[0]))
    kept = torch.topk(scores, n_keep).indices.sort().values
    edges = torch.nonzero(b[kept].sum(0) > 0).squeeze(1)
    return kept, edges


def edge_colour_task(n_nodes: int, n_edges: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An edge task that needs the edges around each edge: a random graph, a random colour (0
    or 1) per edge, and label 1 when the edge's own colour holds at least half of the edges it
    shares an endpoint with.

    Returns:
        ``(pairs, x, y)``: (2, M) edges, (M, 2) one-hot colours, (M,) int64 labels.
    """
    n_nodes = check_int("n_nodes", n_nodes, 2)
    n_edges = check_int("n_edges", n_edges, 1, n_nodes * (n_nodes - 1) // 2)
    g = nx.gnm_random_graph(n_nodes, n_edges, seed=seed)
    pairs = torch.tensor(list(g.edges()), dtype=torch.int64).T
    colour = torch.randint(0, 2, (pairs.shape[1],), generator=torch.Generator().manual_seed(seed))
    x = nn.functional.one_hot(colour, 2).float()
    b = incidence(pairs, n_nodes)
    around = b.T @ b
    around.fill_diagonal_(0)
    around = (around > 0).float()  # edges sharing an endpoint (the line graph)
    same = (around @ x)[torch.arange(colour.numel()), colour]
    y = (same >= around.sum(1) / 2).long()
    return pairs, x, y


def train_edge_model(forward: Callable[[], torch.Tensor], model: nn.Module, y: torch.Tensor,
                     train_idx: torch.Tensor, test_idx: torch.Tensor, *, epochs: int = 400,
                     lr: float = 0.01) -> float:
    """Full-batch cross-entropy on ``train_idx``; returns the test accuracy after ``epochs``."""
    epochs = check_int("epochs", epochs, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(forward()[train_idx], y[train_idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float((forward().argmax(1)[test_idx] == y[test_idx]).float().mean())

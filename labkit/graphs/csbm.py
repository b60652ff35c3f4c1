"""Seeded graphs for link prediction: a contextual SBM and a Barabasi-Albert graph.

A *contextual* stochastic block model (CSBM) pairs a planted partition with node features that
depend on the community: every community gets a random mean vector, and each node's features are
its community's mean plus Gaussian noise. Structure and features then carry the same signal
through two channels, which is the setting in which a GCN helps and in which structure attacks
and feature-based refinement (chapter 02) can be studied. The Barabasi-Albert graph is the
opposite case: no communities, few triangles, hubs of very different degrees.

Shapes: N nodes, M directed edges (each undirected edge stored twice), F features.
Section: chapter 02, "Link prediction with common neighbours".
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch

from ..data.synthetic import planted_partition_graph
from ..validation import check_int, check_real

__all__ = ["Graph", "barabasi_albert", "contextual_sbm"]


@dataclass(frozen=True)
class Graph:
    """An undirected graph with node features and (possibly trivial) node labels.

    Attributes:
        edge_index: (2, M) int64, both directions of every edge, no self loops.
        x: (N, F) float32 node features.
        labels: (N,) int64 community of each node (all zero where there are none).
        name: a short description for tables and figures.
    """

    edge_index: torch.Tensor
    x: torch.Tensor
    labels: torch.Tensor
    name: str

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        """Undirected edges (half the columns of ``edge_index``)."""
        return int(self.edge_index.shape[1]) // 2


def contextual_sbm(n_nodes: int, n_classes: int, *, p_in: float, p_out: float, n_features: int = 16,
                   signal: float = 1.0, seed: int = 0) -> Graph:
    """A planted partition with Gaussian features whose mean depends on the community.

    Args:
        n_nodes: N, split into ``n_classes`` communities of (almost) equal size.
        n_classes: number of communities, at least 2.
        p_in, p_out: edge probabilities inside and across communities.
        n_features: F.
        signal: norm of each community's mean (the noise has unit variance per feature).
        seed: seed of the graph and of the features.
    """
    n_nodes = check_int("n_nodes", n_nodes, 2)
    n_classes = check_int("n_classes", n_classes, 2, n_nodes)
    n_features = check_int("n_features", n_features, 1)
    signal = check_real("signal", signal, 0.0)
    sizes = [n_nodes // n_classes + (c < n_nodes % n_classes) for c in range(n_classes)]
    edge_index, labels = planted_partition_graph(sizes, p_in=p_in, p_out=p_out, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    means = torch.randn(n_classes, n_features, generator=gen)
    means = signal * means / means.norm(dim=1, keepdim=True)
    x = means[labels] + torch.randn(n_nodes, n_features, generator=gen)
    return Graph(edge_index, x, labels, f"CSBM ({n_nodes} nodes, {n_classes} classes)")


def barabasi_albert(n_nodes: int, m: int, *, n_features: int = 16, seed: int = 0) -> Graph:
    """networkx's Barabasi-Albert graph (each new node attaches ``m`` edges preferentially).

    It has no communities, so the features are pure noise (one label for every node).
    """
    n_nodes = check_int("n_nodes", n_nodes, 2)
    m = check_int("m", m, 1, n_nodes - 1)
    n_features = check_int("n_features", n_features, 1)
    g = nx.barabasi_albert_graph(n_nodes, m, seed=seed)
    pairs = torch.tensor(list(g.edges()), dtype=torch.int64).T  # (2, M/2)
    edge_index = torch.cat([pairs, pairs.flip(0)], dim=1)
    order = torch.argsort(edge_index[0] * n_nodes + edge_index[1])
    x = torch.randn(n_nodes, n_features, generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.zeros(n_nodes, dtype=torch.int64)
    return Graph(edge_index[:, order], x, labels, f"Barabasi-Albert ({n_nodes} nodes, m={m})")

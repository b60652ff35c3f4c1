"""A trainable GCN encoder on CSR SpMM, and the graph auto-encoder (GAE) link predictor.

Kipf & Welling's GCN layer (arXiv:1609.02907, eq. 2) is ``H' = act(A_hat H W)`` with
``A_hat = D^{-1/2} (A + I) D^{-1/2}``: one dense product and one sparse one, which here is
chapter 01's :func:`~labkit.graphs.spmm`. The graph auto-encoder (Kipf & Welling, "Variational
Graph Auto-Encoders", arXiv:1611.07308, non-variational form) scores a pair by the dot product of
its two node embeddings, ``s(i, j) = h_i . h_j``: the baseline that neural common-neighbour
models are measured against.

Shapes: N nodes, F input features, D hidden features, P pairs.
Section: chapter 02, "Link prediction with common neighbours".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..validation import check_int, check_tensor
from .edges import check_edge_index, gcn_norm, to_csr
from .sparse import spmm

__all__ = ["GAE", "GCN", "LinkGraph", "gcn_adjacency_csr", "link_graph"]


def gcn_adjacency_csr(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``D^{-1/2} (A + I) D^{-1/2}`` as an (N, N) CSR matrix (GCN's propagation matrix)."""
    ei, w = gcn_norm(edge_index, num_nodes, add_self_loops=True)
    return to_csr(ei, num_nodes, w)


@dataclass(frozen=True)
class LinkGraph:
    """The observed graph in the two forms link predictors use.

    Attributes:
        adj: (N, N) CSR, GCN-normalised with self loops, for the encoder.
        adj_binary: (N, N) CSR of ones, no self loops, for neighbour sets.
    """

    adj: torch.Tensor
    adj_binary: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.adj.shape[0])


def link_graph(edge_index: torch.Tensor, num_nodes: int, edge_weight: torch.Tensor | None = None) -> LinkGraph:
    """Both adjacencies of a (2, M) undirected edge list (both directions stored).

    With ``edge_weight`` (M,), symmetric in (i, j), the encoder's matrix is the weighted GCN
    normalisation ``D_w^{-1/2} (W + I) D_w^{-1/2}`` with ``D_w = diag(1 + sum_j w_ij)``.
    """
    check_edge_index(edge_index, num_nodes)
    ones = torch.ones(edge_index.shape[1])
    if edge_weight is not None:
        check_tensor("edge_weight", edge_weight, dims=1, dtype="float", shape="(M,)")
        if edge_weight.shape[0] != edge_index.shape[1]:
            raise ValueError(f"edge_weight must have shape ({edge_index.shape[1]},), got {tuple(edge_weight.shape)}")
        deg = 1.0 + torch.zeros(num_nodes).index_add_(0, edge_index[0], edge_weight.float())
        loops = torch.arange(num_nodes).repeat(2, 1)
        ei = torch.cat([edge_index, loops], dim=1)
        w = torch.cat([edge_weight.float(), torch.ones(num_nodes)])
        adj = to_csr(ei, num_nodes, w * deg[ei[0]].rsqrt() * deg[ei[1]].rsqrt())
    else:
        adj = gcn_adjacency_csr(edge_index, num_nodes)
    binary = to_csr(edge_index, num_nodes, ones)
    binary = torch.sparse_csr_tensor(binary.crow_indices(), binary.col_indices(),
                                     torch.ones_like(binary.values()), binary.shape,
                                     check_invariants=False)
    return LinkGraph(adj, binary)


class GCN(nn.Module):
    """A stack of GCN layers, ReLU between them: ``H_{l+1} = relu(A_hat H_l W_l)``."""

    def __init__(self, in_features: int, hidden: int, *, n_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        check_int("in_features", in_features, 1)
        check_int("hidden", hidden, 1)
        check_int("n_layers", n_layers, 1)
        dims = [in_features] + [hidden] * n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """(N, F) features and (N, N) CSR ``A_hat`` -> (N, D) embeddings."""
        check_tensor("x", x, dims=2, dtype="float", shape="(N, F)")
        if adj.layout != torch.sparse_csr:
            raise TypeError(f"adj must be a torch.sparse_csr tensor, got layout {adj.layout}")
        h = x
        for layer_i, layer in enumerate(self.layers):
            h = nn.functional.dropout(h, self.dropout, self.training)
            h = spmm(adj, layer(h))  # A_hat (H W)
            if layer_i < len(self.layers) - 1:
                h = torch.relu(h)
        return h


class GAE(nn.Module):
    """GCN encoder, dot-product decoder: ``s(i, j) = h_i . h_j`` (a logit)."""

    def __init__(self, in_features: int, hidden: int, *, n_layers: int = 2) -> None:
        super().__init__()
        self.encoder = GCN(in_features, hidden, n_layers=n_layers)

    def score(self, x: torch.Tensor, graph: LinkGraph, pairs: torch.Tensor) -> torch.Tensor:
        """Logits (P,) of the (2, P) ``pairs``."""
        h = self.encoder(x, graph.adj)
        return (h[pairs[0]] * h[pairs[1]]).sum(-1)

"""Beyond 1-WL with ego-nets: Subgraph Permutation Equivariant Networks (SPEN), and a plain MPNN.

Mitton & Murray-Smith, "Subgraph Permutation Equivariant Networks" (arXiv:2111.11840). A
message-passing network cannot separate two graphs that the 1-dimensional Weisfeiler-Leman test
(colour refinement) does not separate: two triangles and a hexagon, or the Shrikhande graph and
the 4x4 rook's graph, look the same to it. Globally permutation-equivariant networks that act on
the whole (N, N) adjacency are more expressive but cost O(N^2) memory and more. SPEN applies such
a network to every node's k-hop ego-net instead, a subgraph of s nodes, and sums the results:
O(N s^2) memory, and still more expressive than message passing.

The layer here acts on an ego-net's adjacency as an (s, s, C) tensor T (channels C, the first is
the adjacency itself) and mixes, per channel and with learned weights,

    T' = relu(T W_1 + (T @ T) W_2 + diag-broadcast W_3 + row/col-sum broadcast W_4),

all equivariant to relabelling the ego-net's nodes. The matrix product ``T @ T`` is what counts
paths of length two, so after two layers the diagonal holds closed walks of length three,
triangles; without it the layer only sees degree-like sums, and ego-nets with equal degree
statistics stay equal. Pooling sums each ego-net's entries and diagonal, then sums over ego-nets.

Shapes: N nodes, s ego-net size (padded), C channels.
Section: chapter 02, "Beyond 1-WL".
"""

from __future__ import annotations

import networkx as nx
import torch
from torch import nn

from ..validation import check_int
from .edges import check_edge_index

__all__ = ["EgoNets", "MPNN", "SPEN", "edge_index_of", "ego_networks", "memory_counts", "relabelled",
           "shrikhande_graph", "spen_distance", "wl_pairs"]


class EgoNets:
    """Every node's k-hop ego-net as a padded dense tensor.

    Attributes:
        adj: (N, s, s) float32 adjacency of each ego-net (centre first, then the others in id
            order; padding rows and columns are zero).
        mask: (N, s) bool, True on real nodes.
        sizes: the real size of each ego-net.
    """

    def __init__(self, adj: torch.Tensor, mask: torch.Tensor) -> None:
        self.adj, self.mask = adj, mask
        self.sizes = mask.sum(1).tolist()

    @property
    def size(self) -> int:
        """s, the padded ego-net size."""
        return int(self.adj.shape[1])


def ego_networks(edge_index: torch.Tensor, num_nodes: int, *, k: int = 1) -> EgoNets:
    """The k-hop ego-net of every node (networkx's ``ego_graph``), padded to the largest."""
    check_edge_index(edge_index, num_nodes)
    k = check_int("k", k, 1)
    g = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    g.add_edges_from(edge_index.T.tolist())
    egos = []
    for i in range(num_nodes):
        sub = nx.ego_graph(g, i, radius=k)
        order = [i] + sorted(u for u in sub if u != i)
        egos.append(torch.tensor(nx.to_numpy_array(sub, nodelist=order), dtype=torch.float32))
    s = max(e.shape[0] for e in egos)
    adj = torch.zeros(num_nodes, s, s)
    mask = torch.zeros(num_nodes, s, dtype=torch.bool)
    for i, e in enumerate(egos):
        adj[i, : e.shape[0], : e.shape[0]] = e
        mask[i, : e.shape[0]] = True
    return EgoNets(adj, mask)


class _EquivariantLayer(nn.Module):
    """One layer on (B, s, s, C) tensors, equivariant to permuting the s nodes."""

    def __init__(self, c_in: int, c_out: int, *, product: bool) -> None:
        super().__init__()
        self.product = product
        self.w_self = nn.Linear(c_in, c_out)
        self.w_prod = nn.Linear(c_in, c_out, bias=False)
        self.w_diag = nn.Linear(c_in, c_out, bias=False)
        self.w_rows = nn.Linear(2 * c_in, c_out, bias=False)

    def forward(self, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pair = (mask[:, :, None] & mask[:, None, :]).unsqueeze(-1).float()  # (B, s, s, 1)
        # show: start spen-layer
        out = self.w_self(t)
        if self.product:  # (T @ T) per channel: counts paths of length two
            prod = torch.einsum("bijc,bjkc->bikc", t, t)
            out = out + self.w_prod(prod)
        diag = torch.diagonal(t, dim1=1, dim2=2).transpose(1, 2)  # (B, s, C)
        eye = torch.eye(t.shape[1], device=t.device)[None, :, :, None]
        out = out + eye * self.w_diag(diag)[:, :, None, :]  # diagonal back on the diagonal
        rows, cols = t.sum(2), t.sum(1)  # (B, s, C): row and column sums
        out = out + self.w_rows(torch.cat([rows, cols], -1))[:, :, None, :]
        # show: end spen-layer
        return torch.relu(out) * pair


class SPEN(nn.Module):
    """Equivariant layers on every ego-net, pooled per ego-net and summed over ego-nets."""

    def __init__(self, channels: int = 8, n_layers: int = 2, *, product: bool = True) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("n_layers", n_layers, 1)
        dims = [1] + [channels] * n_layers
        self.layers = nn.ModuleList(_EquivariantLayer(a, b, product=product) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, egos: EgoNets) -> torch.Tensor:
        """(2C,) graph embedding: per ego-net the sum of all entries and of the diagonal."""
        t = egos.adj.unsqueeze(-1)  # (N, s, s, 1)
        for layer in self.layers:
            t = layer(t, egos.mask)
        ego = torch.cat([t.sum((1, 2)), torch.diagonal(t, dim1=1, dim2=2).sum(-1)], -1)  # (N, 2C)
        return ego.sum(0)


class MPNN(nn.Module):
    """A GIN-style message-passing network with constant input features: as strong as 1-WL."""

    def __init__(self, hidden: int = 16, n_layers: int = 3) -> None:
        super().__init__()
        check_int("hidden", hidden, 1)
        dims = [1] + [hidden] * check_int("n_layers", n_layers, 1)
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Linear(b, b))
                                  for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """(hidden,) graph embedding: the sum of the node states after the last layer."""
        check_edge_index(edge_index, num_nodes)
        h = torch.ones(num_nodes, 1)
        for mlp in self.mlps:
            agg = torch.zeros_like(h).index_add_(0, edge_index[1], h[edge_index[0]])
            h = mlp(h + agg)
        return h.sum(0)


def memory_counts(ego_sizes: list[int], channels: int) -> dict[str, int]:
    """Floats one layer's activations hold: SPEN per ego-net (``sum_i s_i^2 C``), SPEN padded
    to the largest ego-net (``N s_max^2 C``), and a global equivariant layer (``N^2 C``)."""
    if not ego_sizes:
        raise ValueError("ego_sizes must list at least one ego-net size")
    channels = check_int("channels", channels, 1)
    n, s_max = len(ego_sizes), max(ego_sizes)
    return {"spen": sum(s * s for s in ego_sizes) * channels, "spen_padded": n * s_max**2 * channels,
            "global": n * n * channels}


def shrikhande_graph() -> nx.Graph:
    """The Shrikhande graph: Z_4 x Z_4, (a, b) ~ (a, b) +- (1, 0), (0, 1), (1, 1)."""
    g = nx.Graph()
    for a in range(4):
        for b in range(4):
            for da, db in ((1, 0), (0, 1), (1, 1)):
                g.add_edge((a, b), ((a + da) % 4, (b + db) % 4))
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def wl_pairs() -> dict[str, tuple[nx.Graph, nx.Graph]]:
    """Pairs of non-isomorphic graphs that 1-WL cannot tell apart."""
    rook = nx.convert_node_labels_to_integers(
        nx.cartesian_product(nx.complete_graph(4), nx.complete_graph(4)), ordering="sorted")
    two_triangles = nx.disjoint_union(nx.cycle_graph(3), nx.cycle_graph(3))
    return {"two triangles / hexagon": (two_triangles, nx.cycle_graph(6)),
            "Shrikhande / 4x4 rook": (shrikhande_graph(), rook)}


def edge_index_of(g: nx.Graph) -> tuple[torch.Tensor, int]:
    """A networkx graph with nodes 0..N-1 as ``(edge_index, N)``, both directions stored."""
    pairs = torch.tensor(list(g.edges()), dtype=torch.int64).reshape(-1, 2).T
    return torch.cat([pairs, pairs.flip(0)], dim=1), g.number_of_nodes()


def relabelled(g: nx.Graph, seed: int = 0) -> nx.Graph:
    """An isomorphic copy of ``g`` with its nodes renumbered at random."""
    perm = torch.randperm(g.number_of_nodes(), generator=torch.Generator().manual_seed(seed)).tolist()
    return nx.relabel_nodes(g, dict(zip(sorted(g.nodes()), perm)))


def spen_distance(g1: nx.Graph, g2: nx.Graph, *, k: int, product: bool, init: int, channels: int = 8) -> float:
    """``|e(G1) - e(G2)| / |e(G1)|`` for one randomly initialised (untrained) SPEN."""
    torch.manual_seed(init)
    model = SPEN(channels, product=product)
    with torch.no_grad():
        a = model(ego_networks(*edge_index_of(g1), k=k))
        b = model(ego_networks(*edge_index_of(g2), k=k))
    return float((a - b).norm() / a.norm().clamp(min=1e-12))

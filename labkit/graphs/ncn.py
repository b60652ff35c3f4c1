"""Neural Common Neighbour (NCN) and its completion (NCNC).

Wang, Yang & Zhang, "Neural Common Neighbor with Completion for Link Prediction" (arXiv:2302.00890).
A GAE scores a pair from its two embeddings alone, and two nodes with the same embedding cannot
tell whether they share neighbours. Counting common neighbours is a strong heuristic but has no
features. NCN does both: it runs an MPNN, then represents the pair by

    z_ij = h_i * h_j  ||  sum_{u in N(i) & N(j)} h_u                       (NCN, eq. 3)

and scores ``MLP(z_ij)``. The sum over the intersection is a sparse product: a (P, N) matrix
``C`` whose row p is the elementwise product of the adjacency rows of i and j (ones on the common
neighbours), times ``H``; chapter 01's :func:`~labkit.graphs.spmm` computes it.

When edges are missing from the observed graph, common neighbours go missing with them. NCNC
*completes* them: a node u adjacent to i but not (as far as we know) to j is still counted, with
the probability ``p_ju`` that NCN gives the link (j, u):

    sum_{N(i) & N(j)} h_u + sum_{N(i) \\ N(j)} p_ju h_u + sum_{N(j) \\ N(i)} p_iu h_u   (NCNC, eq. 6)

Training removes each batch's target links from the graph the encoder sees ("target link
removal"), so a training pair is scored from the same kind of graph as a test pair, in which
the link is absent. What the miniature leaves out: the paper's learned MPNN variants and
tuned MLPs, its soft-weighted completion during training of very large graphs, and higher-order
(two-hop) common neighbours.

Shapes: N nodes, F features, D hidden, P pairs.
Section: chapter 02, "Link prediction with common neighbours".
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..validation import check_real, check_tensor
from .gcn import GCN, LinkGraph
from .linkpred import check_pairs
from .sparse import spmm

__all__ = ["NCN", "NCNC", "common_neighbour_counts", "common_neighbour_matrix", "completed_neighbour_matrix", "neighbour_lists"]


def _check_csr(name: str, adj: object) -> torch.Tensor:
    check_tensor(name, adj, dims=2)
    if adj.layout != torch.sparse_csr:
        raise TypeError(f"{name} must be a torch.sparse_csr tensor, got layout {adj.layout}")
    return adj


def neighbour_lists(adj: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbours of each of ``nodes`` (K,), flattened: ``(owner, neighbour)``, each (L,).

    ``owner[l]`` is the position in ``nodes`` whose row holds ``neighbour[l]``; within an owner
    the neighbours come in the CSR's (sorted) column order.
    """
    ptr, col = adj.crow_indices(), adj.col_indices()
    start, end = ptr[nodes], ptr[nodes + 1]
    counts = end - start
    owner = torch.repeat_interleave(torch.arange(nodes.numel()), counts)
    first = torch.cumsum(counts, 0) - counts  # where each owner's run starts in the output
    offset = torch.arange(int(counts.sum())) - first[owner] + start[owner]
    return owner, col[offset]


def _csr(keys: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """(n_rows, n_cols) CSR from sorted keys ``row * n_cols + col``."""
    rows = keys // n_cols
    crow = torch.zeros(n_rows + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return torch.sparse_csr_tensor(crow, keys % n_cols, values.to(torch.float32), (n_rows, n_cols),
                                    check_invariants=False)


def common_neighbour_matrix(adj: torch.Tensor, pairs: torch.Tensor, *,
                            node_weight: torch.Tensor | None = None) -> torch.Tensor:
    """(P, N) CSR whose row p marks the common neighbours of ``pairs[:, p]``.

    Row p is the elementwise product of the adjacency rows of i and j; its row sum is the
    common-neighbour count. With ``node_weight`` (N,), a common neighbour u carries
    ``node_weight[u]`` instead of 1 (``1 / log deg(u)`` gives Adamic-Adar).

    Args:
        adj: (N, N) binary CSR adjacency, no self loops.
        pairs: (2, P) int64 node pairs.
    """
    # show: start intersect
    _check_csr("adj", adj)
    n = adj.shape[0]
    check_pairs("pairs", pairs, n)
    own_i, nb_i = neighbour_lists(adj, pairs[0])
    own_j, nb_j = neighbour_lists(adj, pairs[1])
    key_i = own_i * n + nb_i  # sorted: owners ascend, columns ascend within one
    key_j = own_j * n + nb_j
    common = key_i[torch.isin(key_i, key_j)]  # u in N(i) and u in N(j), for the same pair
    values = torch.ones(common.numel()) if node_weight is None else node_weight[common % n]
    return _csr(common, values, pairs.shape[1], n)
    # show: end intersect


def common_neighbour_counts(adj: torch.Tensor, pairs: torch.Tensor, *,
                            node_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Row sums of :func:`common_neighbour_matrix`: (P,) common-neighbour counts (or weights)."""
    cn = common_neighbour_matrix(adj, pairs, node_weight=node_weight)
    return spmm(cn, torch.ones(adj.shape[0], 1)).squeeze(1)


def completed_neighbour_matrix(adj: torch.Tensor, pairs: torch.Tensor,
                               link_prob: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """NCNC's completed common neighbours (eq. 6) as a (P, N) CSR.

    A common neighbour gets weight 1; ``u in N(i) \\ N(j)`` gets ``link_prob((j, u))`` and
    ``u in N(j) \\ N(i)`` gets ``link_prob((i, u))``; i and j themselves are never counted.

    Args:
        adj: (N, N) binary CSR adjacency.
        pairs: (2, P) int64.
        link_prob: maps (2, K) pairs to (K,) probabilities that they are links.
    """
    _check_csr("adj", adj)
    n = adj.shape[0]
    check_pairs("pairs", pairs, n)
    own_i, nb_i = neighbour_lists(adj, pairs[0])
    own_j, nb_j = neighbour_lists(adj, pairs[1])
    key_i, key_j = own_i * n + nb_i, own_j * n + nb_j
    in_j, in_i = torch.isin(key_i, key_j), torch.isin(key_j, key_i)
    # show: start complete
    only_i = ~in_j & (nb_i != pairs[1][own_i])  # u in N(i) \ N(j), u != j
    only_j = ~in_i & (nb_j != pairs[0][own_j])  # u in N(j) \ N(i), u != i
    with torch.no_grad():
        p_ju = link_prob(torch.stack([pairs[1][own_i[only_i]], nb_i[only_i]]))
        p_iu = link_prob(torch.stack([pairs[0][own_j[only_j]], nb_j[only_j]]))
    keys = torch.cat([key_i[in_j], key_i[only_i], key_j[only_j]])
    values = torch.cat([torch.ones(int(in_j.sum())), p_ju, p_iu])
    # show: end complete
    order = torch.argsort(keys)
    return _csr(keys[order], values[order], pairs.shape[1], n)


class NCN(nn.Module):
    """GCN encoder, then ``MLP(h_i * h_j || C H)`` with ``C`` the common-neighbour matrix."""

    def __init__(self, in_features: int, hidden: int, *, n_layers: int = 2) -> None:
        super().__init__()
        self.encoder = GCN(in_features, hidden, n_layers=n_layers)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def neighbour_matrix(self, graph: LinkGraph, pairs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (P, N) matrix summed over: plain common neighbours for NCN."""
        return common_neighbour_matrix(graph.adj_binary, pairs)

    # show: start ncn-score
    def pair_logits(self, h: torch.Tensor, cn: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Logits (P,) from embeddings ``h`` (N, D) and a (P, N) neighbour matrix."""
        z = torch.cat([h[pairs[0]] * h[pairs[1]],  # what a GAE sees
                       spmm(cn, h)], dim=1)        # sum of h_u over common neighbours
        return self.head(z).squeeze(-1)

    def score(self, x: torch.Tensor, graph: LinkGraph, pairs: torch.Tensor) -> torch.Tensor:
        """Logits (P,) of the (2, P) ``pairs`` on the observed ``graph``."""
        h = self.encoder(x, graph.adj)
        return self.pair_logits(h, self.neighbour_matrix(graph, pairs, x), pairs)
    # show: end ncn-score


class NCNC(NCN):
    """NCN over completed common neighbours; ``completer`` (a trained NCN, frozen) gives p_ju.

    ``min_prob`` drops completions the completer is unsure of (p_ju below it), our miniature's
    stand-in for the sharpening of probabilities in the authors' code: on a graph whose
    non-edges are mostly easy, summing many small p_ju h_u blurs the sharp zero that plain
    common neighbours give a far-apart pair.
    """

    def __init__(self, in_features: int, hidden: int, completer: NCN, *, n_layers: int = 2,
                 min_prob: float = 0.0) -> None:
        super().__init__(in_features, hidden, n_layers=n_layers)
        min_prob = check_real("min_prob", min_prob, 0.0)
        if min_prob > 1.0:
            raise ValueError(f"min_prob must be in [0, 1], got {min_prob}")
        completer.requires_grad_(False)
        self.completer = completer
        self.min_prob = min_prob

    @classmethod
    def from_ncn(cls, ncn: NCN, *, min_prob: float = 0.0) -> NCNC:
        """An NCNC that starts from ``ncn``'s weights and completes with a frozen copy of it."""
        hidden = ncn.head[0].in_features // 2
        layers = ncn.encoder.layers
        model = cls(layers[0].in_features, hidden, copy.deepcopy(ncn), n_layers=len(layers),
                    min_prob=min_prob)
        model.load_state_dict(ncn.state_dict(), strict=False)
        return model

    def neighbour_matrix(self, graph: LinkGraph, pairs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.completer.encoder(x, graph.adj)

        def link_prob(uv: torch.Tensor) -> torch.Tensor:
            cn = common_neighbour_matrix(graph.adj_binary, uv)
            p = torch.sigmoid(self.completer.pair_logits(h, cn, uv))
            return p * (p >= self.min_prob)

        return completed_neighbour_matrix(graph.adj_binary, pairs, link_prob)

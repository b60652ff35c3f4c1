"""Topological Concentration (TC) and its approximation (ATC): which nodes a link predictor fails.

Wang, Zhao, Zhao, Liu, Cheng, Shah & Derr, "A Topological Perspective on Demystifying GNN-Based
Link Prediction Performance" (arXiv:2310.04612). A node is easy for a GNN link predictor when
its future neighbours live where its present neighbours live, because message passing then has
already pulled their embeddings together. TC measures that: for each neighbour j of i, how much
the K-hop neighbourhoods S_i and S_j overlap, averaged over the neighbours,

    TC_i = mean_{j in N(i)} |S_i & S_j| / g(S_i, S_j).

The paper writes ``g`` as a normalisation; the authors' public code (repository
``YuWVandy/Topo_LP_GNN``, its TC routine) divides by the size of node i's own neighbourhood,
less one for the neighbour j itself, which S_j cannot contain: ``g = |S_i| - 1``, so each term
is the share of i's other K-hop nodes that j also reaches, and TC lies in [0, 1]. At K = 1 this
is that code's value exactly; for K > 1 the code counts walks per hop and weighs hop pairs by a
decay, where we use the K-hop *sets*. The intersections of all edges at once are
common-neighbour counts on the K-hop reachability graph, so chapter 02's
:func:`~labkit.graphs.ncn.common_neighbour_counts` computes them. ``normalisation="union"``
gives the symmetric Jaccard variant ``g = |S_i | S_j|`` for comparison.

Exact TC needs the K-hop sets, whose size explodes with K. ATC replaces them by K rounds of
propagating random vectors (the same ``spmm`` as a GCN layer) and compares neighbours by cosine
similarity: two nodes whose propagated vectors agree share much of their K-hop neighbourhood.

:func:`concentration_graph` plants the paper's mechanism: every node sends a share ``q_i`` of
its edges to random nodes outside its community ("new neighbours that do not interact with the
existing ones"), so a node's concentration and its predictability both fall with ``q_i`` while
its degree does not depend on it. :func:`tc_edge_weights` re-weights edges by the overlap of
their endpoints, the paper's TC-raising message passing, in our simplest form.

What the miniature leaves out: the paper's per-type neighbourhoods (training vs. test edges)
and its decay over hops; its exact ATC normalisation; real graphs (Collab, Citeseer, ...).

Shapes: N nodes, M directed edges, R random dimensions.
Section: chapter 02, "Topological Concentration".
"""

from __future__ import annotations

import torch

from ..validation import check_int, check_real
from .csbm import Graph
from .edges import check_edge_index, gcn_norm, to_csr
from .ncn import common_neighbour_counts
from .sparse import spmm

__all__ = ["approx_topological_concentration", "concentration_graph", "khop_reach",
           "per_node_recall", "tc_edge_weights", "topological_concentration"]


def _ones(m: torch.Tensor) -> torch.Tensor:
    """The sparsity pattern of a COO matrix, values set to one."""
    m = m.coalesce()
    return torch.sparse_coo_tensor(m.indices(), torch.ones(m.indices().shape[1]), m.shape,
                                   check_invariants=False).coalesce()


def khop_reach(edge_index: torch.Tensor, num_nodes: int, k: int) -> torch.Tensor:
    """(N, N) binary CSR: ``S[i, u] = 1`` when u is 1 to k hops from i (u != i).

    Built with sparse products, ``reach_k = pattern(reach_{k-1} + reach_{k-1} A)``: memory grows
    with the K-hop neighbourhoods, which is what makes exact TC expensive for large K.
    """
    check_edge_index(edge_index, num_nodes)
    k = check_int("k", k, 1)
    adj = _ones(to_csr(edge_index, num_nodes).to_sparse_coo())
    reach = adj
    for _ in range(k - 1):
        step = (reach.to_sparse_csr() @ adj.to_sparse_csr()).to_sparse_coo()
        reach = _ones(reach + step)
    idx = reach.indices()
    off = idx[0] != idx[1]  # u != i
    key = idx[0, off] * num_nodes + idx[1, off]  # already sorted by (row, col)
    crow = torch.zeros(num_nodes + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(idx[0, off], minlength=num_nodes), 0)
    return torch.sparse_csr_tensor(crow, key % num_nodes, torch.ones(key.numel()),
                                   (num_nodes, num_nodes), check_invariants=False)


def _edge_mean(values: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Mean over each node's out-edges of a per-edge value; 0 for isolated nodes."""
    src = edge_index[0]
    total = torch.zeros(num_nodes).index_add_(0, src, values)
    count = torch.bincount(src, minlength=num_nodes).clamp(min=1)
    return total / count


def topological_concentration(edge_index: torch.Tensor, num_nodes: int, *, k: int = 1,
                              normalisation: str = "own") -> torch.Tensor:
    """Exact TC of every node: (N,) in [0, 1] (module docstring).

    Args:
        edge_index: (2, M) undirected graph (both directions).
        num_nodes: N.
        k: hops of the neighbourhoods S_i, at least 1.
        normalisation: ``"own"`` (the authors' code: ``|S_i| - 1``) or ``"union"``
            (Jaccard: ``|S_i | S_j|``).
    """
    if normalisation not in ("own", "union"):
        raise ValueError(f"normalisation must be 'own' or 'union', got {normalisation!r}")
    # show: start tc
    reach = khop_reach(edge_index, num_nodes, k)  # S_i as rows
    size = spmm(reach, torch.ones(num_nodes, 1)).squeeze(1)  # |S_i|
    inter = common_neighbour_counts(reach, edge_index)  # |S_i & S_j| per edge
    if normalisation == "own":  # i's K-hop nodes other than j (S_j never holds j)
        norm = size[edge_index[0]] - 1
    else:
        norm = size[edge_index[0]] + size[edge_index[1]] - inter
    overlap = inter / norm.clamp(min=1)
    return _edge_mean(overlap, edge_index, num_nodes)  # mean over j in N(i)
    # show: end tc


def approx_topological_concentration(edge_index: torch.Tensor, num_nodes: int, *, k: int = 1,
                                     dim: int = 64, seed: int = 0) -> torch.Tensor:
    """ATC: mean cosine similarity of neighbours' K-step propagated random vectors, (N,).

    ``Z = sum_{l=1..k} A_hat^l R`` with ``A_hat = D^{-1/2} A D^{-1/2}`` and R (N, dim) Gaussian.
    """
    check_edge_index(edge_index, num_nodes)
    k = check_int("k", k, 1)
    dim = check_int("dim", dim, 1)
    # show: start atc
    ei, w = gcn_norm(edge_index, num_nodes)
    adj = to_csr(ei, num_nodes, w)
    r = torch.randn(num_nodes, dim, generator=torch.Generator().manual_seed(seed))
    z, total = r, torch.zeros_like(r)
    for _ in range(k):  # K rounds of message passing on random features
        z = spmm(adj, z)
        total = total + z
    total = torch.nn.functional.normalize(total, dim=1)
    cos = (total[edge_index[0]] * total[edge_index[1]]).sum(1)  # one value per edge
    return _edge_mean(cos, edge_index, num_nodes)
    # show: end atc


def concentration_graph(n_nodes: int, n_communities: int, *, edges_per_node: tuple[int, int] = (3, 8),
                        max_outside: float = 0.8, n_features: int = 16, signal: float = 1.0,
                        seed: int = 0) -> Graph:
    """Communities whose nodes differ in how far their neighbours stray (the paper's mechanism).

    Node i draws ``m_i`` edges (uniform in ``edges_per_node``) and a share ``q_i`` uniform in
    [0, ``max_outside``]; each edge goes to a random node of i's community with probability
    ``1 - q_i``, else to a random node anywhere. Features are community means plus noise, as in
    the CSBM. ``Graph.labels`` holds the communities; ``q_i`` is not returned to models.
    """
    n_nodes = check_int("n_nodes", n_nodes, 2)
    n_communities = check_int("n_communities", n_communities, 1, n_nodes)
    lo, hi = (check_int(f"edges_per_node[{i}]", v, 1) for i, v in enumerate(edges_per_node))
    if hi < lo:
        raise ValueError(f"edges_per_node must be (low, high) with low <= high, got {edges_per_node}")
    max_outside = check_real("max_outside", max_outside, 0.0)
    if max_outside > 1.0:
        raise ValueError(f"max_outside must be in [0, 1], got {max_outside}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_nodes) % n_communities
    size = torch.bincount(labels, minlength=n_communities)
    m = torch.randint(lo, hi + 1, (n_nodes,), generator=gen)
    q = torch.rand(n_nodes, generator=gen) * max_outside
    src = torch.repeat_interleave(torch.arange(n_nodes), m)
    outside = torch.rand(src.numel(), generator=gen) < q[src]
    # inside: a random member of the community (members are c, c + C, c + 2C, ...)
    member = (torch.rand(src.numel(), generator=gen) * size[labels[src]]).long()
    dst = torch.where(outside, torch.randint(0, n_nodes, (src.numel(),), generator=gen),
                      labels[src] + member * n_communities)
    keep = src != dst
    pairs = torch.stack([src[keep], dst[keep]])
    lo_id, hi_id = pairs.min(0).values, pairs.max(0).values
    key = torch.unique(lo_id * n_nodes + hi_id)
    und = torch.stack([key // n_nodes, key % n_nodes])
    edge_index = torch.cat([und, und.flip(0)], dim=1)
    means = torch.randn(n_communities, n_features, generator=gen)
    means = signal * means / means.norm(dim=1, keepdim=True)
    x = means[labels] + torch.randn(n_nodes, n_features, generator=gen)
    return Graph(edge_index, x, labels, f"planted concentration ({n_nodes} nodes)")


def per_node_recall(scores: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *, k: int = 20
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each node's Recall@K of its test neighbours, ranking every node it has no training edge to.

    Args:
        scores: (N, N) pair scores (symmetric).
        train, test: (2, E) undirected pairs, each stored once.
        k: K >= 1.

    Returns:
        ``(nodes, recall)``: the nodes with at least one test edge, and their Recall@K.
    """
    n = scores.shape[0]
    k = check_int("k", k, 1)
    masked = scores.clone()
    masked[train[0], train[1]] = float("-inf")  # known links are not candidates
    masked[train[1], train[0]] = float("-inf")
    masked.fill_diagonal_(float("-inf"))
    top = torch.topk(masked, min(k, n - 1), dim=1).indices  # (N, K)
    hit = torch.zeros(n, n, dtype=torch.bool)
    hit.scatter_(1, top, True)
    both = torch.cat([test, test.flip(0)], dim=1)
    found = torch.zeros(n).index_add_(0, both[0], hit[both[0], both[1]].float())
    count = torch.bincount(both[0], minlength=n).float()
    nodes = torch.nonzero(count > 0).squeeze(1)
    return nodes, found[nodes] / count[nodes]


def tc_edge_weights(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Per-edge weights ``1 + |N(i) & N(j)|``: message passing favours neighbours that share
    neighbours, which raises the concentration the encoder sees. (M,) float32."""
    check_edge_index(edge_index, num_nodes)
    adj = khop_reach(edge_index, num_nodes, 1)
    return 1.0 + common_neighbour_counts(adj, edge_index)

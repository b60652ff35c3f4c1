"""Link prediction without leakage: edge splits, negative pairs, and OGB's Hits@K and MRR.

A link predictor scores a pair of nodes; it is evaluated on edges it has never seen. *Never seen*
has two halves: the held-out edges are not training targets, and they are not in the graph the
model propagates over either (a GCN that aggregates over a test edge has been told the answer).
:func:`split_edges` therefore returns the training graph as the only graph a model may use, and
keeps every endpoint of a held-out edge attached to it by at least one training edge (a node
with no training edge has no structure to predict from).

The metrics follow the Open Graph Benchmark's evaluator (Hu et al., "Open Graph Benchmark",
arXiv:2005.00687): **Hits@K** counts the positives scored strictly above the K-th highest score
of one shared set of negatives; **MRR** ranks each positive among its own negatives, a tie
counting half (the mean of the optimistic and the pessimistic rank).

Shapes: N nodes, E undirected edges stored once as (2, E) with ``i < j``, P positive pairs,
Q negatives.
Section: chapter 02, "Link prediction with common neighbours".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validation import check_int, check_real, check_tensor
from .edges import check_edge_index

__all__ = ["LinkSplit", "check_pairs", "hits_at_k", "mrr", "sample_negatives", "split_edges",
           "undirected", "unique_pairs"]


def check_pairs(name: str, pairs: object, num_nodes: int) -> torch.Tensor:
    """Return ``pairs`` if it is a (2, P) int64 tensor of node ids in ``[0, num_nodes)``."""
    check_tensor(name, pairs, dims=2, dtype=torch.int64, shape="(2, P)")
    if pairs.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, P), got {tuple(pairs.shape)}")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= num_nodes):
        raise ValueError(f"{name} holds node ids outside [0, {num_nodes}): "
                         f"[{int(pairs.min())}, {int(pairs.max())}]")
    return pairs


def unique_pairs(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Each undirected edge once, as (2, E) with ``i < j``, sorted; self loops dropped."""
    check_edge_index(edge_index, num_nodes)
    lo = torch.minimum(edge_index[0], edge_index[1])
    hi = torch.maximum(edge_index[0], edge_index[1])
    keep = lo != hi
    key = torch.unique(lo[keep] * num_nodes + hi[keep])
    return torch.stack([key // num_nodes, key % num_nodes])


def undirected(pairs: torch.Tensor) -> torch.Tensor:
    """Both directions of each pair: (2, P) -> (2, 2P)."""
    return torch.cat([pairs, pairs.flip(0)], dim=1)


@dataclass(frozen=True)
class LinkSplit:
    """Edges of one graph split for link prediction.

    Attributes:
        num_nodes: N.
        train: (2, E_train) training edges, ``i < j``; the ONLY edges a model may propagate over.
        valid, test: (2, P) held-out positive pairs.
        valid_neg, test_neg: (2, Q) non-edges of the whole graph, shared by all positives.
    """

    num_nodes: int
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    valid_neg: torch.Tensor
    test_neg: torch.Tensor

    @property
    def train_edge_index(self) -> torch.Tensor:
        """The graph a model may see: training edges in both directions, (2, 2 E_train)."""
        return undirected(self.train)


def split_edges(edge_index: torch.Tensor, num_nodes: int, *, valid_ratio: float = 0.05,
                test_ratio: float = 0.1, n_negatives: int | None = None, seed: int = 0) -> LinkSplit:
    """Hold out random edges for validation and test, keeping every endpoint in the training graph.

    Edges are visited in a random order and held out only while both endpoints keep at least one
    training edge, so no held-out pair has an endpoint that the training graph leaves isolated.

    Args:
        edge_index: (2, M) undirected graph (either or both directions stored).
        num_nodes: N.
        valid_ratio, test_ratio: shares of the undirected edges to hold out, in [0, 1].
        n_negatives: Q non-edges for each of validation and test (default: as many as test
            positives).
        seed: seed of the split and of the negatives.

    Raises:
        ValueError: a ratio outside [0, 1] or summing past 1, or too few edges can be held out
            without leaving an endpoint with no training edge.
    """
    check_edge_index(edge_index, num_nodes)
    valid_ratio = check_real("valid_ratio", valid_ratio, 0.0)
    test_ratio = check_real("test_ratio", test_ratio, 0.0)
    for name, r in (("valid_ratio", valid_ratio), ("test_ratio", test_ratio)):
        if r > 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {r}")
    if valid_ratio + test_ratio >= 1.0:
        raise ValueError(f"valid_ratio + test_ratio must be < 1, got {valid_ratio + test_ratio}")
    pairs = unique_pairs(edge_index, num_nodes)
    n_edges = pairs.shape[1]
    n_valid, n_test = round(valid_ratio * n_edges), round(test_ratio * n_edges)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_edges, generator=gen).tolist()
    deg = torch.bincount(pairs.flatten(), minlength=num_nodes).tolist()
    held: list[int] = []
    for e in order:  # greedy: hold out while both endpoints keep a training edge
        if len(held) == n_valid + n_test:
            break
        i, j = int(pairs[0, e]), int(pairs[1, e])
        if deg[i] > 1 and deg[j] > 1:
            deg[i] -= 1
            deg[j] -= 1
            held.append(e)
    if len(held) < n_valid + n_test:
        raise ValueError(f"only {len(held)} of the {n_valid + n_test} requested edges can be held out "
                         "without leaving a test endpoint with no training edge; lower the ratios")
    held_t = torch.tensor(held, dtype=torch.int64)
    mask = torch.ones(n_edges, dtype=torch.bool)
    mask[held_t] = False
    q = n_test if n_negatives is None else check_int("n_negatives", n_negatives, 1)
    negs = sample_negatives(edge_index, num_nodes, 2 * q, seed=seed + 1)
    return LinkSplit(num_nodes, pairs[:, mask], pairs[:, held_t[:n_valid]], pairs[:, held_t[n_valid:]],
                     negs[:, :q], negs[:, q:])


def sample_negatives(edge_index: torch.Tensor, num_nodes: int, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` distinct pairs ``i < j`` that are not edges of ``edge_index``: (2, n) int64.

    Raises:
        ValueError: fewer than ``n`` non-edges exist.
    """
    check_edge_index(edge_index, num_nodes)
    n = check_int("n", n, 1)
    edges = unique_pairs(edge_index, num_nodes)
    n_free = num_nodes * (num_nodes - 1) // 2 - edges.shape[1]
    if n > n_free:
        raise ValueError(f"n must be at most the {n_free} non-edges of the graph, got {n}")
    taken = set((edges[0] * num_nodes + edges[1]).tolist())
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < n:
        draw = torch.randint(0, num_nodes, (2, 2 * (n - len(out)) + 16), generator=gen)
        lo, hi = draw.min(0).values, draw.max(0).values
        for key in (lo * num_nodes + hi)[lo != hi].tolist():
            if key not in taken and key not in seen:
                seen.add(key)
                out.append(key)
                if len(out) == n:
                    break
    keys = torch.tensor(out, dtype=torch.int64)
    return torch.stack([keys // num_nodes, keys % num_nodes])


# show: start metrics
def hits_at_k(pos: torch.Tensor, neg: torch.Tensor, k: int) -> float:
    """OGB's Hits@K: the share of positive scores strictly above the K-th best negative.

    Args:
        pos: (P,) scores of the positive pairs.
        neg: (Q,) scores of ONE set of negatives shared by all positives.
        k: K >= 1; with fewer than K negatives every positive counts as a hit.
    """
    check_tensor("pos", pos, dims=1, dtype="float", shape="(P,)")
    check_tensor("neg", neg, dims=1, dtype="float", shape="(Q,)")
    k = check_int("k", k, 1)
    if pos.numel() == 0:
        raise ValueError("pos must hold at least one score")
    if neg.numel() < k:
        return 1.0
    kth = torch.topk(neg, k).values[-1]  # the bar a positive must clear
    return float((pos > kth).float().mean())


def mrr(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """OGB's mean reciprocal rank, each positive ranked among its own negatives.

    The rank is 1 + the mean of the optimistic (negatives strictly above) and the pessimistic
    (negatives at or above) counts, so ties cost half a place.

    Args:
        pos: (P,) positive scores.
        neg: (P, Q) the negatives of each positive.
    """
    check_tensor("pos", pos, dims=1, dtype="float", shape="(P,)")
    check_tensor("neg", neg, dims=2, dtype="float", shape="(P, Q)")
    if neg.shape[0] != pos.shape[0] or pos.numel() == 0:
        raise ValueError(f"neg must have one row per positive, (P={pos.numel()}, Q), "
                         f"got {tuple(neg.shape)}")
    above = (neg > pos[:, None]).sum(1).float()
    at_or_above = (neg >= pos[:, None]).sum(1).float()
    rank = 1.0 + 0.5 * (above + at_or_above)
    return float((1.0 / rank).mean())
# show: end metrics

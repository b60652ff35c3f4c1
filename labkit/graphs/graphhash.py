"""GraphHash: share embedding rows between IDs that the interaction graph puts together.

Paper: "GraphHash: Graph Clustering Enables Parameter Efficiency in Recommender Systems"
(Wu et al., arXiv:2412.17245).

An ID-embedding recommender keeps one row per user and per item, and those tables are most of its
memory. *ID hashing* maps the U users (I items) onto fewer rows, so that several IDs share one
embedding; a random hash lets unrelated IDs collide. GraphHash instead clusters the bipartite
user-item training graph by modularity (Louvain) and gives the IDs of one cluster the same row, so
that the IDs that collide are those that message passing would have made similar anyway.

What this miniature implements:

- :func:`random_hash_buckets`, the baseline: a seeded *balanced* random assignment (every row holds
  the same number of IDs, give or take one), the best case of a random hash;
- :func:`graphhash_buckets`: networkx's seeded Louvain on the bipartite graph, its resolution
  bisected separately for users and items until that side has at least the requested number of
  clusters, then an exact fit: the smallest cluster merges into the cluster whose interaction
  profile is most similar (cosine) until the count is met; if Louvain gives too few clusters, the
  largest splits into its higher- and lower-degree halves. IDs without training interactions share
  one cluster.
- :class:`HashedMF`: BPR matrix factorisation whose user and item embeddings are looked up through
  one or more bucket maps and summed (:class:`HashedEmbedding`); one graph map plus one random map
  is the paper's "DoubleGraphHash" combination.
- :func:`train_hashed_mf` (BPR, early stopping on validation Recall@K) and :func:`table_size`.

Memory: a random hash is a formula, computed on the fly (the seeded permutation here stands in for
one such as ``((a id + b) mod p) mod B``), so it needs no storage beyond the rows. A GraphHash map
cannot be recomputed from the ID: it is a stored ID-to-row table, one integer (4 bytes as int32,
8 as int64) per ID. :func:`table_size` counts it with ``stored_maps``; at small tables it is a
large share of the memory (a row of D float32 costs 4 D bytes, shared by N / B IDs).

Left out: the paper's CTR models and feature fields, its other hashing baselines, a null model
specific to bipartite graphs (we use the ordinary modularity), and any large-scale clustering
engine (networkx's pure-Python Louvain suffices at book sizes).

Shapes: U users, I items, N IDs on one side, B buckets (rows), E training pairs, D embedding dim.
Section: chapter 01, "GraphHash".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from torch import nn

from ..validation import check_int
from .bpr import bpr_batches, bpr_loss
from .interactions import Interactions
from .train import FitResult, fit

__all__ = ["HashedEmbedding", "HashedMF", "HashedMFConfig", "TableSize",
           "graphhash_buckets", "random_hash_buckets", "table_size", "train_hashed_mf"]



def _check_pairs(pairs: object, n_users: int, n_items: int) -> torch.Tensor:
    if not isinstance(pairs, torch.Tensor):
        raise TypeError(f"train_pairs must be a tensor, got {type(pairs).__name__}")
    if pairs.dim() != 2 or pairs.shape[0] != 2:
        raise ValueError(f"train_pairs must have shape (2, E), got {tuple(pairs.shape)}")
    if pairs.dtype != torch.int64:
        raise TypeError(f"train_pairs must be int64, got {pairs.dtype}")
    if pairs.numel() and (pairs.min() < 0 or pairs[0].max() >= n_users or pairs[1].max() >= n_items):
        raise ValueError(f"train_pairs has ids out of range: users must be in [0, {n_users}), items in [0, {n_items})")
    return pairs.cpu()


def random_hash_buckets(n_ids: int, n_buckets: int, *, seed: int) -> torch.Tensor:
    """The baseline hash: a seeded random permutation of the IDs, taken modulo ``n_buckets``.

    Every bucket receives ``floor(N / B)`` or ``ceil(N / B)`` IDs, so no row is wasted; which IDs
    share a row is pure chance. Returns (N,) int64 bucket ids in [0, B).
    """
    # show: start random-hash
    n_ids = check_int("n_ids", n_ids, 1)
    n_buckets = check_int("n_buckets", n_buckets, 1, n_ids)
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    # a shuffled id modulo B: row b holds the ids shuffled to b, b + B, ...
    return torch.randperm(n_ids, generator=g) % n_buckets
    # show: end random-hash


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Cluster ids 0..k-1 in order of first appearance."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def _fit_exactly(labels: np.ndarray, profile: np.ndarray, degree: np.ndarray, n_buckets: int) -> np.ndarray:
    """Merge or split clusters of one side until exactly ``n_buckets`` remain (see module doc).

    ``profile`` is the (N, I') interaction matrix of this side with the other side.
    """
    # show: start fit
    labels = _relabel(labels)  # cluster ids 0..k-1
    k = int(labels.max()) + 1
    while k < n_buckets:  # too few: split the largest cluster by degree
        sizes = np.bincount(labels, minlength=k)
        members = np.flatnonzero(labels == int(np.argmax(sizes)))
        by_degree = members[np.argsort(-degree[members], kind="stable")]
        labels[by_degree[len(by_degree) // 2:]] = k  # lower half: new cluster
        k += 1
    if k == n_buckets:
        return labels
    # too many: merge the smallest cluster into the most similar one, where a
    # cluster's profile sums its members' rows of the interaction matrix
    index = torch.from_numpy(labels)
    prof = torch.zeros(k, profile.shape[1]).index_add_(
        0, index, torch.from_numpy(profile).float())  # (k, I')
    norms = prof.norm(dim=1) + 1e-12
    sizes = torch.bincount(index, minlength=k).double()
    for _ in range(k - n_buckets):
        small = int(torch.argmin(sizes))
        cosine = prof @ prof[small] / (norms * norms[small])  # (k,)
        cosine[sizes == float("inf")] = -float("inf")  # merged away
        cosine[small] = -float("inf")
        target = int(torch.argmax(cosine))
        labels[labels == small] = target
        prof[target] += prof[small]
        norms[target] = prof[target].norm() + 1e-12
        sizes[target] += sizes[small]
        sizes[small] = float("inf")
    return _relabel(labels)  # row ids 0..B-1
    # show: end fit


def graphhash_buckets(train_pairs: torch.Tensor, n_users: int, n_items: int, *, n_user_buckets: int,
                      n_item_buckets: int, resolution: float | None = None, seed: int = 0,
                      max_search: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """GraphHash bucket maps from Louvain clusters of the bipartite training graph.

    Users are nodes 0..U-1 and items U..U+I-1 of an undirected graph with one edge per training
    pair. Louvain (seeded) maximises modularity ``Q = 1/2m sum_ij (A_ij - gamma k_i k_j / 2m) [c_i = c_j]``;
    a larger resolution ``gamma`` yields more, smaller clusters. With ``resolution=None`` gamma is
    bisected in log2 over [-1, 9] (``max_search`` steps), separately for users and items (sharing
    the runs), for the smallest value giving that side at least its number of rows; then each side
    is fitted to the exact count (module doc).
    IDs with no training pair form one shared cluster per side.

    Args:
        train_pairs: (2, E) int64 ``[user; item]`` training pairs.
        n_users, n_items: U and I.
        n_user_buckets, n_item_buckets: rows of each table, in [1, U] and [1, I].
        resolution: a fixed Louvain resolution > 0, or None to search for one.
        seed: seeds Louvain.
        max_search: bisection steps per side (each a Louvain run unless already done).

    Returns:
        ``(user_buckets (U,), item_buckets (I,))`` int64; every bucket id in range is used.
    """
    n_users, n_items = check_int("n_users", n_users, 1), check_int("n_items", n_items, 1)
    n_user_buckets = check_int("n_user_buckets", n_user_buckets, 1, n_users)
    n_item_buckets = check_int("n_item_buckets", n_item_buckets, 1, n_items)
    pairs = _check_pairs(train_pairs, n_users, n_items)
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, (int, float))
                                   or not resolution > 0):
        raise ValueError(f"resolution must be a number > 0 or None, got {resolution!r}")
    seed = check_int("seed", seed, 0)
    max_search = check_int("max_search", max_search, 1)
    graph = nx.Graph()
    graph.add_nodes_from(range(n_users + n_items))
    graph.add_edges_from(zip(pairs[0].tolist(), (pairs[1] + n_users).tolist()))
    adj = np.zeros((n_users, n_items))  # (U, I) training interactions
    adj[pairs[0].numpy(), pairs[1].numpy()] = 1.0
    side = (slice(0, n_users), slice(n_users, n_users + n_items))
    isolated = np.array([graph.degree(v) == 0 for v in range(n_users + n_items)])

    # show: start clusters
    def louvain(gamma: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Cluster label of every node, and the number of clusters per side."""
        labels = np.empty(n_users + n_items, dtype=np.int64)
        parts = nx.community.louvain_communities(graph, resolution=gamma,
                                                 seed=seed)
        for c, nodes in enumerate(parts):
            labels[list(nodes)] = c  # users and items of cluster c
        labels[isolated] = -1  # no interactions, no signal: one shared cluster
        return labels, tuple(np.unique(labels[s]).size for s in side)
    # show: end clusters

    runs: dict[float, tuple[np.ndarray, tuple[int, int]]] = {}  # log2(gamma) -> Louvain result

    def run(log_gamma: float) -> tuple[np.ndarray, tuple[int, int]]:
        if log_gamma not in runs:
            runs[log_gamma] = louvain(2.0**log_gamma)
        return runs[log_gamma]

    def search(which: int, need: int) -> np.ndarray:
        """Bisect log2(gamma) in [-1, 9] for the smallest gamma giving side ``which`` >= need clusters."""
        lo, hi, best = -1.0, 9.0, None
        for _ in range(max_search):
            mid = (lo + hi) / 2
            labels, counts = run(mid)
            if counts[which] >= need:
                hi, best = mid, labels
            else:
                lo = mid
        return best if best is not None else run(hi)[0]  # never enough: the finest searched, then split

    if resolution is not None:
        user_labels = item_labels = louvain(float(resolution))[0]
    else:  # each side gets its own resolution; the runs are shared
        user_labels, item_labels = search(0, n_user_buckets), search(1, n_item_buckets)
    users = _fit_exactly(user_labels[side[0]], adj, adj.sum(1), n_user_buckets)
    items = _fit_exactly(item_labels[side[1]], adj.T, adj.sum(0), n_item_buckets)
    return torch.from_numpy(users), torch.from_numpy(items)


class HashedEmbedding(nn.Module):
    """Embeddings looked up through bucket maps: ``e(id) = sum_t table_t[bucket_t[id]]``.

    One map is plain hashing (random or GraphHash); two maps with their own tables are double
    hashing (graph + random: the paper's DoubleGraphHash).

    Args:
        buckets: one (N,) int64 bucket map, or a sequence of them (same N).
        dim: D.
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, buckets: torch.Tensor | Sequence[torch.Tensor], dim: int, *, init_std: float = 0.1) -> None:
        super().__init__()
        maps = [buckets] if isinstance(buckets, torch.Tensor) else list(buckets)
        if not maps or not all(isinstance(m, torch.Tensor) for m in maps):
            raise TypeError("buckets must be a tensor or a non-empty sequence of tensors")
        n_ids = maps[0].numel()
        for t, m in enumerate(maps):
            if m.dim() != 1 or m.numel() != n_ids or m.dtype != torch.int64:
                raise ValueError(f"bucket map {t} must be int64 of shape ({n_ids},), got {m.dtype} {tuple(m.shape)}")
            if n_ids == 0 or m.min() < 0:
                raise ValueError(f"bucket map {t} must be non-empty with bucket ids >= 0")
        dim = check_int("dim", dim, 1)
        self.n_ids = n_ids
        for t, m in enumerate(maps):
            self.register_buffer(f"bucket_{t}", m.clone())
        self.tables = nn.ModuleList(nn.Embedding(int(m.max()) + 1, dim) for m in maps)
        for table in self.tables:
            nn.init.normal_(table.weight, std=init_std)

    @property
    def n_rows(self) -> int:
        """Rows over all tables (the parameter budget is ``n_rows * D``)."""
        return sum(t.num_embeddings for t in self.tables)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) ids -> (B, D) embeddings."""
        rows = [getattr(self, f"bucket_{t}")[ids] for t in range(len(self.tables))]
        return sum(table(r) for table, r in zip(self.tables, rows))  # (B, D)


class HashedMF(nn.Module):
    """BPR matrix factorisation, ``score(u, i) = <e_user(u), e_item(i)>``, with hashed tables."""

    def __init__(self, user_buckets: torch.Tensor | Sequence[torch.Tensor],
                 item_buckets: torch.Tensor | Sequence[torch.Tensor], dim: int, *, init_std: float = 0.1) -> None:
        super().__init__()
        self.users = HashedEmbedding(user_buckets, dim, init_std=init_std)
        self.items = HashedEmbedding(item_buckets, dim, init_std=init_std)
        self.dim = dim

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (B,) users against (B,) or (B, n) items -> (B,) or (B, n)."""
        u = self.users(users)
        v = self.items(items)
        return (u.unsqueeze(1) * v).sum(-1) if items.dim() == 2 else (u * v).sum(-1)

    def all_scores(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) users -> (B, I) scores against every item."""
        device = self.items.bucket_0.device
        every = torch.arange(self.items.n_ids, device=device)
        return self.users(users.to(device)) @ self.items(every).T

    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every user's (U, d) and every item's (I, d) looked-up embedding (for :func:`~labkit.graphs.train.fit`)."""
        device = self.items.bucket_0.device
        return (self.users(torch.arange(self.users.n_ids, device=device)),
                self.items(torch.arange(self.items.n_ids, device=device)))


@dataclass(frozen=True)
class TableSize:
    """Memory of hashed tables against the full one-row-per-ID tables (float32 unless told).

    ``bytes`` counts the rows and ``map_bytes``, the stored ID-to-row maps (none for a hash
    computed on the fly; the full tables need none either: the ID is the row).
    """

    rows: int
    full_rows: int
    dim: int
    bytes_per_value: int = 4
    map_bytes: int = 0

    @property
    def params(self) -> int:
        return self.rows * self.dim

    @property
    def table_bytes(self) -> int:
        """Bytes of the embedding rows alone."""
        return self.params * self.bytes_per_value

    @property
    def bytes(self) -> int:
        """Rows plus stored maps: what the model needs in memory."""
        return self.table_bytes + self.map_bytes

    @property
    def full_bytes(self) -> int:
        return self.full_rows * self.dim * self.bytes_per_value

    @property
    def fraction(self) -> float:
        """Hashed rows / full rows."""
        return self.rows / self.full_rows

    @property
    def memory_fraction(self) -> float:
        """Hashed bytes (rows and maps) / full bytes."""
        return self.bytes / self.full_bytes


def table_size(model: HashedMF, *, stored_maps: int = 0, index_bytes: int = 4) -> TableSize:
    """Rows, parameters and bytes of ``model``'s tables against the unhashed U + I rows.

    Args:
        model: the hashed model.
        stored_maps: how many of each side's bucket maps must be stored, one integer per ID
            (1 for GraphHash, alone or with a random hash; 0 for random hashing, a formula).
        index_bytes: bytes per stored row index (4: int32).

    Returns:
        :class:`TableSize` with ``map_bytes = stored_maps * (U + I) * index_bytes``.
    """
    if not isinstance(model, HashedMF):
        raise TypeError(f"model must be a HashedMF, got {type(model).__name__}")
    n_maps = min(len(model.users.tables), len(model.items.tables))
    stored_maps = check_int("stored_maps", stored_maps, 0, n_maps)
    index_bytes = check_int("index_bytes", index_bytes, 1)
    weight = model.users.tables[0].weight
    n_ids = model.users.n_ids + model.items.n_ids
    return TableSize(rows=model.users.n_rows + model.items.n_rows, full_rows=n_ids,
                     dim=model.dim, bytes_per_value=weight.element_size(),
                     map_bytes=stored_maps * n_ids * index_bytes)


@dataclass(frozen=True)
class HashedMFConfig:
    """Training knobs of :func:`train_hashed_mf` (Adam on BPR, L2 on the rows of each batch)."""

    lr: float = 5e-3
    l2: float = 1e-4
    batch_size: int = 1024
    max_epochs: int = 40
    eval_every: int = 2
    patience: int = 3
    k: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.l2 < 0:
            raise ValueError(f"lr must be > 0 and l2 >= 0, got lr={self.lr}, l2={self.l2}")
        for name in ("batch_size", "max_epochs", "eval_every", "patience", "k"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)


def train_hashed_mf(model: HashedMF, data: Interactions, *, config: HashedMFConfig = HashedMFConfig(),
                    progress: bool = False) -> FitResult:
    """Train ``model`` with BPR (Rendle et al., eq. 4) and keep the weights of the best validation Recall@K.

    The epochs run through :func:`labkit.graphs.train.fit`: evaluation every ``eval_every``
    epochs, stop after ``patience`` evaluations without improvement, best weights loaded back.
    Runs where the model's tensors are.
    """
    if not isinstance(model, HashedMF):
        raise TypeError(f"model must be a HashedMF, got {type(model).__name__}")
    if not isinstance(data, Interactions):
        raise TypeError(f"data must be an Interactions, got {type(data).__name__}")
    if (model.users.n_ids, model.items.n_ids) != (data.n_users, data.n_items):
        raise ValueError(f"model has {model.users.n_ids} users / {model.items.n_ids} items, "
                         f"data has {data.n_users} / {data.n_items}")
    device = model.items.bucket_0.device
    g = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)

    def run_epoch(epoch: int) -> float:
        total, n = 0.0, 0
        for users, pos, neg in bpr_batches(data.train, data.n_items, batch_size=config.batch_size, generator=g):
            users, pos, neg = users.to(device), pos.to(device), neg[:, 0].to(device)
            u, p, q = model.users(users), model.items(pos), model.items(neg)
            loss = bpr_loss((u * p).sum(-1), (u * q).sum(-1))
            loss = loss + config.l2 * (u.square().sum() + p.square().sum() + q.square().sum()) / users.numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * users.numel(), n + users.numel()
        return total / max(n, 1)

    return fit(model, run_epoch, data, max_epochs=config.max_epochs, patience=config.patience,
               eval_every=config.eval_every, k=config.k, disable=not progress, desc="BPR epochs")

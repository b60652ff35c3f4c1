"""UltraGCN: the limit of infinitely many LightGCN layers, learned as a loss instead of propagated.

Paper: "UltraGCN: Ultra Simplification of Graph Convolutional Networks for Recommendation",
Mao et al., CIKM 2021, arXiv:2110.15114.

Stack LightGCN-style layers (with self-loops) forever and, at the fixed point, each user's
embedding is a degree-weighted sum of its items', ``e_u = sum_i beta_{u,i} e_i`` (Sec. 3.1).
UltraGCN never propagates: it keeps plain ID embeddings and *asks* them to satisfy that fixed
point through a constraint loss ``L_C``, a beta-weighted cross-entropy that pulls ``e_u . e_i``
up on edges and, on sampled negatives, down (which stops the collapse onto one vector that deep
GCNs suffer). Item-item relations get their own term ``L_I`` over the top-K neighbours of each
item in the co-occurrence graph ``G = R^T R`` (Sec. 3.2); with the link-prediction loss ``L_O``
the objective is ``L = L_O + lambda L_C + gamma L_I`` plus L2 (Sec. 3.3). A step reads only its
batch's rows, so an epoch costs ``O(E (1 + n + K) d)``: linear in the graph.

The miniature leaves out the paper's separate weights for the positive and negative terms (one
``neg_weight`` here), sparse-gradient optimisers, and its per-dataset hyper-parameters.

Shapes: U users, I items, E training pairs, B pairs in a batch, n negatives per pair, K item
neighbours, d embedding size.
Section: chapter 01, "UltraGCN".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.validation import check_int

from .interactions import Interactions, NegativeSampler
from .lightgcn import check_ids
from .train import EpochTiming, FitResult, adam, fit, time_epoch

__all__ = ["ItemNeighbours", "UltraGCN", "UltraGCNConfig", "UltraGCNGraph", "constraint_weights",
           "interaction_degrees", "item_item_constraint_loss", "item_item_neighbours", "main_loss",
           "time_ultragcn_epoch", "train_ultragcn", "ultragcn_epoch", "ultragcn_graph", "ultragcn_loss",
           "ultragcn_step", "user_item_constraint_loss"]


@dataclass(frozen=True)
class UltraGCNConfig:
    """Hyper-parameters of UltraGCN and of its training.

    Attributes:
        dim: embedding size d.
        lr: Adam learning rate.
        l2: weight of the L2 penalty on the batch's embeddings.
        batch_size: positive pairs per step.
        n_neg: negatives sampled per positive.
        neg_weight: weight of the (averaged) negative terms in ``L_O`` and ``L_C``.
        constraint_weight: lambda, the weight of ``L_C``.
        item_weight: gamma, the weight of ``L_I`` (0 switches the item-item constraint off).
        n_neighbours: K, neighbours kept per item in the item-item constraint graph.
        init_std: standard deviation of the normal initialisation.

    Defaults: calibrated on the chapter's synthetic graphs (strong item-item term, few negatives).
    """

    dim: int = 64
    lr: float = 5e-3
    l2: float = 1e-4
    batch_size: int = 1024
    n_neg: int = 10
    neg_weight: float = 3.0
    constraint_weight: float = 1.0
    item_weight: float = 5.0
    n_neighbours: int = 20
    init_std: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("dim", "batch_size", "n_neg", "n_neighbours"):
            check_int(name, getattr(self, name), 1)
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"UltraGCNConfig: {name} must be > 0, got {getattr(self, name)}")
        for name in ("l2", "neg_weight", "constraint_weight", "item_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"UltraGCNConfig: {name} must be >= 0, got {getattr(self, name)}")


def _check_pairs(train: torch.Tensor, n_users: int, n_items: int) -> None:
    if not isinstance(train, torch.Tensor) or train.dim() != 2 or train.shape[0] != 2:
        raise ValueError(f"train must be a (2, E) tensor of [user; item] pairs, got {getattr(train, 'shape', train)}")
    check_ids("train users", train[0], n_users)
    check_ids("train items", train[1], n_items)


def interaction_degrees(train: torch.Tensor, n_users: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrees ``d_u`` (U,) and ``d_i`` (I,) of the training graph, float32."""
    check_int("n_users", n_users, 1)
    check_int("n_items", n_items, 1)
    _check_pairs(train, n_users, n_items)
    return (torch.bincount(train[0], minlength=n_users).float(), torch.bincount(train[1], minlength=n_items).float())


def constraint_weights(users: torch.Tensor, items: torch.Tensor, user_deg: torch.Tensor,
                       item_deg: torch.Tensor) -> torch.Tensor:
    """Constraint coefficients ``beta_{u,i} = (1/d_u) sqrt((d_u+1)/(d_i+1))`` (UltraGCN Sec. 3.1).

    The weights of the infinite-layer fixed point ``e_u = sum_i beta_{u,i} e_i``; users of degree 0
    count as 1. Shapes: users (B,), items (B,) or (B, n) (negatives), degrees (U,) and (I,);
    returns beta with the shape of ``items``.
    """
    check_ids("users", users, user_deg.numel())
    check_ids("items", items, item_deg.numel())
    if items.shape[:1] != users.shape:
        raise ValueError(f"items {tuple(items.shape)} must start with the users' shape {tuple(users.shape)}")
    return _beta(users, items, user_deg, item_deg)


def _beta(users: torch.Tensor, items: torch.Tensor, user_deg: torch.Tensor, item_deg: torch.Tensor) -> torch.Tensor:
    """:func:`constraint_weights` on ids already checked (no host sync: the training step uses it)."""
    # show: start beta
    d_u = user_deg[users].clamp(min=1.0)
    d_u = d_u.reshape(users.shape + (1,) * (items.dim() - 1))  # broadcast over n
    d_i = item_deg[items]
    # Sec. 3.1: beta_{u,i} = 1/d_u * sqrt((d_u + 1) / (d_i + 1))
    return (d_u + 1).sqrt() / d_u / (d_i + 1).sqrt()
    # show: end beta


@dataclass(frozen=True)
class ItemNeighbours:
    """Top-K neighbours of each item in the item-item graph: ``index`` (I, K) int64, ``weight`` (I, K)."""

    index: torch.Tensor
    weight: torch.Tensor


def _ragged_arange(counts: torch.Tensor) -> torch.Tensor:
    """[0..c0-1, 0..c1-1, ...] for counts (n,), vectorised."""
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(int(counts.sum()), device=counts.device) - torch.repeat_interleave(starts, counts)


def item_item_neighbours(train: torch.Tensor, n_users: int, n_items: int, *, k: int,
                         max_pairs: int = 1 << 22) -> ItemNeighbours:
    """Top-``k`` neighbours of every item by ``omega_{i,j}`` in ``G = R^T R`` (UltraGCN Sec. 3.2).

    ``G_{i,j}`` counts users who interacted with both items, ``g_i = sum_k G_{i,k}``, and
    ``omega_{i,j} = G_{i,j} / (g_i - G_{i,i}) * sqrt(g_i / g_j)`` for ``j != i``. ``G`` is never
    held whole: items go in chunks generating at most about ``max_pairs`` co-occurrences (one per
    item pair per shared user; a chunk holds at least one item), counted by sorting, weighted and
    sorted again to keep each item's ``k`` heaviest. Time O(P log P) for P = sum_u d_u^2, memory
    O(max_pairs). Items with fewer than ``k`` co-occurring items are padded with themselves at 0.

    Args:
        train: (2, E) ``[user; item]`` training pairs, without duplicates; n_users, n_items: U, I.
        k: neighbours per item, 0 < k < I.

    Returns:
        :class:`ItemNeighbours`, ``index`` (I, k) int64 and ``weight`` (I, k) float32, heaviest first.
    """
    check_int("n_users", n_users, 1)
    check_int("n_items", n_items, 1)
    check_int("max_pairs", max_pairs, 1)
    _check_pairs(train, n_users, n_items)
    check_int("k", k, 1, n_items - 1)  # 0 < k < I
    users, items = train.cpu()
    d_u = torch.bincount(users, minlength=n_users)
    d_i = torch.bincount(items, minlength=n_items)
    # CSR of R (user -> items) and of R^T (item -> users)
    user_ptr = torch.cumsum(d_u, 0) - d_u
    user_items = items[torch.argsort(users * n_items + items)]
    item_users = users[torch.argsort(items * n_users + users)]
    item_end = torch.cumsum(d_i, 0)                    # (I,) end of each item's user list
    item_ptr = item_end - d_i
    g = torch.zeros(n_items, dtype=torch.float64).index_add_(0, items, d_u[users].double())  # g_i = sum_u d_u
    work = torch.cumsum(d_u[item_users], 0)            # co-occurrences generated up to each entry
    index = torch.arange(n_items).unsqueeze(1).repeat(1, k)  # padding: the item itself ...
    weight = torch.zeros(n_items, k)                          # ... at weight 0
    a = 0
    while a < n_items:  # one chunk of items [a, b) per round
        lo = int(item_ptr[a])
        base = int(work[lo - 1]) if lo > 0 else 0
        n_within = int(torch.searchsorted(work, torch.tensor(base + max_pairs), right=True))  # entries within budget
        b = max(a + 1, int(torch.searchsorted(item_end, torch.tensor(n_within), right=True)))  # items wholly within
        hi = int(item_end[b - 1])
        owner = torch.repeat_interleave(torch.arange(a, b), d_i[a:b])   # item of each (item, user) entry
        nbr_users = item_users[lo:hi]
        counts = d_u[nbr_users]
        rows = torch.repeat_interleave(owner, counts)                   # (P,) item i
        cols = user_items[torch.repeat_interleave(user_ptr[nbr_users], counts) + _ragged_arange(counts)]  # (P,) j
        keys, g_ij = torch.unique(rows * n_items + cols, return_counts=True)  # sparse G[a:b, :], row-major
        i, j = keys // n_items, keys % n_items
        off = i != j
        i, j, g_ij = i[off], j[off], g_ij[off].double()
        # Sec. 3.2: omega_{i,j} = G_{i,j} / (g_i - G_{i,i}) * sqrt(g_i / g_j)
        omega = g_ij / (g[i] - d_i[i]).clamp(min=1) * (g[i] / g[j]).sqrt()
        by_weight = torch.argsort(omega, descending=True, stable=True)
        order = by_weight[torch.argsort(i[by_weight], stable=True)]   # by item, heaviest first
        i, j, omega = i[order], j[order], omega[order]
        rank = torch.arange(i.numel()) - torch.searchsorted(i, i)     # position within the item's list
        keep = rank < k
        index[i[keep], rank[keep]] = j[keep]
        weight[i[keep], rank[keep]] = omega[keep].float()
        a = b
    return ItemNeighbours(index=index.to(train.device), weight=weight.to(train.device))


@dataclass(frozen=True)
class UltraGCNGraph:
    """What UltraGCN precomputes from the training graph: degrees and item neighbours."""

    user_deg: torch.Tensor
    item_deg: torch.Tensor
    neighbours: ItemNeighbours

    def to(self, device: torch.device | str) -> UltraGCNGraph:
        """The same tensors on ``device``."""
        nb = ItemNeighbours(self.neighbours.index.to(device), self.neighbours.weight.to(device))
        return UltraGCNGraph(self.user_deg.to(device), self.item_deg.to(device), nb)


def ultragcn_graph(train: torch.Tensor, n_users: int, n_items: int, *, n_neighbours: int) -> UltraGCNGraph:
    """Degrees for ``beta`` and the top-``n_neighbours`` item-item graph for ``omega``."""
    user_deg, item_deg = interaction_degrees(train, n_users, n_items)
    return UltraGCNGraph(user_deg, item_deg, item_item_neighbours(train, n_users, n_items, k=n_neighbours))


def main_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, *, neg_weight: float = 1.0) -> torch.Tensor:
    """``L_O``: cross-entropy, label 1 on edges, 0 on sampled negatives (UltraGCN Sec. 3.3).

    ``-log sigmoid(s_ui) - neg_weight * mean_j log sigmoid(-s_uj)``, batch mean; pos (B,), neg (B, n).
    """
    _check_scores(pos_scores, neg_scores)
    return (F.softplus(-pos_scores) + neg_weight * F.softplus(neg_scores).mean(-1)).mean()


def user_item_constraint_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor, beta_pos: torch.Tensor,
                              beta_neg: torch.Tensor, *, neg_weight: float = 1.0) -> torch.Tensor:
    """``L_C``: the beta-weighted cross-entropy that imposes the infinite-layer limit (Sec. 3.1).

    ``-beta_{u,i} log sigmoid(s_ui) - neg_weight * mean_j beta_{u,j} log sigmoid(-s_uj)``, batch
    mean. Shapes: pos and beta_pos (B,), neg and beta_neg (B, n).
    """
    _check_scores(pos_scores, neg_scores)
    if beta_pos.shape != pos_scores.shape or beta_neg.shape != neg_scores.shape:
        raise ValueError(f"beta shapes {tuple(beta_pos.shape)}, {tuple(beta_neg.shape)} must match the scores "
                         f"{tuple(pos_scores.shape)}, {tuple(neg_scores.shape)}")
    return (beta_pos * F.softplus(-pos_scores) + neg_weight * (beta_neg * F.softplus(neg_scores)).mean(-1)).mean()


def item_item_constraint_loss(neighbour_scores: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``L_I = -sum_{j in S(i)} omega_{i,j} log sigmoid(e_u . e_j)``, averaged over the batch (Sec. 3.2).

    For each positive pair (u, i) the user is pulled towards the K items most similar to i:
    ``neighbour_scores[b, k] = e_u . e_j`` for the k-th neighbour j of the batch's item.
    Shapes: neighbour_scores and omega (B, K).
    """
    if neighbour_scores.dim() != 2 or omega.shape != neighbour_scores.shape:
        raise ValueError(f"neighbour_scores and omega must both be (B, K), got {tuple(neighbour_scores.shape)} "
                         f"and {tuple(omega.shape)}")
    return (omega * F.softplus(-neighbour_scores)).sum(-1).mean()


def _check_scores(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> None:
    if pos_scores.dim() != 1 or neg_scores.dim() != 2 or neg_scores.shape[0] != pos_scores.shape[0]:
        raise ValueError(f"scores must be pos (B,) and neg (B, n), got {tuple(pos_scores.shape)} and "
                         f"{tuple(neg_scores.shape)}")


class UltraGCN(nn.Module):
    """Plain user and item embeddings scored by dot product; the graph lives in the loss.

    With dense gradients and Adam a step still writes every row (zeros for most): an O((U + I) d)
    term per step, small next to LightGCN's propagation over every edge.

    Args:
        n_users, n_items: U and I.
        dim: embedding size d.
        init_std: std of the normal initialisation.
        generator: seeds the initialisation.
    """

    def __init__(self, n_users: int, n_items: int, *, dim: int = 64, init_std: float = 1e-4,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items = check_int("n_users", n_users, 1), check_int("n_items", n_items, 1)
        dim = check_int("dim", dim, 1)
        self.user_embedding = nn.Parameter(torch.randn(n_users, dim, generator=generator) * init_std)  # (U, d)
        self.item_embedding = nn.Parameter(torch.randn(n_items, dim, generator=generator) * init_std)  # (I, d)

    @classmethod
    def from_config(cls, cfg: UltraGCNConfig, n_users: int, n_items: int, *,
                    generator: torch.Generator | None = None) -> UltraGCN:
        """Build the model from an :class:`UltraGCNConfig`."""
        return cls(n_users, n_items, dim=cfg.dim, init_std=cfg.init_std, generator=generator)

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of user ``ids`` of any shape S: (S, d)."""
        return F.embedding(check_ids("users", ids, self.n_users), self.user_embedding)

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        """Embeddings of item ``ids`` of any shape S: (S, d)."""
        return F.embedding(check_ids("items", ids, self.n_items), self.item_embedding)

    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """User (U, d) and item (I, d) embeddings (no propagation)."""
        return self.user_embedding, self.item_embedding

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``e_u . e_i``: users (B,), items (B,) or (B, n) -> the shape of ``items``."""
        if items.shape[:1] != users.shape:
            raise ValueError(f"items {tuple(items.shape)} must start with the users' shape {tuple(users.shape)}")
        e_u = self.users(users).reshape(users.shape + (1,) * (items.dim() - 1) + (-1,))  # (B, [1,] d)
        return (e_u * self.items(items)).sum(-1)


def ultragcn_loss(model: UltraGCN, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                  graph: UltraGCNGraph, cfg: UltraGCNConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_O + lambda L_C + gamma L_I + l2 ||batch embeddings||^2`` (UltraGCN Sec. 3.3).

    ``users``, ``pos`` (B,) are positive pairs, ``neg`` (B, n) sampled negatives; ``graph`` comes
    from :func:`ultragcn_graph`, on the model's device; ``cfg`` holds lambda (``constraint_weight``),
    gamma (``item_weight``), ``neg_weight`` and ``l2``. Returns the scalar loss and its terms,
    detached (``L_I`` only when gamma > 0).

    The ids are trusted, not range-checked: a check reads their minimum and maximum, a host sync
    each on a GPU, at every step. :func:`train_ultragcn`, :func:`ultragcn_epoch` and
    :func:`time_ultragcn_epoch` check the training pairs once; the negatives come from a
    :class:`NegativeSampler` over the model's items. Only the cheap shape checks run here.
    """
    if neg.dim() != 2 or pos.shape != users.shape or neg.shape[0] != users.shape[0]:
        raise ValueError(f"expected users (B,), pos (B,), neg (B, n); got {tuple(users.shape)}, "
                         f"{tuple(pos.shape)}, {tuple(neg.shape)}")
    # show: start loss
    n_neg = neg.shape[1]
    use_items = cfg.item_weight > 0
    # one gather for every item the batch scores: its positive, its negatives
    # and (with gamma) the K neighbours of the positive
    cand = [pos.unsqueeze(1), neg]
    if use_items:
        cand.append(graph.neighbours.index[pos])
    e_u = F.embedding(users, model.user_embedding)  # (B, d)
    # (B, 1 + n [+ K], d)
    e_c = F.embedding(torch.cat(cand, dim=1), model.item_embedding)
    # (B, 1 + n [+ K]); cheaper than bmm on CPU
    scores = (e_c * e_u.unsqueeze(1)).sum(-1)
    pos_scores, neg_scores = scores[:, 0], scores[:, 1:1 + n_neg]
    w_neg = cfg.neg_weight
    l_o = main_loss(pos_scores, neg_scores, neg_weight=w_neg)  # L_O
    beta_pos = _beta(users, pos, graph.user_deg, graph.item_deg)  # (B,)
    beta_neg = _beta(users, neg, graph.user_deg, graph.item_deg)  # (B, n)
    l_c = user_item_constraint_loss(pos_scores, neg_scores, beta_pos,
                                    beta_neg, neg_weight=w_neg)  # L_C
    loss = l_o + cfg.constraint_weight * l_c  # L_O + lambda L_C
    parts = {"L_O": l_o.detach(), "L_C": l_c.detach()}
    if use_items:  # + gamma L_I, omega of the positive's neighbours
        omega = graph.neighbours.weight[pos]  # (B, K)
        l_i = item_item_constraint_loss(scores[:, 1 + n_neg:], omega)
        loss = loss + cfg.item_weight * l_i
        parts["L_I"] = l_i.detach()
    # L2 on the rows of the batch's users, positives and negatives
    reg = e_u.pow(2).sum() + e_c[:, :1 + n_neg].pow(2).sum()
    reg = reg / (2 * users.numel())
    return loss + cfg.l2 * reg, parts
    # show: end loss


def _update(model: UltraGCN, optimizer: torch.optim.Optimizer, train: torch.Tensor, idx: torch.Tensor,
            graph: UltraGCNGraph, cfg: UltraGCNConfig, sampler: NegativeSampler,
            generator: torch.Generator | None) -> torch.Tensor:
    """One optimiser step on the training pairs ``idx``, with freshly sampled negatives."""
    users, pos = train[0, idx], train[1, idx]
    neg = sampler(users, n_neg=cfg.n_neg, generator=generator)  # (B, n), drawn on the CPU
    device = model.user_embedding.device
    loss, _ = ultragcn_loss(model, users.to(device), pos.to(device), neg.to(device), graph, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def ultragcn_step(model: UltraGCN, optimizer: torch.optim.Optimizer, train: torch.Tensor, graph: UltraGCNGraph,
                  cfg: UltraGCNConfig, *, generator: torch.Generator | None = None,
                  sampler: NegativeSampler | None = None) -> float:
    """One training step on ``cfg.batch_size`` pairs drawn at random (what an epoch repeats).

    ``train`` is not checked here (see :func:`ultragcn_loss`); :func:`time_ultragcn_epoch`, which
    repeats this step, checks it once.
    """
    idx = torch.randint(train.shape[1], (min(cfg.batch_size, train.shape[1]),), generator=generator)
    sampler = sampler if sampler is not None else NegativeSampler(train, model.n_items)
    return float(_update(model, optimizer, train, idx, graph, cfg, sampler, generator))


def ultragcn_epoch(model: UltraGCN, optimizer: torch.optim.Optimizer, train: torch.Tensor, graph: UltraGCNGraph,
                   cfg: UltraGCNConfig, *, generator: torch.Generator | None = None,
                   sampler: NegativeSampler | None = None) -> float:
    """One epoch over the shuffled training pairs (``cfg.n_neg`` negatives each). Returns the mean loss.

    Batches are drawn on the CPU with ``generator`` and moved to the model's device; pass a
    ``sampler`` to reuse one across epochs.
    """
    _check_pairs(train, model.n_users, model.n_items)  # once per epoch, not per step
    sampler = sampler if sampler is not None else NegativeSampler(train, model.n_items)
    order = torch.randperm(train.shape[1], generator=generator)
    losses = [_update(model, optimizer, train, order[start:start + cfg.batch_size], graph, cfg, sampler, generator)
              for start in range(0, order.numel(), cfg.batch_size)]
    return float(torch.stack(losses).mean()) if losses else 0.0


def train_ultragcn(data: Interactions, cfg: UltraGCNConfig, *, max_epochs: int, patience: int = 5,
                   eval_every: int = 1, seed: int = 0, device: torch.device | str = "cpu", disable: bool = True,
                   desc: str = "UltraGCN") -> tuple[UltraGCN, FitResult]:
    """Precompute the constraint graph (outside the history's clock), build an UltraGCN, train it."""
    gen = torch.Generator().manual_seed(seed)
    graph = ultragcn_graph(data.train, data.n_users, data.n_items, n_neighbours=cfg.n_neighbours).to(device)
    model = UltraGCN.from_config(cfg, data.n_users, data.n_items, generator=gen).to(device)
    optimizer = adam(model.parameters(), lr=cfg.lr)
    sampler = NegativeSampler(data.train, data.n_items)
    result = fit(model, lambda epoch: ultragcn_epoch(model, optimizer, data.train, graph, cfg, generator=gen,
                                                     sampler=sampler),
                 data, max_epochs=max_epochs, patience=patience, eval_every=eval_every, disable=disable, desc=desc)
    return model, result


def time_ultragcn_epoch(data: Interactions, cfg: UltraGCNConfig, *, max_steps: int = 5, seed: int = 0,
                        device: torch.device | str = "cpu",
                        graph: UltraGCNGraph | None = None) -> EpochTiming:
    """Seconds per UltraGCN epoch (``ceil(E / batch_size)`` steps) from a few steps; ``graph`` is reused if given."""
    gen = torch.Generator().manual_seed(seed)
    _check_pairs(data.train, data.n_users, data.n_items)
    if graph is None:
        graph = ultragcn_graph(data.train, data.n_users, data.n_items, n_neighbours=cfg.n_neighbours)
    graph = graph.to(device)
    model = UltraGCN.from_config(cfg, data.n_users, data.n_items, generator=gen).to(device)
    optimizer = adam(model.parameters(), lr=cfg.lr)
    sampler = NegativeSampler(data.train, data.n_items)
    steps = math.ceil(data.train.shape[1] / cfg.batch_size)
    return time_epoch(lambda: ultragcn_step(model, optimizer, data.train, graph, cfg, generator=gen, sampler=sampler),
                      steps_per_epoch=steps, max_steps=max_steps, device=device)

"""Top-K ranking metrics for recommendation, vectorised over users.

For each user with at least one held-out item, rank all items by score after masking the items
the user was trained on (they are known, so recommending them again is not a hit), take the top
K, and compare with the held-out set:

- Recall@K = hits / |held-out items of the user|,
- NDCG@K = DCG / ideal DCG, with DCG = sum over hits of 1 / log2(rank + 1) (ranks from 1) and the
  ideal DCG placing min(K, |held-out|) hits at the top,

both averaged over users (the protocol of NGCF, LightGCN and UltraGCN). Users are processed in
batches (a loop over batches, never over users) so that U x I scores never need to fit at once.

Section: chapter 01, "UltraGCN" and "GraphHash".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["RankingMetrics", "ranking_metrics"]


@dataclass(frozen=True)
class RankingMetrics:
    """Mean Recall@K and NDCG@K over the evaluated users."""

    recall: float
    ndcg: float
    k: int
    n_users: int

    def __str__(self) -> str:
        return f"Recall@{self.k} {self.recall:.4f}, NDCG@{self.k} {self.ndcg:.4f} over {self.n_users:,} users"


def _dense_mask(pairs: torch.Tensor, users: torch.Tensor, n_items: int, lookup: torch.Tensor) -> torch.Tensor:
    """(B, I) bool mask of ``pairs`` restricted to the batch ``users`` (lookup: user -> row or -1)."""
    rows = lookup[pairs[0]]
    keep = rows >= 0
    mask = torch.zeros(users.numel(), n_items, dtype=torch.bool)
    mask[rows[keep], pairs[1][keep]] = True
    return mask


def ranking_metrics(scores: Callable[[torch.Tensor], torch.Tensor], train: torch.Tensor, held_out: torch.Tensor,
                    *, n_users: int, n_items: int, k: int = 20, batch_size: int = 1024) -> RankingMetrics:
    """Recall@K and NDCG@K of a scoring function, excluding each user's training items.

    Args:
        scores: maps a (B,) tensor of user ids to (B, I) scores (higher is better).
        train: (2, E_train) pairs masked out of the ranking.
        held_out: (2, E_eval) pairs to find (validation or test).
        n_users, n_items: U and I.
        k: list length K (> 0).
        batch_size: users scored at once.

    Returns:
        :class:`RankingMetrics` averaged over users with at least one held-out item.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be an int > 0, got {k!r}")
    if k > n_items:
        raise ValueError(f"k ({k}) must not exceed n_items ({n_items})")
    for name, pairs in (("train", train), ("held_out", held_out)):
        if pairs.dim() != 2 or pairs.shape[0] != 2:
            raise ValueError(f"{name} must have shape (2, E), got {tuple(pairs.shape)}")
    eval_users = torch.unique(held_out[0])
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))  # rank r -> 1/log2(r+1)
    ideal = torch.cumsum(discount, 0)
    recall_sum = ndcg_sum = 0.0
    lookup = torch.full((n_users,), -1, dtype=torch.long)
    for start in range(0, eval_users.numel(), batch_size):
        users = eval_users[start:start + batch_size]
        lookup[users] = torch.arange(users.numel())
        s = scores(users).detach().to(torch.float32).cpu()
        if s.shape != (users.numel(), n_items):
            raise ValueError(f"scores must return shape ({users.numel()}, {n_items}), got {tuple(s.shape)}")
        s = s.masked_fill(_dense_mask(train, users, n_items, lookup), float("-inf"))
        truth = _dense_mask(held_out, users, n_items, lookup)
        top = torch.topk(s, k, dim=1).indices                   # (B, K)
        hits = torch.gather(truth, 1, top).to(torch.float64)    # (B, K)
        n_true = truth.sum(1).to(torch.float64)                 # (B,)
        recall_sum += (hits.sum(1) / n_true).sum().item()
        dcg = (hits * discount).sum(1)
        idcg = ideal[(n_true.clamp(max=k) - 1).long()]
        ndcg_sum += (dcg / idcg).sum().item()
        lookup[users] = -1
    n = eval_users.numel()
    return RankingMetrics(recall=recall_sum / max(n, 1), ndcg=ndcg_sum / max(n, 1), k=k, n_users=n)

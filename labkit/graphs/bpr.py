"""Bayesian personalised ranking (BPR), the pairwise loss of LightGCN and of most ID-embedding
recommenders: for an observed pair (u, i) and an unobserved item j, push ``score(u, i)`` above
``score(u, j)`` with ``-log sigmoid(s_ui - s_uj)`` (Rendle et al., arXiv:1205.2618, eq. 4).

Shapes: B pairs in a batch, U users, I items.
Section: chapter 01, "UltraGCN" and "GraphHash".
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .interactions import NegativeSampler

__all__ = ["bpr_batches", "bpr_loss"]


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of ``-log sigmoid(pos - neg)`` (B,) -> scalar; ``neg`` may be (B, n_neg)."""
    if neg_scores.dim() == pos_scores.dim() + 1:
        pos_scores = pos_scores.unsqueeze(-1)
    if pos_scores.shape[0] != neg_scores.shape[0]:
        raise ValueError(f"pos and neg scores disagree on the batch: {tuple(pos_scores.shape)} vs {tuple(neg_scores.shape)}")
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def bpr_batches(train: torch.Tensor, n_items: int, *, batch_size: int, n_neg: int = 1,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled training pairs with sampled negatives.

    Yields:
        ``(users (B,), pos_items (B,), neg_items (B, n_neg))`` covering every training pair once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = NegativeSampler(train, n_items)
    order = torch.randperm(train.shape[1], generator=generator)
    for start in range(0, order.numel(), batch_size):
        idx = order[start:start + batch_size]
        users, pos = train[0, idx], train[1, idx]
        yield users, pos, sampler(users, n_neg=n_neg, generator=generator)

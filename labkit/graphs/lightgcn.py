"""LightGCN: ID embeddings smoothed over the user-item graph, trained with BPR.

Paper: "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation",
He et al., SIGIR 2020, arXiv:2002.02126.

LightGCN keeps nothing of a graph convolution but the propagation itself: every user and item
starts from a free embedding ``E^(0)``, each layer multiplies by the symmetric normalised
bipartite adjacency ``A_hat = D^{-1/2} A D^{-1/2}`` (no weight matrix, no non-linearity,
eq. 7), the final embedding is the mean of layers 0..K (eq. 8), and a user-item score is the dot
product of the two final embeddings (eq. 9). Training minimises BPR with an L2 penalty on the
batch's layer-0 embeddings (eq. 15).

The cost that UltraGCN attacks is visible in :func:`lightgcn_loss`: every training step
propagates over the *whole* graph, K sparse products forward and K backward, even for a batch of
a few thousand pairs. An epoch of mini-batch training therefore costs
``(#pairs / batch) x K x #edges`` operations, quadratic in the graph's size; full-batch training
(one big BPR batch, one propagation per step) costs ``K x #edges`` per step but needs many more
steps to converge.

The miniature leaves out the paper's per-dataset tuning; like the reference implementation, it
propagates over the whole graph at every step rather than over sampled subgraphs.

Shapes: U users, I items, N = U + I nodes, d embedding size, B pairs in a batch.
Section: chapter 01, "UltraGCN" (the baseline it is measured against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from labkit.validation import check_int

from .bpr import bpr_batches, bpr_loss
from .edges import bipartite_edge_index
from .propagation import lightgcn_adjacency
from .interactions import Interactions, NegativeSampler
from .train import EpochTiming, FitResult, adam, fit, time_epoch

__all__ = ["LightGCN", "LightGCNConfig", "check_ids", "bipartite_adjacency", "lightgcn_epoch", "lightgcn_loss",
           "lightgcn_step", "time_lightgcn_epoch", "train_lightgcn"]


@dataclass(frozen=True)
class LightGCNConfig:
    """Hyper-parameters of LightGCN and of its training.

    Attributes:
        dim: embedding size d.
        n_layers: propagation layers K (>= 1).
        lr: Adam learning rate.
        l2: weight of the L2 penalty on the batch's layer-0 embeddings (eq. 15).
        batch_size: BPR pairs per step; ``None`` is full batch (every training pair in one step,
            so one propagation per epoch).
        n_neg: negatives per positive in BPR.
        init_std: standard deviation of the normal initialisation of ``E^(0)``.
    """

    dim: int = 64
    n_layers: int = 3
    lr: float = 1e-3
    l2: float = 1e-4
    batch_size: int | None = 2048
    n_neg: int = 1
    init_std: float = 0.1

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_neg"):
            check_int(name, getattr(self, name), 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        for name in ("lr", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LightGCNConfig: {name} must be > 0, got {getattr(self, name)}")
        if self.l2 < 0:
            raise ValueError(f"LightGCNConfig: l2 must be >= 0, got {self.l2}")


def check_ids(name: str, ids: torch.Tensor, upper: int) -> torch.Tensor:
    """Raise unless ``ids`` is an integer tensor with every value in ``[0, upper)``."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of ids, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold int64 ids, got {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} must lie in [0, {upper}), got values in [{lo}, {hi}]")
    return ids


def bipartite_adjacency(train: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """LightGCN's propagation matrix ``D^{-1/2} A D^{-1/2}`` over the user-item graph (eq. 7).

    Args:
        train: (2, E) ``[user; item]`` training pairs.
        n_users, n_items: U and I.

    Returns:
        (N, N) sparse CSR float32, users first, item ``i`` at row ``U + i``.
    """
    n_users, n_items = check_int("n_users", n_users, 1), check_int("n_items", n_items, 1)
    return lightgcn_adjacency(bipartite_edge_index(train, n_users, n_items), n_users + n_items)


class LightGCN(nn.Module):
    """LightGCN over a fixed normalised adjacency (eq. 7-9).

    Args:
        n_users, n_items: U and I.
        adj: (N, N) sparse adjacency from :func:`bipartite_adjacency`, on the model's device.
        dim: embedding size d.
        n_layers: propagation layers K (>= 1).
        init_std: std of the normal initialisation of the layer-0 embeddings.
        generator: seeds the initialisation.
    """

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, *, dim: int = 64, n_layers: int = 3,
                 init_std: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.n_users = check_int("n_users", n_users, 1)
        self.n_items = check_int("n_items", n_items, 1)
        self.n_layers = check_int("n_layers", n_layers, 1)
        n = n_users + n_items
        if not isinstance(adj, torch.Tensor) or adj.layout not in (torch.sparse_csr, torch.sparse_coo, torch.strided):
            raise TypeError("adj must be a (sparse) tensor")
        if tuple(adj.shape) != (n, n):
            raise ValueError(f"adj must have shape (N, N) = ({n}, {n}) for U + I nodes, got {tuple(adj.shape)}")
        self.adj = adj
        weight = torch.randn(n, check_int("dim", dim, 1), generator=generator) * init_std
        self.embedding = nn.Parameter(weight)  # E^(0): (N, d)

    @classmethod
    def from_config(cls, cfg: LightGCNConfig, n_users: int, n_items: int, adj: torch.Tensor, *,
                    generator: torch.Generator | None = None) -> LightGCN:
        """Build the model from a :class:`LightGCNConfig`."""
        return cls(n_users, n_items, adj, dim=cfg.dim, n_layers=cfg.n_layers, init_std=cfg.init_std,
                   generator=generator)

    def _apply(self, fn, recurse=True):  # keep the (non-parameter) adjacency on the model's device
        out = super()._apply(fn, recurse)
        self.adj = fn(self.adj)
        return out

    def propagate(self) -> torch.Tensor:
        """Final embeddings of all N nodes, the mean of layers 0..K: (N, d)."""
        h = self.embedding
        total = h
        for _ in range(self.n_layers):
            # eq. 7: E^(k+1) = D^{-1/2} A D^{-1/2} E^(k)
            h = torch.sparse.mm(self.adj, h) if self.adj.layout != torch.strided else self.adj @ h
            total = total + h
        # eq. 8: alpha_k = 1 / (K + 1)
        return total / (self.n_layers + 1)

    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user (U, d) and item (I, d) embeddings."""
        out = self.propagate()
        return out[: self.n_users], out[self.n_users:]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``e_u . e_i`` (eq. 9) of the pairs ``(users[b], items[b])``: (B,)."""
        check_ids("users", users, self.n_users)
        check_ids("items", items, self.n_items)
        if users.shape != items.shape:
            raise ValueError(f"users and items must have the same shape, got {tuple(users.shape)} and "
                             f"{tuple(items.shape)}")
        u, i = self.user_item_embeddings()
        return (u[users] * i[items]).sum(-1)


def lightgcn_loss(model: LightGCN, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, *,
                  l2: float) -> torch.Tensor:
    """BPR loss of a batch plus L2 on the batch's layer-0 embeddings (LightGCN eq. 15).

    Propagates over the whole graph: this is what makes each step cost O(K x #edges).

    Args:
        model: the LightGCN.
        users, pos: (B,) users and their training items.
        neg: (B,) or (B, n_neg) sampled items.
        l2: penalty weight lambda.

    Returns:
        scalar loss.
    """
    check_ids("users", users, model.n_users)
    check_ids("pos", pos, model.n_items)
    check_ids("neg", neg, model.n_items)
    if pos.shape != users.shape or neg.shape[0] != users.shape[0]:
        raise ValueError(f"users {tuple(users.shape)}, pos {tuple(pos.shape)} and neg {tuple(neg.shape)} "
                         "must share the batch dimension")
    u_all, i_all = model.user_item_embeddings()
    e_u, e_p, e_n = u_all[users], i_all[pos], i_all[neg]  # (B, d), (B, d), (B[, n_neg], d)
    if neg.dim() == 2:
        neg_scores = torch.einsum("bd,bnd->bn", e_u, e_n)  # (B, n_neg)
    else:
        neg_scores = (e_u * e_n).sum(-1)
    loss = bpr_loss((e_u * e_p).sum(-1), neg_scores)
    # eq. 15: lambda ||E^(0)||^2 over the batch's own layer-0 rows, averaged over the batch
    e0 = model.embedding
    reg = (e0[users].pow(2).sum() + e0[model.n_users + pos].pow(2).sum()
           + e0[model.n_users + neg].pow(2).sum()) / (2 * users.numel())
    return loss + l2 * reg


def _update(model: LightGCN, optimizer: torch.optim.Optimizer, users: torch.Tensor, pos: torch.Tensor,
            neg: torch.Tensor, cfg: LightGCNConfig) -> torch.Tensor:
    device = model.embedding.device
    neg = neg.squeeze(1) if neg.dim() == 2 and neg.shape[1] == 1 else neg
    loss = lightgcn_loss(model, users.to(device), pos.to(device), neg.to(device), l2=cfg.l2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def lightgcn_step(model: LightGCN, optimizer: torch.optim.Optimizer, train: torch.Tensor, cfg: LightGCNConfig, *,
                  generator: torch.Generator | None = None, sampler: NegativeSampler | None = None) -> float:
    """One training step on ``cfg.batch_size`` pairs drawn at random (what an epoch repeats).

    Used to time an epoch from a few steps; ``sampler`` may be reused across calls.
    """
    batch = train.shape[1] if cfg.batch_size is None else min(cfg.batch_size, train.shape[1])
    idx = torch.randint(train.shape[1], (batch,), generator=generator)
    users, pos = train[0, idx], train[1, idx]
    sampler = sampler if sampler is not None else NegativeSampler(train, model.n_items)
    neg = sampler(users, n_neg=cfg.n_neg, generator=generator)
    return float(_update(model, optimizer, users, pos, neg, cfg))


def lightgcn_epoch(model: LightGCN, optimizer: torch.optim.Optimizer, train: torch.Tensor, cfg: LightGCNConfig, *,
                   generator: torch.Generator | None = None) -> float:
    """One epoch over every training pair: one propagation per batch. Returns the mean loss.

    ``cfg.batch_size=None`` makes it full batch: a single step (and propagation) per epoch.
    Batches are drawn on the CPU with ``generator`` and moved to the model's device.
    """
    batch_size = train.shape[1] if cfg.batch_size is None else cfg.batch_size
    losses = [_update(model, optimizer, users, pos, neg, cfg)
              for users, pos, neg in bpr_batches(train, model.n_items, batch_size=batch_size, n_neg=cfg.n_neg,
                                                 generator=generator)]
    return float(torch.stack(losses).mean()) if losses else 0.0


def train_lightgcn(data: Interactions, cfg: LightGCNConfig, *, max_epochs: int, patience: int = 5,
                   eval_every: int = 1, seed: int = 0, device: torch.device | str = "cpu", disable: bool = True,
                   desc: str = "LightGCN") -> tuple[LightGCN, FitResult]:
    """Build a LightGCN for ``data`` and train it with early stopping on validation Recall@20.

    Returns:
        the model (best weights loaded) and the :class:`~labkit.graphs.train.FitResult`.
    """
    gen = torch.Generator().manual_seed(seed)
    adj = bipartite_adjacency(data.train, data.n_users, data.n_items)
    model = LightGCN.from_config(cfg, data.n_users, data.n_items, adj, generator=gen).to(device)
    optimizer = adam(model.parameters(), lr=cfg.lr)
    result = fit(model, lambda epoch: lightgcn_epoch(model, optimizer, data.train, cfg, generator=gen), data,
                 max_epochs=max_epochs, patience=patience, eval_every=eval_every, disable=disable, desc=desc)
    return model, result


def time_lightgcn_epoch(data: Interactions, cfg: LightGCNConfig, *, max_steps: int = 3, seed: int = 0,
                        device: torch.device | str = "cpu") -> EpochTiming:
    """Seconds per training epoch of LightGCN on ``data``, timed on a few steps and extrapolated.

    An epoch has ``ceil(E / batch_size)`` steps (one when ``batch_size`` is None), each one a full
    propagation forward and backward.
    """
    gen = torch.Generator().manual_seed(seed)
    adj = bipartite_adjacency(data.train, data.n_users, data.n_items)
    model = LightGCN.from_config(cfg, data.n_users, data.n_items, adj, generator=gen).to(device)
    optimizer = adam(model.parameters(), lr=cfg.lr)
    sampler = NegativeSampler(data.train, data.n_items)
    n_pairs = data.train.shape[1]
    steps = 1 if cfg.batch_size is None else math.ceil(n_pairs / cfg.batch_size)
    return time_epoch(lambda: lightgcn_step(model, optimizer, data.train, cfg, generator=gen, sampler=sampler),
                      steps_per_epoch=steps, max_steps=max_steps, device=device)

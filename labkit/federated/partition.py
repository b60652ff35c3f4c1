"""Splitting a labelled data set over peers: i.i.d. or by a Dirichlet over classes.

Federated benchmarks make peers' data unlike each other by drawing, for every class, the
shares of that class each peer receives from a symmetric Dirichlet distribution of
concentration alpha (Hsu et al., 2019, arXiv:1909.06335; used by Bristle, "Bristle:
Decentralized Federated Learning in Byzantine, Non-i.i.d. Environments", and most
Byzantine-robustness papers). Large alpha gives every peer about the same class mix; at
alpha = 0.1 most peers hold two or three classes. ``alpha = inf`` is the i.i.d. split.

Shapes: N samples, P peers, C classes.
Section: chapter 13, "Byzantine-robust aggregation".
"""

from __future__ import annotations

import math

import numpy as np
import torch

from labkit.validation import check_int, check_real, check_tensor

__all__ = ["class_counts", "dirichlet_partition"]


def dirichlet_partition(labels: torch.Tensor, n_peers: int, *, alpha: float,
                        seed: int = 0, min_size: int = 2,
                        max_tries: int = 100) -> list[torch.Tensor]:
    """Indices of each peer's samples, class shares drawn from Dirichlet(alpha).

    For every class c, shares q ~ Dir(alpha, ..., alpha) over the P peers; the class's
    shuffled samples are cut at the cumulative shares. Draws are repeated (at most
    ``max_tries`` times) until every peer holds at least ``min_size`` samples.

    Args:
        labels: (N,) integer class labels.
        n_peers: P, at least 2.
        alpha: concentration, > 0; ``math.inf`` gives the i.i.d. split (a shuffle cut
            into P near-equal parts).
        seed: seed of the shuffle and the draws.
        min_size: the fewest samples a peer may hold.
        max_tries: how many draws to try before giving up.

    Returns:
        P sorted int64 index tensors that together cover ``range(N)`` exactly once.
    """
    check_tensor("labels", labels, dims=1, dtype="integer")
    n_peers = check_int("n_peers", n_peers, 2)
    if isinstance(alpha, (int, float, np.floating)) and not isinstance(alpha, bool) \
            and math.isinf(alpha) and alpha > 0:
        iid = True
    else:
        check_real("alpha", alpha, 0.0, strict=True)
        iid = False
    min_size = check_int("min_size", min_size, 0)
    max_tries = check_int("max_tries", max_tries, 1)
    if n_peers * min_size > labels.numel():
        raise ValueError(f"{labels.numel()} samples cannot give {n_peers} peers "
                         f"{min_size} each (min_size)")
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    if iid:
        parts = np.array_split(rng.permutation(len(y)), n_peers)
        return [torch.from_numpy(np.sort(p)).long() for p in parts]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_peers)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_peers, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return [torch.from_numpy(p).long() for p in out]
    raise ValueError(f"no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave every "
                     f"peer {min_size} samples; raise alpha or lower min_size")


def class_counts(labels: torch.Tensor, parts: list[torch.Tensor], *,
                 n_classes: int = 10) -> torch.Tensor:
    """(P, C) number of samples of each class that each peer holds."""
    check_tensor("labels", labels, dims=1, dtype="integer")
    n_classes = check_int("n_classes", n_classes, 1)
    return torch.stack([torch.bincount(labels[p], minlength=n_classes)[:n_classes]
                        for p in parts])

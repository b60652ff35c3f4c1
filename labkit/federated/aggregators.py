"""Aggregation rules that combine P peers' updates when f of them may lie.

Every rule maps the (P, D) matrix of received updates to one D-vector.

- :func:`mean_rule`: the plain average; one liar moves it anywhere.
- :func:`coordinate_median`, :func:`trimmed_mean`: per coordinate, the median, or the mean
  after dropping the f largest and f smallest values (Yin et al., 2018, arXiv:1803.01498).
- :func:`krum`: the update whose P - f - 2 nearest neighbours are closest (Blanchard et al.,
  2017, arXiv:1703.02757).
- :func:`flag_aggregate`: Flag Aggregator ("Flag Aggregator: Scalable Distributed Training
  under Failures and Augmented Losses using Convex Optimization", Almeida et al.). The
  aggregate is the projection onto an m-dimensional subspace Y that the normalised updates
  lie close to, found by iteratively reweighted least squares: Y is the top-m eigenvectors
  of the reweighted Gram matrix sum_i w_i u_i u_i^T of the unit updates u_i, and each weight
  comes from how much of u_i the subspace reconstructs, w_i = 1 / sqrt(1 - |Y^T u_i|^2) (the
  flag median's sine distance). Only a P x P eigenproblem is solved.
- :func:`bristle_aggregate`: Bristle's update rule for one peer (Verbraeken et al., "Bristle:
  Decentralized Federated Learning in Byzantine, Non-i.i.d. Environments"): for each class's
  output row, a distance-based prioritiser keeps the k updates nearest to the peer's own,
  then a performance-based integrator keeps those that do not raise the peer's own loss on
  that class, weighted by how much they lower it.

What the miniature leaves out: Flag Aggregator's data-dependent regulariser (a pairwise
term of weight ``lam`` stands in for it), Bristle's explore-exploit sampling of peers and its
per-round communication budget, and Bulyan, geometric median and other rules.

Shapes: P peers (updates), D parameters, C classes, R entries of one class's output row.
Section: chapter 13, "Byzantine-robust aggregation".
"""

from __future__ import annotations

import torch

from labkit.validation import check_int, check_real, check_tensor

__all__ = ["RULES", "aggregate", "bristle_aggregate", "coordinate_median",
           "flag_aggregate", "flag_subspace", "krum", "mean_rule", "trimmed_mean"]

RULES: tuple[str, ...] = ("mean", "median", "trimmed mean", "Krum", "Flag",
                          "Bristle")


def _check_updates(updates: object) -> torch.Tensor:
    check_tensor("updates", updates, dims=2, dtype="float", shape="(P, D)")
    if updates.shape[0] < 2:
        raise ValueError(f"updates must come from at least 2 peers, got {updates.shape[0]}")
    return updates


def _check_median_f(f: object, p: int) -> int:
    f = check_int("f", f, 0)
    if 2 * f >= p:
        raise ValueError(f"f must be < P/2 for a median-type rule, got f = {f} with "
                         f"P = {p} peers")
    return f


def mean_rule(updates: torch.Tensor) -> torch.Tensor:
    """The average of the updates, (P, D) -> (D,)."""
    return _check_updates(updates).mean(0)


def coordinate_median(updates: torch.Tensor, *, f: int = 0) -> torch.Tensor:
    """Per-coordinate median (mean of the two middle values for even P).

    ``f`` only validates the threat model: a median needs f < P/2.
    """
    updates = _check_updates(updates)
    _check_median_f(f, updates.shape[0])
    return updates.quantile(0.5, dim=0)


def trimmed_mean(updates: torch.Tensor, *, f: int) -> torch.Tensor:
    """Per coordinate, drop the f largest and f smallest values and average the rest."""
    updates = _check_updates(updates)
    f = _check_median_f(f, updates.shape[0])
    s = updates.sort(dim=0).values  # (P, D)
    return s[f:updates.shape[0] - f].mean(0)


def krum(updates: torch.Tensor, *, f: int) -> torch.Tensor:
    """The update with the smallest sum of squared distances to its P - f - 2 nearest.

    Needs P > 2f + 2 (Blanchard et al.'s condition).
    """
    updates = _check_updates(updates)
    p = updates.shape[0]
    f = check_int("f", f, 0)
    if p <= 2 * f + 2:
        raise ValueError(f"Krum needs P > 2f + 2 peers, got P = {p} with f = {f}")
    d2 = torch.cdist(updates, updates).square()  # (P, P)
    nearest = d2.sort(dim=1).values[:, 1:p - f - 1]  # skip the zero self-distance
    return updates[nearest.sum(1).argmin()].clone()


def flag_subspace(unit: torch.Tensor, weights: torch.Tensor, *, m: int,
                  lam: float = 0.0) -> torch.Tensor:
    """Top-m eigenvectors of U (diag(w) + lam L) U^T, L = P I - 1 1^T, as (D, m).

    Solved in the P-dimensional span of the updates: with A = diag(w) + lam L and
    B = A^(1/2), the nonzero eigenvectors of (U B)(U B)^T are U B v / sqrt(s) for the
    eigenpairs (s, v) of the P x P matrix B U^T U B.
    """
    p = unit.shape[0]
    a = torch.diag(weights) + lam * (p * torch.eye(p) - torch.ones(p, p))
    s_a, v_a = torch.linalg.eigh(a)
    b = v_a @ torch.diag(s_a.clamp_min(0).sqrt()) @ v_a.T  # (P, P), A^(1/2)
    s, v = torch.linalg.eigh(b @ (unit @ unit.T) @ b)  # ascending
    s, v = s.flip(0)[:m], v.flip(1)[:, :m]
    return unit.T @ b @ v / s.clamp_min(1e-12).sqrt()  # (D, m), orthonormal


# show: start flag
def flag_aggregate(updates: torch.Tensor, *, m: int = 1, iters: int = 3,
                   lam: float = 0.0) -> torch.Tensor:
    """Flag Aggregator: project the unit updates onto a robust m-dim subspace."""
    updates = _check_updates(updates)
    m = check_int("m", m, 1, updates.shape[0])
    iters = check_int("iters", iters, 0)
    lam = check_real("lam", lam, 0.0)
    norms = updates.norm(dim=1).clamp_min(1e-12)  # (P,)
    unit = updates / norms[:, None]  # (P, D)
    w = torch.ones(updates.shape[0])  # first pass: uniform weights
    y = flag_subspace(unit, w, m=m, lam=lam)
    for _ in range(iters):  # IRLS on the sine distances to the subspace
        recon = (unit @ y).square().sum(1).clamp(0, 1)  # (P,) |Y^T u_i|^2
        w = 1.0 / (1.0 - recon).clamp_min(1e-6).sqrt()
        y = flag_subspace(unit, w / w.sum(), m=m, lam=lam)
    # the projection of the mean unit update, put back on the scale of a typical update
    return y @ (y.T @ unit.mean(0)) * norms.median()
# show: end flag


def bristle_aggregate(updates: torch.Tensor, *, own: int, class_rows: torch.Tensor,
                      loss_before: torch.Tensor, loss_after: torch.Tensor,
                      familiar: torch.Tensor, keep: int) -> torch.Tensor:
    """One peer's Bristle aggregate of P updates (its own is row ``own``).

    Args:
        updates: (P, D) received updates, own included.
        own: index of the peer's own update.
        class_rows: (C, R) positions in D of each class's output row (weights, bias).
        loss_before: (C,) the peer's loss per class on its own data, before updating.
        loss_after: (P, C) the same loss after applying each update alone.
        familiar: (C,) bool, classes the peer holds samples of.
        keep: k, updates kept per class by the distance-based prioritiser.

    Returns:
        (D,) the aggregate: per class row, the performance-weighted mean of the kept
        updates (uniform for unfamiliar classes); the shared layers average the updates
        kept for any familiar class.
    """
    # show: start bristle
    # distance-based prioritiser: per class, the k updates nearest to the own update
    rows = updates[:, class_rows]  # (P, C, R)
    dist = (rows - rows[own]).norm(dim=2)  # (P, C)
    near = torch.zeros_like(dist, dtype=torch.bool)
    near.scatter_(0, dist.topk(keep, dim=0, largest=False).indices, True)
    # performance-based integrator: weight = how much the update lowers the own loss
    gain = (loss_before[None] - loss_after).clamp_min(0)  # (P, C)
    gain[own] = gain[own].clamp_min(1e-12)  # the own update always counts
    w = torch.where(familiar[None], gain, torch.ones_like(gain)) * near  # (P, C)
    w = w / w.sum(0, keepdim=True)
    # layers shared by all classes: mean of the updates useful for a familiar class
    trusted = ((w[:, familiar] > 0).any(1) if familiar.any() else near.any(1)).float()
    out = trusted @ updates / trusted.sum()  # (D,)
    out[class_rows] = torch.einsum("pc,pcr->cr", w, rows)
    # show: end bristle
    return out


def aggregate(rule: str, updates: torch.Tensor, *, f: int, m: int = 1) -> torch.Tensor:
    """Apply one of the server-style rules (all of :data:`RULES` but Bristle).

    Args:
        rule: ``"mean"``, ``"median"``, ``"trimmed mean"``, ``"Krum"`` or ``"Flag"``.
        updates: (P, D).
        f: the number of liars the rule is told to tolerate.
        m: Flag Aggregator's subspace dimension.
    """
    if rule == "mean":
        return mean_rule(updates)
    if rule == "median":
        return coordinate_median(updates, f=f)
    if rule == "trimmed mean":
        return trimmed_mean(updates, f=f)
    if rule == "Krum":
        return krum(updates, f=f)
    if rule == "Flag":
        return flag_aggregate(updates, m=m)
    raise ValueError(f"rule must be one of {RULES[:-1]} (Bristle needs the peer's "
                     f"data: use bristle_aggregate), got {rule!r}")

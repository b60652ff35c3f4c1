"""Top-k softmax gating, capacity, load balancing and token permutation for a mixture of experts.

A mixture-of-experts (MoE) layer sends each token to ``top_k`` of ``n_experts`` feed-forward
networks. The router scores every expert (a logit per expert), a softmax turns the scores
into probabilities, and the ``top_k`` largest are kept as the token's mixing weights
(Shazeer et al., "Outrageously Large Neural Networks", arXiv:1701.06538, eq. 3-5). Because a
device holds a fixed-size buffer per expert, an expert accepts at most ``capacity`` tokens
(Switch Transformer, arXiv:2101.03961, eq. 3-4); the rest are *dropped* and pass through the
residual connection unchanged. An auxiliary loss keeps the load even (Switch, eq. 4-6).

To run the experts as one grouped matrix multiplication, the (token, choice) assignments are
sorted by expert (:func:`permute_tokens`): expert ``e`` then owns rows
``offsets[e]:offsets[e+1]`` of the sorted activations. :func:`unpermute_tokens` scatters the
experts' outputs back, weighted by the gate.

What the miniature leaves out: no router noise or jitter, no expert choice routing, no
token priority by score when dropping (Switch drops by position, as here).

Shapes: N tokens, E experts, k = top_k choices per token, A = N * k assignments, D model width.
Section: chapter 05, "Top-k routing from scratch".
"""

from __future__ import annotations

import math

import torch

from labkit.backend import Op
from labkit.validation import check_int, check_tensor
from labkit.validation import describe as _describe  # the Triton launchers import it from here

__all__ = [
    "expert_capacity",
    "capacity_mask",
    "load_balancing_loss",
    "topk_gating",
    "topk_gating_reference",
    "permute_tokens",
    "permute_tokens_reference",
    "unpermute_tokens",
    "expert_load",
]


def _check_logits(logits: torch.Tensor, top_k: int) -> None:
    check_tensor("logits", logits, dims=2, dtype="float", shape="(N, E)")
    check_int("top_k", top_k, 1)
    if top_k > logits.shape[1]:
        raise ValueError(f"top_k={top_k} exceeds the number of experts n_experts={logits.shape[1]}")


def topk_gating_reference(
    logits: torch.Tensor, top_k: int, *, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over experts, then keep the ``top_k`` largest probabilities of each token.

    Args:
        logits: router scores, one row per token.
        top_k: experts per token, ``1 <= top_k <= E``.
        renormalize: divide the kept probabilities by their sum (Mixtral-style), so the
            mixing weights of a token add up to 1; else keep the raw probabilities (Switch).

    Returns:
        ``(probs, weights, experts)``: the full softmax (for the balancing loss), the gate
        weights of the chosen experts (largest first) and their indices.

    Shapes:
        logits (N, E) -> probs (N, E) float32, weights (N, k) float32, experts (N, k) int64.
    """
    _check_logits(logits, top_k)
    probs = torch.softmax(logits.float(), dim=-1)  # eq. 3 (Shazeer et al.)
    weights, experts = torch.topk(probs, top_k, dim=-1)  # (N, k) each, sorted descending
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, experts


#: Fused softmax + top-k; Triton path in :mod:`labkit.moe._kernels`.
topk_gating = Op("topk_gating", reference=topk_gating_reference, triton="labkit.moe._kernels:topk_gating_triton")


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor * n_tokens * top_k / n_experts)`` (Switch eq. 3).

    A factor of 1.0 gives exactly enough slots if the load were perfectly even; real routers
    are uneven, so some tokens are dropped unless the factor is larger.
    """
    check_int("n_tokens", n_tokens, 0)
    check_int("n_experts", n_experts, 1)
    check_int("top_k", top_k, 1, n_experts)
    if isinstance(capacity_factor, bool) or not isinstance(capacity_factor, (int, float)):
        raise TypeError(f"capacity_factor must be a number, got {type(capacity_factor).__name__}")
    if not capacity_factor > 0 or math.isinf(capacity_factor):
        raise ValueError(f"capacity_factor must be a finite number > 0, got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def capacity_mask(experts: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Which assignments fit in their expert's buffer, first come first served.

    Assignments are served choice-major, then in token order: every token's first choice
    before any second choice (as GShard does), so a token loses its second expert before
    another token loses its first.

    Args:
        experts: chosen expert per (token, choice).
        n_experts: E.
        capacity: slots per expert, at least 1.

    Returns:
        Boolean mask, True where the assignment is kept.

    Shapes:
        experts (N, k) int64 -> mask (N, k) bool.
    """
    _check_experts(experts, n_experts)
    check_int("capacity", capacity, 1)
    order = experts.t().reshape(-1)  # (k * N,) choice-major
    onehot = torch.nn.functional.one_hot(order, n_experts)  # (k * N, E)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # slot the assignment would take
    return (position < capacity).reshape(experts.shape[1], experts.shape[0]).t()  # (N, k)


def _check_experts(experts: torch.Tensor, n_experts: int) -> None:
    check_int("n_experts", n_experts, 1)
    check_tensor("experts", experts, dims=2, dtype=torch.int64, shape="(N, k)")
    if experts.numel() and (int(experts.min()) < 0 or int(experts.max()) >= n_experts):
        raise ValueError(f"expert indices must lie in [0, {n_experts}), got [{int(experts.min())}, {int(experts.max())}]")


def expert_load(experts: torch.Tensor, n_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert (only those where ``mask`` is True), shape (E,) int64."""
    _check_experts(experts, n_experts)
    chosen = experts if mask is None else experts[mask]
    return torch.bincount(chosen.reshape(-1), minlength=n_experts)


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer's auxiliary loss ``E * sum_e f_e * P_e`` (arXiv:2101.03961, eq. 4-6).

    ``f_e`` is the fraction of assignments that chose expert ``e`` (not differentiable) and
    ``P_e`` the mean router probability of ``e`` (differentiable). The loss is 1 when both are
    uniform and grows as the router concentrates tokens on few experts.

    Shapes:
        probs (N, E), experts (N, k) -> scalar.
    """
    check_tensor("probs", probs, dims=2, shape="(N, E)")
    n_experts = probs.shape[1]
    _check_experts(experts, n_experts)
    if experts.shape[0] != probs.shape[0]:
        raise ValueError(f"probs and experts disagree on N: {probs.shape[0]} vs {experts.shape[0]}")
    fraction = expert_load(experts, n_experts).to(probs.dtype) / max(experts.numel(), 1)  # f_e, eq. 5
    mean_prob = probs.mean(dim=0)  # P_e, eq. 6
    return n_experts * (fraction * mean_prob).sum()  # eq. 4


def permute_tokens_reference(experts: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort the (token, choice) assignments by expert.

    Negative entries in ``experts`` mark dropped assignments; they are left out.

    Args:
        experts: chosen expert per (token, choice), or -1 for a dropped assignment.
        n_experts: E.

    Returns:
        ``(order, offsets)``: ``order[j]`` is the flat index ``token * k + choice`` of the
        j-th assignment in expert order (stable: token order within an expert), and expert
        ``e`` owns ``order[offsets[e]:offsets[e + 1]]``.

    Shapes:
        experts (N, k) int64 -> order (A_kept,) int64, offsets (E + 1,) int64.
    """
    check_int("n_experts", n_experts, 1)
    check_tensor("experts", experts, dims=2, dtype=torch.int64, shape="(N, k)")
    flat = experts.reshape(-1)  # (A,)
    if flat.numel() and int(flat.max()) >= n_experts:
        raise ValueError(f"expert index {int(flat.max())} >= n_experts={n_experts}")
    kept = torch.nonzero(flat >= 0).squeeze(1)  # (A_kept,)
    order = kept[torch.argsort(flat[kept], stable=True)]
    counts = torch.bincount(flat[kept], minlength=n_experts)
    offsets = torch.zeros(n_experts + 1, dtype=torch.int64, device=experts.device)
    offsets[1:] = counts.cumsum(0)
    return order, offsets


#: Counting-sort permutation; Triton path in :mod:`labkit.moe._kernels`.
permute_tokens = Op("permute_tokens", reference=permute_tokens_reference,
                    triton="labkit.moe._kernels:permute_tokens_triton")


def unpermute_tokens(y_sorted: torch.Tensor, order: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scatter expert outputs back to their tokens, weighted by the gate: ``out_i = sum_j g_ij y_ij``.

    Args:
        y_sorted: expert outputs in the order of :func:`permute_tokens`.
        order: flat assignment indices ``token * k + choice`` from :func:`permute_tokens`.
        weights: gate weights per (token, choice).

    Shapes:
        y_sorted (A_kept, D), order (A_kept,), weights (N, k) -> out (N, D).
    """
    if y_sorted.dim() != 2 or order.dim() != 1 or y_sorted.shape[0] != order.shape[0]:
        raise ValueError(f"y_sorted (A, D) and order (A,) must agree, got {tuple(y_sorted.shape)} and {tuple(order.shape)}")
    n_tokens, k = weights.shape
    gate = weights.reshape(-1)[order].to(y_sorted.dtype)  # (A_kept,)
    out = y_sorted.new_zeros(n_tokens, y_sorted.shape[1])
    return out.index_add(0, order // k, y_sorted * gate[:, None])

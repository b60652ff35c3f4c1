"""The mixture-of-experts feed-forward layer: route, drop over capacity, run experts, combine.

``MoEFFN`` replaces a transformer block's dense MLP. Each token's hidden state goes to its
router (:mod:`labkit.moe.routers`), the top-k gate (:func:`labkit.moe.gating.topk_gating`)
picks experts, assignments beyond an expert's capacity are dropped, the kept ones are sorted by
expert and run through two grouped GEMMs (:func:`labkit.moe.grouped_gemm.grouped_mm`) with a
GELU between, and the outputs are summed back weighted by the gate (Shazeer et al.,
arXiv:1701.06538, eq. 1: ``y = sum_i G(x)_i E_i(x)``). The layer also returns the Switch
load-balancing loss and, for the chapter's analyses, what it routed (:class:`Routing`).

Shapes: B batch, T tokens per sequence, N = B * T, D model width, F expert hidden width,
E experts, k top_k.
Section: chapter 05, "Top-k routing from scratch".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit.validation import check_int

from .gating import capacity_mask, expert_capacity, load_balancing_loss, permute_tokens, topk_gating, unpermute_tokens
from .grouped_gemm import grouped_mm
from .routers import Router

__all__ = ["MoEFFN", "Routing", "DenseFFN"]


@dataclass(frozen=True)
class Routing:
    """What one MoE layer did with a batch.

    Attributes:
        experts: chosen experts, -1 where the assignment was dropped, (N, k) int64.
        weights: gate weights (N, k).
        probs: full router probabilities (N, E).
        aux_loss: the load-balancing loss of this layer (scalar, differentiable).
        dropped: fraction of assignments dropped for lack of capacity.
    """

    experts: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor
    aux_loss: torch.Tensor
    dropped: float


class DenseFFN(nn.Module):
    """The dense MLP ``W_2 GELU(W_1 x)``; ``forward(x, state) -> (y, state, None)`` like MoEFFN."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.up = nn.Linear(check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1))
        self.down = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        return self.down(nn.functional.gelu(self.up(x))), state, None


class MoEFFN(nn.Module):
    """A sparse MLP of ``n_experts`` experts of hidden width ``d_ff``, ``top_k`` active per token.

    Args:
        d_model: D.
        d_ff: F, hidden width of each expert.
        router: a :class:`labkit.moe.routers.Router` with ``n_experts`` outputs.
        top_k: experts per token.
        capacity_factor: slots per expert relative to an even load (see
            :func:`labkit.moe.gating.expert_capacity`); ``None`` means no capacity limit.
    """

    def __init__(self, d_model: int, d_ff: int, router: Router, *, top_k: int = 2,
                 capacity_factor: float | None = None) -> None:
        super().__init__()
        if not isinstance(router, Router):
            raise TypeError(f"router must be a labkit.moe.routers.Router, got {type(router).__name__}")
        self.d_model, self.d_ff = check_int("d_model", d_model, 1), check_int("d_ff", d_ff, 1)
        self.n_experts = router.n_experts
        self.top_k = check_int("top_k", top_k, 1)
        if top_k > self.n_experts:
            raise ValueError(f"top_k={top_k} exceeds n_experts={self.n_experts}")
        if capacity_factor is not None:
            expert_capacity(1, self.n_experts, top_k, capacity_factor)  # validates the factor
        self.capacity_factor = capacity_factor
        self.router = router
        # Same initialisation as the dense MLP's nn.Linear layers in labkit.lm (std 0.02).
        self.w_up = nn.Parameter(torch.randn(self.n_experts, d_model, d_ff) * 0.02)  # (E, D, F)
        self.b_up = nn.Parameter(torch.zeros(self.n_experts, d_ff))
        self.w_down = nn.Parameter(torch.randn(self.n_experts, d_ff, d_model) * 0.02)  # (E, F, D)
        self.last_routing: Routing | None = None

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, Routing]:
        """Returns ``(y, new_routing_state, routing)``; ``x`` is (B, T, D) or (N, D)."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoEFFN expects last dimension D={self.d_model}, got {tuple(x.shape)}")
        h = x.reshape(-1, self.d_model)  # (N, D)
        # The Triton kernels are forward-only: while autograd records, use the references.
        backend = "reference" if torch.is_grad_enabled() else None
        logits, state = self.router(h, state)  # (N, E)
        probs, weights, experts = topk_gating(logits, self.top_k, backend=backend)
        aux = load_balancing_loss(probs, experts)
        weights = weights.to(h.dtype)
        if self.capacity_factor is not None:
            cap = expert_capacity(h.shape[0], self.n_experts, self.top_k, self.capacity_factor)
            keep = capacity_mask(experts, self.n_experts, cap)  # (N, k)
            experts = torch.where(keep, experts, torch.full_like(experts, -1))
        dropped = float((experts < 0).float().mean()) if experts.numel() else 0.0
        order, offsets = permute_tokens(experts, self.n_experts, backend=backend)  # (A,), (E + 1,)
        x_sorted = h[order // self.top_k]  # (A, D)
        expert_of_row = torch.repeat_interleave(torch.arange(self.n_experts, device=h.device), offsets.diff())
        hidden = grouped_mm(x_sorted, self.w_up, offsets, backend=backend) + self.b_up[expert_of_row]  # (A, F)
        y_sorted = grouped_mm(nn.functional.gelu(hidden), self.w_down, offsets, backend=backend)  # (A, D)
        y = unpermute_tokens(y_sorted, order, weights)  # (N, D), eq. 1
        routing = Routing(experts=experts.detach(), weights=weights.detach(), probs=probs.detach(),
                          aux_loss=aux, dropped=dropped)
        self.last_routing = routing
        return y.reshape(x.shape), state, routing

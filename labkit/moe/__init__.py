"""Mixture-of-experts routing (chapter 05): gating, capacity, routers, the MoE layer, grouped GEMM.

Section: chapter 05, "Routing tokens, queries and experts" (all sections).
"""

from .gating import (capacity_mask, expert_capacity, expert_load, load_balancing_loss, permute_tokens,
                     topk_gating, unpermute_tokens)
from .grouped_gemm import grouped_mm
from .layer import DenseFFN, MoEFFN, Routing
from .routers import LinearRouter, PreGateRouter, RecurrentRouter, Router

__all__ = ["DenseFFN", "LinearRouter", "MoEFFN", "PreGateRouter", "RecurrentRouter", "Router", "Routing", "capacity_mask",
           "expert_capacity", "expert_load", "grouped_mm", "load_balancing_loss", "permute_tokens", "topk_gating",
           "unpermute_tokens"]

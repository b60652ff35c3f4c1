"""Mixture-of-experts routing (chapter 05): gating, capacity, routers, the MoE layer, grouped GEMM.

Section: chapter 05, "Routing tokens, queries and experts" (all sections).
"""

from .gating import (capacity_mask, expert_capacity, expert_load, load_balancing_loss, permute_tokens,
                     topk_gating, unpermute_tokens)
from .grouped_gemm import grouped_mm
from .layer import DenseFFN, MoEFFN, Routing
from .model_routing import (DOMAINS, DomainCorpus, MemoryTier, NGramLM, QuerySet, ServingCost, coe_serving_time,
                            domain_corpus, fit_ngram, mixed_queries)
from .query_routing import (ExpertRouter, FrontierMargins, MoGURouter, RoutingCurve, SafetyMetrics, SafetyTask,
                            fit_gain_predictor, frontier_margins, make_safety_task, mogu_logits, prompt_features,
                            safety_metrics, threshold_routing, train_expert_router, train_mogu_router)
from .routers import LinearRouter, PreGateRouter, RecurrentRouter, Router

__all__ = ["DOMAINS", "DomainCorpus", "ExpertRouter", "FrontierMargins", "MemoryTier", "MoGURouter", "NGramLM",
           "QuerySet", "RoutingCurve", "SafetyMetrics", "SafetyTask", "ServingCost", "coe_serving_time", "domain_corpus",
           "fit_gain_predictor", "fit_ngram", "frontier_margins", "make_safety_task", "mixed_queries", "mogu_logits",
           "prompt_features", "safety_metrics", "threshold_routing", "train_expert_router", "train_mogu_router",
           "DenseFFN", "LinearRouter", "MoEFFN", "PreGateRouter", "RecurrentRouter", "Router", "Routing", "capacity_mask",
           "expert_capacity", "expert_load", "grouped_mm", "load_balancing_loss", "permute_tokens", "topk_gating",
           "unpermute_tokens"]

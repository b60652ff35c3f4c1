"""Mixture-of-experts routing (chapter 05): gating, capacity, routers, the MoE layer, grouped GEMM.

Section: chapter 05, "Routing tokens, queries and experts" (all sections).
"""

from .affinity import (affinity_counts, affinity_placement, conditional_affinity, device_loads, expert_paths,
                       round_robin_placement, transfer_rate, two_alltoall_rate)
from .gating import (capacity_mask, expert_capacity, expert_load, load_balancing_loss, permute_tokens,
                     topk_gating, unpermute_tokens)
from .grouped_gemm import grouped_mm
from .languages import (Language, MultiLanguageCorpus, default_languages, language_expert_counts,
                        multilanguage_corpus, normalized_mutual_information, shared_byte_mask)
from .layer import DenseFFN, MoEFFN, Routing
from .model_routing import (DOMAINS, DomainCorpus, MemoryTier, NGramLM, QuerySet, ServingCost, coe_serving_time,
                            domain_corpus, fit_ngram, mixed_queries)
from .prefetch import CacheStats, decode_time, expert_requests, simulate_cache
from .query_routing import (ExpertRouter, FrontierMargins, MoGURouter, RoutingCurve, SafetyMetrics, SafetyTask,
                            fit_gain_predictor, frontier_margins, make_safety_task, mogu_logits, prompt_features,
                            safety_metrics, threshold_routing, train_expert_router, train_mogu_router)
from .routers import LinearRouter, PreGateRouter, RecurrentRouter, Router

__all__ = ["CacheStats", "Language", "MultiLanguageCorpus", "affinity_counts", "affinity_placement",
           "conditional_affinity", "decode_time", "default_languages", "device_loads", "expert_paths", "expert_requests",
           "language_expert_counts", "multilanguage_corpus", "normalized_mutual_information", "round_robin_placement",
           "shared_byte_mask", "simulate_cache", "transfer_rate", "two_alltoall_rate",
           "DOMAINS", "DomainCorpus", "ExpertRouter", "FrontierMargins", "MemoryTier", "MoGURouter", "NGramLM",
           "QuerySet", "RoutingCurve", "SafetyMetrics", "SafetyTask", "ServingCost", "coe_serving_time", "domain_corpus",
           "fit_gain_predictor", "fit_ngram", "frontier_margins", "make_safety_task", "mixed_queries", "mogu_logits",
           "prompt_features", "safety_metrics", "threshold_routing", "train_expert_router", "train_mogu_router",
           "DenseFFN", "LinearRouter", "MoEFFN", "PreGateRouter", "RecurrentRouter", "Router", "Routing", "capacity_mask",
           "expert_capacity", "expert_load", "grouped_mm", "load_balancing_loss", "permute_tokens", "topk_gating",
           "unpermute_tokens"]

"""Routing tokens, queries and experts (chapter 05): gating, routers, the MoE layer, expert
placement and caching, and routers over whole models.

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- RMoE (``rmoe``), section 02 "RMoE: routers with memory": :mod:`~labkit.moe.routers`
  (the recurrent router) and :mod:`~labkit.moe.diagnostics` (entropies, inter-layer
  mutual information);
- ExFlow (``exflow``), section 03 "ExFlow: experts that follow each other":
  :mod:`~labkit.moe.affinity` (inter-layer affinity, affinity-aware placement);
- Read-ME (``read_me``), section 04 "Read-ME: routing before the backbone":
  :mod:`~labkit.moe.routers` (the pre-gating router) and :mod:`~labkit.moe.prefetch`
  (expert cache, lookahead prefetching);
- Post-MoE (``post_moe``), section 05 "Post-MoE: where routing turns language-specific":
  :mod:`~labkit.moe.languages` (multi-language corpus, routing by language);
- Composition of Experts on SambaNova SN40L (``sambanova_coe``), MoGU (``mogu``) and the
  routing survey (``routing_survey``), section 06 "Routing whole models":
  :mod:`~labkit.moe.model_routing` (n-gram experts, serving cost) and
  :mod:`~labkit.moe.query_routing` (expert, cost-aware and MoGU routers).

Section 01, "Top-k routing from scratch" (Shazeer et al. and the Switch Transformer, no paper of
its own in the list): :mod:`~labkit.moe.gating` (top-k gating, capacity, load balancing,
permutation), :mod:`~labkit.moe.layer` (the MoE feed-forward layer) and
:mod:`~labkit.moe.grouped_gemm` (one launch for every expert's GEMM).

Reporting for the chapter's pages (no paper of its own): :mod:`~labkit.moe.report` (capacity
tables, paired-seed intervals, figure menus, the grouped-GEMM timing on a GPU).
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

"""Chapter 01 (and later graph chapters): message passing as sparse linear algebra, and the
recommender models built on it.

Modules: :mod:`~labkit.graphs.edges` (edge lists, normalisation, gather-scatter),
:mod:`~labkit.graphs.interactions` (user-item data), :mod:`~labkit.graphs.metrics`
(Recall@K, NDCG@K), :mod:`~labkit.graphs.bpr` (BPR loss and batches).
"""

from .bpr import bpr_batches, bpr_loss
from .edges import bipartite_edge_index, check_edge_index, degree, gcn_norm, message_passing, to_csr
from .interactions import (
    Interactions,
    NegativeSampler,
    load_movielens_100k,
    sample_negatives,
    split_per_user,
    synthetic_interactions,
)
from .metrics import RankingMetrics, ranking_metrics

__all__ = [
    "Interactions",
    "NegativeSampler",
    "RankingMetrics",
    "bipartite_edge_index",
    "bpr_batches",
    "bpr_loss",
    "check_edge_index",
    "degree",
    "gcn_norm",
    "load_movielens_100k",
    "message_passing",
    "ranking_metrics",
    "sample_negatives",
    "split_per_user",
    "synthetic_interactions",
    "to_csr",
]

"""Chapter 01 (and later graph chapters): message passing as sparse linear algebra, and the
recommender models built on it.

Modules: :mod:`~labkit.graphs.edges` (edge lists, normalisation, gather-scatter),
:mod:`~labkit.graphs.sparse` (CSR SpMM and segment reductions, reference and Triton),
:mod:`~labkit.graphs.propagation` (GCN/LightGCN propagation, over-smoothing),
:mod:`~labkit.graphs.interactions` (user-item data), :mod:`~labkit.graphs.metrics`
(Recall@K, NDCG@K), :mod:`~labkit.graphs.bpr` (BPR loss and batches),
:mod:`~labkit.graphs.train` (early-stopped training), :mod:`~labkit.graphs.lightgcn`,
:mod:`~labkit.graphs.ultragcn`, :mod:`~labkit.graphs.graphhash`,
:mod:`~labkit.graphs.random_graphs` (matrices for timing).
"""

from .bpr import bpr_batches, bpr_loss
from .edges import bipartite_edge_index, check_edge_index, degree, gcn_norm, message_passing, to_csr
from .graphhash import HashedMF, HashedMFConfig, graphhash_buckets, random_hash_buckets, table_size, train_hashed_mf
from .interactions import (
    Interactions,
    NegativeSampler,
    load_movielens_100k,
    sample_negatives,
    split_per_user,
    synthetic_interactions,
)
from .lightgcn import LightGCN, LightGCNConfig, bipartite_adjacency, train_lightgcn
from .metrics import RankingMetrics, ranking_metrics
from .propagation import cosine_similarity_by_group, gcn_adjacency, lightgcn_adjacency, propagate_layers
from .sparse import row_chunks, segment_mean, segment_sum, spmm
from .ultragcn import UltraGCN, UltraGCNConfig, train_ultragcn

__all__ = [
    "HashedMF",
    "HashedMFConfig",
    "Interactions",
    "LightGCN",
    "LightGCNConfig",
    "NegativeSampler",
    "RankingMetrics",
    "UltraGCN",
    "UltraGCNConfig",
    "bipartite_adjacency",
    "bipartite_edge_index",
    "bpr_batches",
    "bpr_loss",
    "check_edge_index",
    "cosine_similarity_by_group",
    "degree",
    "gcn_adjacency",
    "gcn_norm",
    "graphhash_buckets",
    "lightgcn_adjacency",
    "load_movielens_100k",
    "message_passing",
    "propagate_layers",
    "random_hash_buckets",
    "ranking_metrics",
    "row_chunks",
    "sample_negatives",
    "segment_mean",
    "segment_sum",
    "split_per_user",
    "spmm",
    "synthetic_interactions",
    "table_size",
    "to_csr",
    "train_hashed_mf",
    "train_lightgcn",
    "train_ultragcn",
]

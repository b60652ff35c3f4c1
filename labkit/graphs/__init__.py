"""Message passing as sparse linear algebra, and the recommenders built on it (chapter 01).

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- UltraGCN (``ultragcn``), chapter 01 section 02 "UltraGCN": :mod:`~labkit.graphs.ultragcn`
  (the constraint losses and training), against the LightGCN baseline of
  :mod:`~labkit.graphs.lightgcn`;
- GraphHash (``graphhash``), chapter 01 section 03 "GraphHash": :mod:`~labkit.graphs.graphhash`
  (modularity buckets as ID hashing).

The machinery of section 01, "Message passing is a sparse matrix product" (GCN and LightGCN
propagation, no paper of its own in the list): :mod:`~labkit.graphs.edges` (edge lists,
normalisation, gather-scatter), :mod:`~labkit.graphs.sparse` (CSR SpMM and segment reductions,
reference and Triton), :mod:`~labkit.graphs.propagation` (propagation, over-smoothing) and
:mod:`~labkit.graphs.random_graphs` (matrices for timing). Shared by sections 02 and 03:
:mod:`~labkit.graphs.interactions` (user-item data), :mod:`~labkit.graphs.metrics` (Recall@K,
NDCG@K), :mod:`~labkit.graphs.bpr` (BPR loss and batches), :mod:`~labkit.graphs.train`
(early-stopped training).

Chapter 02, link prediction, robustness and expressivity (imported from their modules):

- NCN / NCNC (``ncn``), chapter 02 section 01 "Link prediction with common neighbours":
  :mod:`~labkit.graphs.ncn` (common neighbours as a sparse product, completion), on the splits
  and OGB metrics of :mod:`~labkit.graphs.linkpred`, the GCN and GAE of :mod:`~labkit.graphs.gcn`,
  the training loop of :mod:`~labkit.graphs.linktrain` and the seeded graphs of
  :mod:`~labkit.graphs.csbm`;
- Topological Concentration (``topological_concentration``), chapter 02 section 02
  "Topological Concentration": :mod:`~labkit.graphs.topology` (exact TC, ATC, the planted
  generator, TC-raising edge weights);
- STABLE (``stable``), chapter 02 section 03 "STABLE": :mod:`~labkit.graphs.robust` (random,
  DICE and degree-targeted structure attacks, Metattack's Meta-Self gradient attack;
  contrastive embeddings, refinement and the degree-weighted aggregation);
- SPEN (``spen``), chapter 02 section 04 "Beyond 1-WL": :mod:`~labkit.graphs.expressivity`
  (ego-nets, the equivariant layer with its matrix-product term, a 1-WL-bounded MPNN, the
  1-WL-equal pairs);
- DHT (``dht``), chapter 02 section 04 "Beyond 1-WL": :mod:`~labkit.graphs.hypergraph` (the
  dual hypergraph's incidence and convolution, HyperDrop, the edge task and its node baseline).

Chapter 04, message passing over time, tables and circuits (imported from their modules):

- Graph Mamba (``graph_mamba``), chapter 04 section 01 "Graph Mamba":
  :mod:`~labkit.graphs.ssm` (the selective scan, as a recurrence and as a parallel associative
  scan) and :mod:`~labkit.graphs.graph_mamba` (neighbourhood tokens, degree ordering, the
  bidirectional scan over nodes, the long-range task and its k-layer MPNN baseline);
- Todyformer (``todyformer``), chapter 04 section 02 "Todyformer": :mod:`~labkit.graphs.temporal`
  (the seeded event stream, the time-respecting split, time patches, the MPNN tokeniser and
  transformer over patch tokens, the TGAT-like baseline over the last W events, AP and MRR);
- Relational Deep Learning (``relational_deep_learning``), chapter 04 section 03 "Relational
  deep learning": :mod:`~labkit.graphs.relational` (the SQLite shop, ``Database``/``Table``/
  ``EntityTask``, the time-respecting sampler, the heterogeneous GNN, SQL ``GROUP BY`` features);
- PreRoutGNN (``preroutgnn``), chapter 04 section 04 "PreRoutGNN": :mod:`~labkit.graphs.timing`
  (seeded netlists with NLDM tables, static timing analysis, levels, the level-by-level model
  with local delays and attention over tables, the order-preserving partition, the graph
  auto-encoder for pre-training, the equal-size GCN baseline, slack R^2 by depth).
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
from .propagation import (
    cosine_similarity_by_group,
    gcn_adjacency,
    layer_to_layer_cosine,
    lightgcn_adjacency,
    propagate_layers,
)
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
    "layer_to_layer_cosine",
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

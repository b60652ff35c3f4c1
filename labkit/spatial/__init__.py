"""Message passing in space: rows of a feature map and point pairs as graphs (chapter 03).

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- Spatial CNN (``scnn``), chapter 03 section 01 "Spatial CNN: messages between rows":
  :mod:`~labkit.spatial.scnn` (slice-by-slice message passing, the occluded-lane scenes, the
  span IoU);
- DenseGAP (``densegap``), chapter 03 section 02 "DenseGAP: anchors for repeated textures":
  :mod:`~labkit.spatial.matching` (textures and warps, descriptors, mutual nearest neighbours,
  anchors with the ratio test and cycle check, anchor -> pixel context, coarse-to-fine
  matching, PCK);
- SE(n) weight sharing in position-orientation space (``se_n_weight_sharing``), chapter 03
  section 03 "Position-orientation space: invariants of point pairs":
  :mod:`~labkit.spatial.ponita` (pair invariants, sphere grids, the separable layer, the R^3 and
  R^3 x S^2 models, an SE(3)-indexed layer for timing), trained on the charged particles of
  :mod:`~labkit.spatial.nbody`.

Shared by both sections: :mod:`~labkit.spatial.train` (training and scoring loops) and
:mod:`~labkit.spatial.figures` (the figures with their sliders). The anchor -> pixel messages
use :func:`labkit.graphs.message_passing` and the point-pair messages aggregate with
:func:`labkit.graphs.segment_sum` over receiver-sorted edges, as in chapter 01.
"""

from .matching import (
    Anchors,
    ImagePair,
    anchor_context,
    describe,
    find_anchors,
    image_pair,
    match,
    match_coarse_to_fine,
    mutual_nearest,
    pck,
    queries_inside,
    repeated_texture,
)
from .nbody import ChargedSystems, accelerations, charged_systems, energy, leapfrog
from .ponita import (
    OrientationNet,
    PositionNet,
    SE3GridLayer,
    SeparableLayer,
    fully_connected,
    pair_distance,
    pair_invariants,
    so3_grid,
    sphere_grid,
)
from .scnn import DIRECTIONS, LaneNet, LaneScenes, SpatialConv, lane_scenes, receptive_field, span_iou
from .train import LaneScores, evaluate_lanes, fit, nbody_batch, nbody_mse, train_lane_net, train_nbody

__all__ = [
    "DIRECTIONS",
    "Anchors",
    "ImagePair",
    "anchor_context",
    "describe",
    "find_anchors",
    "image_pair",
    "match",
    "match_coarse_to_fine",
    "mutual_nearest",
    "pck",
    "queries_inside",
    "repeated_texture",
    "ChargedSystems",
    "LaneNet",
    "LaneScenes",
    "LaneScores",
    "OrientationNet",
    "PositionNet",
    "SE3GridLayer",
    "SeparableLayer",
    "SpatialConv",
    "accelerations",
    "charged_systems",
    "energy",
    "evaluate_lanes",
    "fit",
    "fully_connected",
    "lane_scenes",
    "leapfrog",
    "nbody_batch",
    "nbody_mse",
    "pair_distance",
    "pair_invariants",
    "receptive_field",
    "so3_grid",
    "span_iou",
    "sphere_grid",
    "train_lane_net",
    "train_nbody",
]

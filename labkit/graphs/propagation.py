"""Propagation rules of GCN and LightGCN as repeated sparse products, and the over-smoothing
they cause.

- GCN layer (Kipf & Welling, arXiv:1609.02907, eq. 2): ``H' = sigma(Â H W)`` with
  ``Â = D^{-1/2} (A + I) D^{-1/2}``, degrees counted with the self-loops.
- LightGCN layer (He et al., arXiv:2002.02126, eq. 7): ``E' = D^{-1/2} A D^{-1/2} E``, no weight,
  no non-linearity, no self-loop; the final embedding averages layers 0..K (eq. 8).

Repeating the normalised product K times keeps only the eigenvectors of ``Â`` whose eigenvalues
have modulus 1. With self-loops (GCN) the only one is the eigenvalue 1 of a connected graph, with
eigenvector ``D^{1/2} 1``: with enough layers all nodes point the same way (*over-smoothing*),
which :func:`cosine_similarity_by_group` measures. Without self-loops (LightGCN) a connected
*bipartite* graph, such as a user-item graph, also has the eigenvalue -1, whose eigenvector is
``D^{1/2} 1`` with the sign flipped on one side: the users settle on one direction, the items on
another, and the two swap at every layer; :func:`layer_to_layer_cosine` shows the oscillation.
(LightGCN's average over layers 0..K damps that part as 1/K.)

Shapes: N nodes, F features, K layers.
Section: chapter 01, "Message passing is a sparse matrix product".
"""

from __future__ import annotations

import torch

from .edges import gcn_norm, to_csr

__all__ = ["cosine_similarity_by_group", "gcn_adjacency", "layer_to_layer_cosine", "lightgcn_adjacency",
           "propagate_layers"]


def gcn_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``D^{-1/2} (A + I) D^{-1/2}`` as an (N, N) sparse CSR tensor (GCN's propagation matrix)."""
    ei, w = gcn_norm(edge_index, num_nodes, add_self_loops=True)
    return to_csr(ei, num_nodes, w)


def lightgcn_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` as an (N, N) sparse CSR tensor (LightGCN's propagation matrix)."""
    ei, w = gcn_norm(edge_index, num_nodes, add_self_loops=False)
    return to_csr(ei, num_nodes, w)


def propagate_layers(x: torch.Tensor, adj: torch.Tensor, n_layers: int) -> list[torch.Tensor]:
    """``[x, adj x, adj^2 x, ..., adj^K x]``: the K+1 layer outputs of linear propagation.

    Args:
        x: (N, F) layer-0 features.
        adj: (N, N) sparse CSR (or dense) propagation matrix.
        n_layers: K >= 0.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 0:
        raise ValueError(f"n_layers must be an int >= 0, got {n_layers!r}")
    if adj.shape[1] != x.shape[0]:
        raise ValueError(f"adj has {adj.shape[1]} columns but x has {x.shape[0]} rows")
    layers = [x]
    for _ in range(n_layers):
        layers.append(adj @ layers[-1])  # one round of message passing
    return layers


def cosine_similarity_by_group(x: torch.Tensor, group: torch.Tensor) -> tuple[float, float]:
    """Mean cosine similarity of node pairs within the same group and across groups.

    Computed without forming the N x N matrix: with unit rows ``u_i``, the sum over pairs in
    groups g, h is ``s_g . s_h`` where ``s_g`` is the sum of the unit rows of group g.

    Args:
        x: (N, F) node vectors (zero rows count as similarity 0).
        group: (N,) int64 group ids.

    Returns:
        ``(within, across)``: the mean over distinct same-group pairs and over cross-group pairs.
    """
    if x.dim() != 2 or group.shape != (x.shape[0],):
        raise ValueError(f"need x (N, F) and group (N,), got {tuple(x.shape)} and {tuple(group.shape)}")
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    n_groups = int(group.max()) + 1
    sums = torch.zeros(n_groups, x.shape[1], dtype=torch.float64).index_add_(0, group, unit)
    sizes = torch.bincount(group, minlength=n_groups).double()
    self_sim = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, (unit * unit).sum(1))
    gram = sums @ sums.T                                     # pair sums between groups
    within_pairs = (sizes * (sizes - 1)).sum()
    within = (gram.diagonal() - self_sim).sum() / within_pairs
    across_pairs = sizes.sum() ** 2 - (sizes**2).sum()
    across = (gram.sum() - gram.diagonal().sum()) / across_pairs
    return float(within), float(across)


def layer_to_layer_cosine(layers: list[torch.Tensor]) -> list[float]:
    """Mean over nodes of the cosine between a node's vectors at layers k and k + 1.

    Near 1 once propagation has settled on a fixed direction per node; near -1 or 0 when the
    directions keep swapping (the eigenvalue -1 of a bipartite graph without self-loops). Zero
    vectors count as similarity 0.

    Args:
        layers: K + 1 >= 2 tensors (N, F), as returned by :func:`propagate_layers`.

    Returns:
        K floats, entry k for the pair of layers (k, k + 1).
    """
    if not isinstance(layers, (list, tuple)) or len(layers) < 2:
        raise ValueError(f"layers must be a list of at least two (N, F) tensors, got {type(layers).__name__}"
                         f" of length {len(layers) if isinstance(layers, (list, tuple)) else 'n/a'}")
    shape = layers[0].shape
    if len(shape) != 2 or any(h.shape != shape for h in layers):
        raise ValueError(f"layers must all be (N, F) of one shape, got {[tuple(h.shape) for h in layers]}")
    # show: start cosine
    unit = [torch.nn.functional.normalize(h.double(), dim=1) for h in layers]
    # mean over nodes i of cos(h_i^(k), h_i^(k+1)), for k = 0 .. K-1
    return [float((a * b).sum(1).mean()) for a, b in zip(unit[:-1], unit[1:])]
    # show: end cosine

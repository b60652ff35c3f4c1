"""Graphs as edge lists: validation, degrees, the normalised adjacency, and message passing.

A graph of N nodes is stored as ``edge_index``, an int64 tensor of shape (2, M) whose column
``(src, dst)`` is one directed edge (an undirected edge is stored in both directions). Message
passing sends ``x[src] * w`` along each edge and sums (or averages) what arrives at ``dst``;
written as a matrix, that is ``A @ x`` with ``A[dst, src] = w``, which is why chapter 01 treats
message passing as sparse linear algebra. GCN and LightGCN use the symmetric normalisation
``D^{-1/2} A D^{-1/2}`` (Kipf & Welling, arXiv:1609.02907, eq. 2; LightGCN, arXiv:2002.02126,
eq. 7), which keeps repeated propagation from blowing up or vanishing with node degree.

Shapes: N nodes, M directed edges, F features.
Section: chapter 01, "Message passing is a sparse matrix product".
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "bipartite_edge_index",
    "check_edge_index",
    "degree",
    "gcn_norm",
    "message_passing",
    "to_csr",
]


def check_edge_index(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Validate ``edge_index`` (2, M) int64 with ids in [0, num_nodes); return it unchanged."""
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, M), got {tuple(edge_index.shape)}")
    if edge_index.dtype != torch.int64:
        raise TypeError(f"edge_index must be int64, got {edge_index.dtype}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be an int >= 0, got {num_nodes!r}")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0:
            raise ValueError(f"edge_index holds a negative node id ({lo})")
        if hi >= num_nodes:
            raise ValueError(f"edge_index holds node id {hi}, out of range for num_nodes={num_nodes}")
    return edge_index


def degree(index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Number of occurrences of each node id in ``index`` (M,): (N,) float32."""
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    return torch.bincount(index, minlength=num_nodes).to(torch.float32)


def to_csr(edge_index: torch.Tensor, num_nodes: int, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The adjacency as a sparse CSR tensor with ``A[dst, src] = w`` (rows receive messages).

    Duplicate edges are summed. Returns an (N, N) ``torch.sparse_csr`` tensor of float32.
    """
    check_edge_index(edge_index, num_nodes)
    src, dst = edge_index
    w = torch.ones(src.numel(), dtype=torch.float32, device=src.device) if edge_weight is None else edge_weight
    if w.shape != src.shape:
        raise ValueError(f"edge_weight must have shape ({src.numel()},), got {tuple(w.shape)}")
    coo = torch.sparse_coo_tensor(torch.stack([dst, src]), w.to(torch.float32), (num_nodes, num_nodes),
                                  check_invariants=False)
    with warnings.catch_warnings():  # "CSR support is in beta": true, and not the reader's concern
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return coo.coalesce().to_sparse_csr()


def gcn_norm(edge_index: torch.Tensor, num_nodes: int, *, add_self_loops: bool = False) -> torch.Tensor:
    """Edge weights of the symmetric normalisation ``w_e = 1 / sqrt(deg(src) deg(dst))``.

    With ``add_self_loops`` the loops are appended to the returned edge list (GCN's A + I).

    Returns:
        ``(edge_index, edge_weight)``: (2, M') int64 and (M',) float32; isolated nodes get no NaN.
    """
    check_edge_index(edge_index, num_nodes)
    if add_self_loops:
        loops = torch.arange(num_nodes, device=edge_index.device).repeat(2, 1)
        edge_index = torch.cat([edge_index, loops], dim=1)
    src, dst = edge_index
    deg = degree(dst, num_nodes)
    # D^{-1/2} A D^{-1/2}: weight of edge (src -> dst) is deg(src)^-1/2 * deg(dst)^-1/2
    inv_sqrt = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    return edge_index, inv_sqrt[src] * inv_sqrt[dst]


def message_passing(x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None,
                    *, aggr: str = "sum") -> torch.Tensor:
    """One round of gather-scatter message passing (the reference view of ``A @ x``).

    Each edge (src -> dst) carries ``w * x[src]`` (gather); each node sums, or averages, what
    arrives (scatter with ``index_add_``).

    Args:
        x: (N, F) node features.
        edge_index: (2, M) edges.
        edge_weight: (M,) weights, default 1.
        aggr: ``"sum"`` or ``"mean"`` (mean over incoming edges; nodes with none get 0).

    Returns:
        (N, F) aggregated messages.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (N, F), got shape {tuple(x.shape)}")
    check_edge_index(edge_index, x.shape[0])
    if aggr not in ("sum", "mean"):
        raise ValueError(f"aggr must be 'sum' or 'mean', got {aggr!r}")
    src, dst = edge_index
    messages = x[src]  # gather: (M, F)
    if edge_weight is not None:
        if edge_weight.shape != src.shape:
            raise ValueError(f"edge_weight must have shape ({src.numel()},), got {tuple(edge_weight.shape)}")
        messages = messages * edge_weight.unsqueeze(1).to(x.dtype)
    out = torch.zeros_like(x).index_add_(0, dst, messages)  # scatter-sum: (N, F)
    if aggr == "mean":
        out = out / degree(dst, x.shape[0]).clamp(min=1).unsqueeze(1).to(x.dtype)
    return out


def bipartite_edge_index(pairs: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """User-item pairs (2, E) as an undirected graph over N = n_users + n_items nodes.

    Users keep their ids, item ``i`` becomes node ``n_users + i``; both directions are stored,
    so the result has shape (2, 2E).
    """
    if pairs.dim() != 2 or pairs.shape[0] != 2:
        raise ValueError(f"pairs must have shape (2, E), got {tuple(pairs.shape)}")
    users, items = pairs
    if pairs.numel() and (int(users.min()) < 0 or int(users.max()) >= n_users):
        raise ValueError(f"user ids must lie in [0, {n_users})")
    if pairs.numel() and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"item ids must lie in [0, {n_items})")
    items = items + n_users
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])

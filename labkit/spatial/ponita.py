"""Weight sharing in position-orientation space: messages conditioned on invariants of point pairs.

After *Fast, Expressive SE(n) Equivariant Networks through Weight-Sharing in Position-Orientation
Space* (Bekkers et al., 2023, arXiv:2310.02970). A convolution shares one kernel over all pairs
of points that a group element maps onto each other; for SE(3) those equivalence classes are
labelled by invariants of the pair. Between two positions in R^3 the only invariant is the
distance, which loses all direction. Between two *position-orientation* pairs ``(x_i, o_i)`` and
``(x_j, o_j)`` in R^3 x S^2 there are three (the paper's bijective attributes):

    a_ij = [o_i . (x_j - x_i),  |(x_j - x_i) - (o_i . (x_j - x_i)) o_i|,  o_i . o_j]

the displacement along ``o_i``, its length across ``o_i``, and the angle between the
orientations. A message is an MLP of ``a_ij`` times the sender's features, so any function of
these invariants is SE(3)-invariant by construction. Orientations come either from the data
(one per point, here a particle's velocity) or from a fixed grid on the sphere (every point gets
all grid orientations; the layer then factorises into a spatial and a spherical convolution, the
paper's separable layer). A fixed grid is not rotated with the input, so a model on it is
equivariant only approximately, better on finer grids. The miniature leaves out the paper's
ConvNeXt blocks, polynomial embeddings of the attributes and the molecular benchmarks.

Shapes: N points, M directed edges (``edge_index[0]`` sends, ``edge_index[1]`` receives),
K orientations per point, C channels, G rotations of an SO(3) grid.
Section: chapter 03, "Position-orientation space: invariants of point pairs"
"""

from __future__ import annotations

import math

import torch
from torch import nn

from labkit.graphs.edges import check_edge_index
from labkit.graphs.sparse import segment_sum
from labkit.validation import check_finite_tensor, check_int, check_tensor

__all__ = ["OrientationNet", "PositionNet", "SE3GridLayer", "SeparableLayer", "fully_connected",
           "pair_distance", "pair_invariants", "so3_grid", "sphere_grid"]


def _check_pairs(pos: torch.Tensor, edge_index: torch.Tensor, ori: torch.Tensor | None = None) -> None:
    check_tensor("pos", pos, dims=2, dtype="float", shape="(N, 3)")
    if pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (N, 3), got {tuple(pos.shape)}")
    check_finite_tensor("pos", pos)
    check_edge_index(edge_index, pos.shape[0])
    if ori is not None:
        check_tensor("ori", ori, dims=(2, 3), dtype="float", shape="(N, 3) or (N, K, 3)")
        if ori.shape[0] != pos.shape[0] or ori.shape[-1] != 3:
            raise ValueError(f"ori must have shape (N, 3) or (N, K, 3) with N = {pos.shape[0]}, "
                             f"got {tuple(ori.shape)}")
        check_finite_tensor("ori", ori)
        err = float((ori.norm(dim=-1) - 1).abs().max()) if ori.numel() else 0.0
        if err > 1e-4:
            raise ValueError(f"ori must hold unit vectors (norm 1), the worst is off by {err:.3g}")


def pair_distance(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The one invariant of a pair of points in R^3: ``|x_j - x_i|``, as an (M, 1) tensor."""
    _check_pairs(pos, edge_index)
    src, dst = edge_index
    return (pos[src] - pos[dst]).norm(dim=-1, keepdim=True)


def pair_invariants(pos: torch.Tensor, ori: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The three invariants of position-orientation pairs, for every edge and orientation.

    Args:
        pos: (N, 3) positions.
        ori: (N, 3) one unit orientation per point, or (N, K, 3) K per point (pairs are formed
            between the k-th orientation of the receiver and the k-th of the sender).
        edge_index: (2, M), sender j = ``edge_index[0]``, receiver i = ``edge_index[1]``.

    Returns:
        (M, 3) or (M, K, 3): ``[o_i . d, |d - (o_i . d) o_i|, o_i . o_j]``, d = x_j - x_i.
    """
    _check_pairs(pos, edge_index, ori)
    j, i = edge_index
    d = pos[j] - pos[i]  # (M, 3)
    o_i, o_j = ori[i], ori[j]  # (M, 3) or (M, K, 3)
    if ori.dim() == 3:
        d = d[:, None, :]  # (M, 1, 3): the same displacement for every orientation
    along = (o_i * d).sum(-1, keepdim=True)  # o_i . d
    across = (d - along * o_i).norm(dim=-1, keepdim=True)  # |d - (o_i . d) o_i|
    turn = (o_i * o_j).sum(-1, keepdim=True)  # o_i . o_j
    return torch.cat([along, across, turn], dim=-1)


def sphere_grid(n: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` near-uniform unit vectors on the sphere (a Fibonacci lattice), shape (n, 3)."""
    n = check_int("n", n, 2)
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n  # heights spaced evenly in [-1, 1]
    phi = math.pi * (3 - math.sqrt(5)) * k  # golden-angle turns
    r = (1 - z**2).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], dim=-1).to(dtype)


def so3_grid(n_sphere: int, n_inplane: int, *, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rotations whose third column runs over :func:`sphere_grid` and which turn about it by
    ``n_inplane`` evenly spaced angles, shape (G, 3, 3) with G = ``n_sphere * n_inplane``."""
    axes = sphere_grid(n_sphere, dtype=torch.float64)
    n_inplane = check_int("n_inplane", n_inplane, 1)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand_as(axes).clone()
    helper[axes[:, 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = torch.nn.functional.normalize(torch.linalg.cross(helper, axes), dim=-1)
    e2 = torch.linalg.cross(axes, e1)
    out = []
    for t in range(n_inplane):
        angle = 2 * math.pi * t / n_inplane
        a, b = math.cos(angle) * e1 + math.sin(angle) * e2, -math.sin(angle) * e1 + math.cos(angle) * e2
        out.append(torch.stack([a, b, axes], dim=-1))  # columns
    return torch.stack(out, dim=1).reshape(-1, 3, 3).to(dtype)


def fully_connected(n: int, *, n_graphs: int = 1) -> torch.Tensor:
    """Directed edges between all ordered pairs of distinct points of each of ``n_graphs``
    graphs of ``n`` points (points numbered graph by graph), sorted by receiver: (2, M)."""
    n, n_graphs = check_int("n", n, 1), check_int("n_graphs", n_graphs, 1)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    offset = (torch.arange(n_graphs) * n)[:, None]
    dst = (i[keep][None, :] + offset).flatten()
    src = (j[keep][None, :] + offset).flatten()
    return torch.stack([src, dst])


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


def _receiver_ptr(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    dst = edge_index[1]
    if dst.numel() > 1 and bool((dst.diff() < 0).any()):
        raise ValueError("edge_index must be sorted by receiver (edge_index[1]), as fully_connected builds it")
    counts = torch.bincount(dst, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class SeparableLayer(nn.Module):
    """One separable convolution in position-orientation space, then a pointwise MLP.

    Spatial: ``f'(i, k) = sum_j k_s(a_ij^k) * f(j, k)``, a kernel of the pair invariants;
    spherical: ``f''(i, k) = (1/K) sum_l k_o(o_ik . o_il) * f'(i, l)``; then
    ``f <- f + MLP(f'')``. With one orientation per point the spherical step is a scaling.
    """

    def __init__(self, channels: int, hidden: int, *, n_invariants: int = 3) -> None:
        super().__init__()
        self.spatial = _mlp(check_int("n_invariants", n_invariants, 1), hidden, channels)
        self.spherical = _mlp(1, hidden, channels)
        self.update = _mlp(channels, hidden, channels)

    # show: start separable
    def forward(self, f: torch.Tensor, attr: torch.Tensor, edge_index: torch.Tensor,
                ori: torch.Tensor) -> torch.Tensor:
        """f (N, K, C); attr (M, K, A) pair invariants; ori (N, K, 3). Returns (N, K, C)."""
        n, k, c = f.shape
        j = edge_index[0]
        messages = self.spatial(attr) * f[j]  # (M, K, C): kernel(a_ij) * f_j
        ptr = _receiver_ptr(edge_index, n)
        f_sp = segment_sum(messages.reshape(-1, k * c), ptr, backend="reference")
        f_sp = f_sp.reshape(n, k, c)  # sum over senders j of each receiver i
        cos = ori @ ori.transpose(1, 2)  # (N, K, K): o_k . o_l at each point
        kernel = self.spherical(cos[..., None])  # (N, K, K, C)
        f_sph = (kernel * f_sp[:, None, :, :]).mean(dim=2)  # (N, K, C)
        return f + self.update(f_sph)
    # show: end separable


class OrientationNet(nn.Module):
    """An N-body model in R^3 x S^2: lift, separable layers, equivariant vector readout.

    Node inputs: scalars (charge, speed) and the velocity. Each point carries K orientations:
    with ``grid=None`` the one from the data (its velocity's direction), else the K points of
    ``grid`` (the same for every point; :meth:`with_grid` swaps it, the weights do not depend on
    K). The lift embeds ``[scalars, o . v]`` per orientation;
    the readout predicts a displacement ``mean_k g(f(i, k)) o_ik + sum_j (x_j - x_i) h(f_i, f_j,
    |x_j - x_i|)``, equivariant by construction when the orientations rotate with the input.

    Args:
        channels, hidden: feature and MLP widths.
        n_layers: separable layers.
        n_scalars: scalar inputs per point.
        grid: (K, 3) unit vectors, or None for orientations from the data.
    """

    def __init__(self, channels: int = 16, hidden: int = 32, *, n_layers: int = 2, n_scalars: int = 2,
                 grid: torch.Tensor | None = None) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("hidden", hidden, 1)
        self.lift = _mlp(check_int("n_scalars", n_scalars, 0) + 1, hidden, channels)
        self.layers = nn.ModuleList(SeparableLayer(channels, hidden) for _ in range(check_int("n_layers", n_layers, 1)))
        self.to_ori = _mlp(channels, hidden, 1)
        self.to_pair = _mlp(2 * channels + 1, hidden, 1)
        if grid is not None:
            check_tensor("grid", grid, dims=2, dtype="float", shape="(K, 3)")
            if grid.shape[0] < 2 or grid.shape[1] != 3:
                raise ValueError(f"grid must be (K, 3) with K >= 2 orientations, got {tuple(grid.shape)}")
            self.register_buffer("grid", grid.clone())
        else:
            self.grid = None

    def with_grid(self, grid: torch.Tensor) -> "OrientationNet":
        """The same weights on another (K, 3) grid of unit vectors (K >= 2)."""
        check_tensor("grid", grid, dims=2, dtype="float", shape="(K, 3)")
        if grid.shape[0] < 2 or grid.shape[1] != 3:
            raise ValueError(f"grid must be (K, 3) with K >= 2 orientations, got {tuple(grid.shape)}")
        if self.grid is None:
            raise ValueError("this model takes its orientations from the data; it has no grid to swap")
        self.grid = grid.to(self.grid.dtype).clone()
        return self

    def orientations(self, vel: torch.Tensor) -> torch.Tensor:
        """(N, K, 3): the velocity's direction (K = 1) or the fixed grid at every point."""
        if self.grid is None:
            return torch.nn.functional.normalize(vel, dim=-1)[:, None, :]
        return self.grid.to(vel.dtype).expand(vel.shape[0], -1, -1)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, scalars: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        """Predicted displacements (N, 3) of points at ``pos`` (N, 3) moving at ``vel`` (N, 3)."""
        _check_inputs(pos, vel, scalars)
        ori = self.orientations(vel)  # (N, K, 3)
        attr = pair_invariants(pos, ori, edge_index)  # (M, K, 3)
        ov = (ori * vel[:, None, :]).sum(-1, keepdim=True)  # (N, K, 1): o . v
        f = self.lift(torch.cat([scalars[:, None, :].expand(-1, ori.shape[1], -1), ov], dim=-1))
        for layer in self.layers:
            f = layer(f, attr, edge_index, ori)
        # vector readout sum_k g(f(i, k)) o_ik, as a mean so that one trained model runs on
        # any grid size (the integral over the sphere, by quadrature on the grid)
        out = (self.to_ori(f) * ori).mean(dim=1)  # (N, 3)
        return out + _pair_readout(self.to_pair, f.mean(dim=1), pos, edge_index)


class PositionNet(nn.Module):
    """The R^3 baseline: messages conditioned on distances only, the same readout's pair term.

    Node inputs are the scalars (charge, speed); a velocity's direction cannot enter, since no
    invariant of two positions sees it.
    """

    def __init__(self, channels: int = 16, hidden: int = 32, *, n_layers: int = 2, n_scalars: int = 2) -> None:
        super().__init__()
        self.lift = _mlp(check_int("n_scalars", n_scalars, 0), check_int("hidden", hidden, 1),
                         check_int("channels", channels, 1))
        self.layers = nn.ModuleList(SeparableLayer(channels, hidden, n_invariants=1)
                                    for _ in range(check_int("n_layers", n_layers, 1)))
        self.to_pair = _mlp(2 * channels + 1, hidden, 1)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, scalars: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        """Predicted displacements (N, 3); ``vel`` is accepted for a common signature, unused."""
        _check_inputs(pos, vel, scalars)
        attr = pair_distance(pos, edge_index)[:, None, :]  # (M, 1, 1)
        ones = torch.zeros(pos.shape[0], 1, 3, dtype=pos.dtype, device=pos.device)
        ones[..., 2] = 1.0  # one dummy orientation: the spherical step is a scaling
        f = self.lift(scalars)[:, None, :]  # (N, 1, C)
        for layer in self.layers:
            f = layer(f, attr, edge_index, ones)
        return _pair_readout(self.to_pair, f[:, 0], pos, edge_index)


def _pair_readout(mlp: nn.Module, h: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """``sum_j (x_j - x_i) mlp([h_i, h_j, |x_j - x_i|])``: (N, 3), equivariant."""
    j, i = edge_index
    d = pos[j] - pos[i]  # (M, 3)
    w = mlp(torch.cat([h[i], h[j], d.norm(dim=-1, keepdim=True)], dim=-1))  # (M, 1)
    ptr = _receiver_ptr(edge_index, pos.shape[0])
    return segment_sum(w * d, ptr, backend="reference")


def _check_inputs(pos: torch.Tensor, vel: torch.Tensor, scalars: torch.Tensor) -> None:
    check_tensor("vel", vel, dims=2, dtype="float", shape="(N, 3)")
    check_tensor("scalars", scalars, dims=2, dtype="float", shape="(N, S)")
    if vel.shape != pos.shape or scalars.shape[0] != pos.shape[0]:
        raise ValueError(f"pos, vel and scalars must describe the same N points, got {tuple(pos.shape)}, "
                         f"{tuple(vel.shape)} and {tuple(scalars.shape)}")
    check_finite_tensor("pos", pos)
    check_finite_tensor("vel", vel)


class SE3GridLayer(nn.Module):
    """An SE(3)-indexed convolution on a grid of G rotations, for timing against the separable
    layer: every pair of points and every pair of grid rotations gets its own kernel value,
    ``f'(i, g) = sum_j sum_h k(R_g^T (x_j - x_i), R_g^T R_h) * f(j, h) / G``.
    """

    def __init__(self, channels: int, hidden: int, rotations: torch.Tensor) -> None:
        super().__init__()
        check_tensor("rotations", rotations, dims=3, dtype="float", shape="(G, 3, 3)")
        self.register_buffer("rotations", rotations.clone())
        self.kernel = _mlp(12, check_int("hidden", hidden, 1), check_int("channels", channels, 1))

    def forward(self, f: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """f (N, G, C), pos (N, 3). Returns (N, G, C)."""
        n, g, c = f.shape
        j, i = edge_index
        rot = self.rotations.to(pos.dtype)
        local = torch.einsum("gab,ma->mgb", rot, pos[j] - pos[i])  # (M, G, 3): R_g^T d
        rel = torch.einsum("gab,hac->ghbc", rot, rot).reshape(g, g, 9)  # (G, G, 9): R_g^T R_h
        attr = torch.cat([local[:, :, None, :].expand(-1, -1, g, -1),
                          rel[None].expand(local.shape[0], -1, -1, -1)], dim=-1)  # (M, G, G, 12)
        messages = (self.kernel(attr) * f[j][:, None, :, :]).mean(dim=2)  # (M, G, C)
        ptr = _receiver_ptr(edge_index, n)
        return segment_sum(messages.reshape(-1, g * c), ptr, backend="reference").reshape(n, g, c)

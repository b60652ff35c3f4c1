"""Position-orientation invariants, grids, the separable layer and the models' equivariance."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from labkit.spatial.nbody import charged_systems
from labkit.spatial.ponita import (
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
from labkit.spatial.train import nbody_batch, nbody_mse, train_nbody

F64 = torch.float64


def test_invariants_by_hand() -> None:
    # receiver i at the origin facing +z, sender j at (3, 4, 2) facing +x
    pos = torch.tensor([[0.0, 0, 0], [3.0, 4, 2]], dtype=F64)
    ori = torch.tensor([[0.0, 0, 1], [1.0, 0, 0]], dtype=F64)
    edge = torch.tensor([[1], [0]])  # j = 1 sends to i = 0
    a = pair_invariants(pos, ori, edge)
    # along o_i: 2; across: |(3, 4, 0)| = 5; o_i . o_j = 0
    torch.testing.assert_close(a, torch.tensor([[2.0, 5.0, 0.0]], dtype=F64))
    assert float(pair_distance(pos, edge)) == pytest.approx(math.sqrt(29))


def test_invariants_unchanged_under_scipy_rotations_and_translations() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(6, 3, generator=gen, dtype=F64)
    ori = torch.nn.functional.normalize(torch.randn(6, 3, generator=gen, dtype=F64), dim=-1)
    edge = fully_connected(6)
    r = torch.from_numpy(Rotation.random(3, random_state=1).as_matrix())
    for rot in r:
        moved = pos @ rot.T + torch.tensor([1.0, -2.0, 0.5], dtype=F64)
        torch.testing.assert_close(pair_invariants(moved, ori @ rot.T, edge), pair_invariants(pos, ori, edge),
                                   rtol=0, atol=1e-12)
    # the invariants see direction, the distance alone does not: a reflection across o_i keeps
    # the distance but flips the first invariant
    flipped = pos.clone()
    flipped[:, 2] = -flipped[:, 2]
    ori_z = torch.tensor([0.0, 0, 1], dtype=F64).expand(6, 3)
    torch.testing.assert_close(pair_distance(flipped, edge), pair_distance(pos, edge))
    assert not torch.allclose(pair_invariants(flipped, ori_z, edge)[:, 0], pair_invariants(pos, ori_z, edge)[:, 0])


def test_invariants_with_several_orientations_per_point() -> None:
    pos = torch.randn(4, 3, dtype=F64)
    grid = sphere_grid(5)
    ori = grid.expand(4, -1, -1)
    a = pair_invariants(pos, ori, fully_connected(4))
    assert a.shape == (12, 5, 3)
    torch.testing.assert_close(a[..., 2], torch.ones(12, 5, dtype=F64))  # same grid point: o . o = 1
    torch.testing.assert_close(a[..., 0] ** 2 + a[..., 1] ** 2,
                               pair_distance(pos, fully_connected(4)).expand(-1, 5) ** 2)


def test_bad_pairs() -> None:
    pos = torch.zeros(3, 3, dtype=F64)
    edge = fully_connected(3)
    with pytest.raises(ValueError, match="unit vectors"):
        pair_invariants(pos, torch.ones(3, 3, dtype=F64), edge)
    with pytest.raises(ValueError, match="ori must have shape"):
        pair_invariants(pos, torch.eye(3, dtype=F64)[:2], edge)
    with pytest.raises(ValueError, match="non-finite"):
        pair_distance(torch.full((3, 3), float("inf"), dtype=F64), edge)
    with pytest.raises(ValueError, match="pos must have shape"):
        pair_distance(torch.zeros(3, 2, dtype=F64), edge)


def test_sphere_and_so3_grids() -> None:
    g = sphere_grid(50)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(50, dtype=F64))
    assert float(g.mean(dim=0).norm()) < 0.05  # spread evenly: the mean is near the centre
    with pytest.raises(ValueError, match="n must be"):
        sphere_grid(1)
    rots = so3_grid(6, 4)
    assert rots.shape == (24, 3, 3)
    eye = torch.eye(3, dtype=F64).expand(24, 3, 3)
    torch.testing.assert_close(rots.transpose(1, 2) @ rots, eye)
    torch.testing.assert_close(torch.linalg.det(rots), torch.ones(24, dtype=F64))


def test_fully_connected() -> None:
    e = fully_connected(3, n_graphs=2)
    assert e.shape == (2, 12)
    assert bool((e[0] != e[1]).all()) and bool((e[1].diff() >= 0).all())
    assert bool(((e[0] // 3) == (e[1] // 3)).all())  # no edge across graphs


def _rotate_check(model: torch.nn.Module, seed: int = 0) -> float:
    s = charged_systems(3, horizon=0.0, seed=seed)
    pos, vel, sc, e, _ = nbody_batch(s, torch.arange(3))
    rot = torch.from_numpy(Rotation.random(random_state=seed).as_matrix())
    shift = torch.tensor([0.7, -1.1, 2.0], dtype=F64)
    with torch.no_grad():
        out = model(pos, vel, sc, e)
        moved = model(pos @ rot.T + shift, vel @ rot.T, sc, e)
    return float((moved - out @ rot.T).abs().max())


def test_models_are_equivariant_in_float64() -> None:
    torch.manual_seed(0)
    assert _rotate_check(PositionNet().double()) < 1e-9
    assert _rotate_check(OrientationNet().double()) < 1e-9
    grid_model = OrientationNet(grid=sphere_grid(8)).double()
    coarse = _rotate_check(grid_model)
    assert coarse > 1e-6  # a fixed grid does not rotate with the input
    fine = _rotate_check(grid_model.with_grid(sphere_grid(256)))
    assert fine < coarse


def test_separable_layer_with_one_orientation_is_a_message_passing_sum() -> None:
    """K = 1: the spherical step multiplies by a learned constant; messages add per receiver."""
    torch.manual_seed(0)
    layer = SeparableLayer(2, 4, n_invariants=1).double()
    for mlp in (layer.spatial, layer.update):
        torch.nn.init.zeros_(mlp[2].weight)
    with torch.no_grad():
        layer.spatial[2].bias.fill_(1.0)  # kernel = 1 on every edge
        layer.update[2].bias.zero_()
    f = torch.randn(3, 1, 2, dtype=F64)
    e = fully_connected(3)
    out = layer(f, torch.zeros(6, 1, 1, dtype=F64), e, torch.tensor([[[0.0, 0, 1]]], dtype=F64).expand(3, 1, 3))
    torch.testing.assert_close(out, f)  # update is zero: the residual alone
    with pytest.raises(ValueError, match="sorted by receiver"):
        layer(f, torch.zeros(6, 1, 1, dtype=F64), e.flip(1), torch.zeros(3, 1, 3, dtype=F64))


def test_se3_layer_shapes() -> None:
    layer = SE3GridLayer(3, 8, so3_grid(4, 2, dtype=torch.float32))
    out = layer(torch.randn(4, 8, 3), torch.randn(4, 3), fully_connected(4))
    assert out.shape == (4, 8, 3)


def test_model_bad_inputs() -> None:
    model = OrientationNet()
    pos = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="same N points"):
        model(pos, torch.zeros(2, 3), torch.zeros(3, 2), fully_connected(3))
    with pytest.raises(ValueError, match="grid must be"):
        OrientationNet(grid=sphere_grid(5)[:1].float())
    with pytest.raises(ValueError, match="no grid"):
        model.with_grid(sphere_grid(4).float())


def test_training_beats_no_motion() -> None:
    torch.manual_seed(0)
    data = charged_systems(64, horizon=0.3, seed=0, dtype=torch.float32)
    model = OrientationNet(8, 16, n_layers=1)
    train_nbody(model, data, steps=60, batch_size=16, lr=1e-2)
    assert nbody_mse(model, data) < nbody_mse(None, data)

"""Aggregation rules: hand-worked values, robustness invariants, bad inputs."""

from __future__ import annotations

import pytest
import torch

from labkit.federated.aggregators import (
    aggregate,
    bristle_aggregate,
    coordinate_median,
    flag_aggregate,
    flag_subspace,
    krum,
    mean_rule,
    trimmed_mean,
)

COLUMN = torch.tensor([[1.0], [2.0], [3.0], [100.0]])


def test_mean_median_trimmed_by_hand() -> None:
    assert mean_rule(COLUMN).item() == pytest.approx(26.5)
    assert coordinate_median(COLUMN, f=1).item() == pytest.approx(2.5)
    assert trimmed_mean(COLUMN, f=1).item() == pytest.approx(2.5)
    five = torch.tensor([[1.0], [2.0], [3.0], [4.0], [-50.0]])
    assert trimmed_mean(five, f=1).item() == pytest.approx(2.0)  # 1, 2, 3


def test_krum_picks_the_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    honest = 1.0 + 0.01 * torch.randn(7, 5, generator=g)
    liars = torch.full((2, 5), 40.0)
    out = krum(torch.cat([honest, liars]), f=2)
    assert any(torch.equal(out, h) for h in honest)


def test_flag_uniform_weights_span_top_singular_subspace() -> None:
    g = torch.Generator().manual_seed(1)
    unit = torch.nn.functional.normalize(torch.randn(6, 40, generator=g), dim=1)
    for m in (1, 2, 3):
        y = flag_subspace(unit, torch.ones(6), m=m)
        u, _, _ = torch.linalg.svd(unit.T, full_matrices=False)
        top = u[:, :m]
        assert torch.allclose(y.T @ y, torch.eye(m), atol=1e-5)
        assert torch.allclose(y @ y.T, top @ top.T, atol=1e-5)


def test_flag_resists_sign_flip_that_moves_the_mean() -> None:
    g = torch.Generator().manual_seed(2)
    honest = torch.tensor([1.0, 2.0, 0.5, -1.0]) + 0.05 * torch.randn(7, 4, generator=g)
    updates = torch.cat([honest, -10.0 * honest[:3]])
    target = honest.mean(0)
    assert mean_rule(updates) @ target < 0  # the mean is turned around
    out = flag_aggregate(updates)
    cos = out @ target / (out.norm() * target.norm())
    assert cos > 0.99
    # put on the scale of a typical update
    assert 0.1 * target.norm() < out.norm() < 3 * target.norm()


def test_flag_reweighting_downweights_an_orthogonal_liar() -> None:
    honest = torch.tensor([[1.0, 0.0, 0.0]] * 4 + [[0.9, 0.1, 0.0]])
    liar = torch.tensor([[0.0, 0.0, 50.0]] * 2)
    out = flag_aggregate(torch.cat([honest, liar]), m=1, iters=3)
    assert out[2].abs() < 1e-3 * out[0].abs()


def test_bristle_drops_an_update_that_hurts_and_weights_by_gain() -> None:
    updates = torch.tensor([[1.0, 1.0, 1.0],    # own
                            [1.0, 3.0, 1.0],    # honest, lowers the loss more
                            [1.0, 2.0, -9.0]])  # liar, raises class 1's loss
    rows = torch.tensor([[1], [2]])  # class 0 -> entry 1, class 1 -> entry 2
    before = torch.tensor([1.0, 1.0])
    after = torch.tensor([[0.9, 0.9], [0.7, 0.8], [0.8, 3.0]])
    out = bristle_aggregate(updates, own=0, class_rows=rows, loss_before=before,
                            loss_after=after, familiar=torch.tensor([True, True]),
                            keep=3)
    # class 0: gains 0.1, 0.3, 0.2 -> (1*0.1 + 3*0.3 + 2*0.2) / 0.6
    assert out[1].item() == pytest.approx(1.4 / 0.6)
    # class 1: the liar's gain is negative -> gains 0.1, 0.2 only
    assert out[2].item() == pytest.approx((0.1 + 0.2) / 0.3)
    # shared entry 0: mean of the three updates (all useful for some class)
    assert out[0].item() == pytest.approx(1.0)


def test_bristle_prioritiser_keeps_only_the_nearest() -> None:
    updates = torch.tensor([[0.0, 1.0], [0.0, 1.1], [0.0, 9.0]])
    rows = torch.tensor([[1]])
    out = bristle_aggregate(updates, own=0, class_rows=rows,
                            loss_before=torch.tensor([1.0]),
                            loss_after=torch.tensor([[0.9], [0.9], [0.1]]),
                            familiar=torch.tensor([True]), keep=2)
    assert out[1].item() == pytest.approx(1.05)  # the far one is never scored


def test_bad_inputs() -> None:
    ten = torch.randn(10, 4)
    with pytest.raises(ValueError, match="Krum"):
        krum(ten, f=4)  # 10 <= 2*4 + 2
    krum(ten, f=3)
    with pytest.raises(ValueError, match="f must be < P/2"):
        coordinate_median(ten, f=5)
    with pytest.raises(ValueError, match="f must be < P/2"):
        trimmed_mean(ten, f=5)
    with pytest.raises(ValueError, match="at least 2"):
        mean_rule(torch.randn(1, 4))
    with pytest.raises(TypeError, match="updates"):
        mean_rule(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="m must be"):
        flag_aggregate(ten, m=11)
    with pytest.raises(ValueError, match="lam"):
        flag_aggregate(ten, lam=-1.0)
    with pytest.raises(ValueError, match="rule"):
        aggregate("Bristle", ten, f=1)


def test_dispatcher_matches_functions() -> None:
    ten = torch.randn(10, 4)
    assert torch.equal(aggregate("median", ten, f=2), coordinate_median(ten))
    assert torch.equal(aggregate("Krum", ten, f=2), krum(ten, f=2))


def test_bristle_unfamiliar_class_uses_distance_only() -> None:
    updates = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 30.0]])
    out = bristle_aggregate(updates, own=0, class_rows=torch.tensor([[1]]),
                            loss_before=torch.tensor([1.0]),
                            loss_after=torch.tensor([[2.0], [2.0], [0.0]]),
                            familiar=torch.tensor([False]), keep=2)
    assert out[1].item() == pytest.approx(1.5)  # the two nearest, uniform
    assert out[0].item() == pytest.approx(0.0)


def test_flag_regulariser_keeps_an_orthonormal_basis() -> None:
    g = torch.Generator().manual_seed(3)
    unit = torch.nn.functional.normalize(torch.randn(5, 12, generator=g), dim=1)
    plain = flag_subspace(unit, torch.ones(5), m=2)
    reg = flag_subspace(unit, torch.ones(5), m=2, lam=1.0)
    assert torch.allclose(reg.T @ reg, torch.eye(2), atol=1e-5)
    assert not torch.allclose(reg @ reg.T, plain @ plain.T, atol=1e-3)

"""Dense matching with anchors: textures, warps, descriptors, mutual NN, anchors, context, PCK."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial import cKDTree

from labkit.spatial.matching import (
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


def test_texture_repeats_outside_the_landmarks() -> None:
    image, unique = repeated_texture(40, 8, n_landmarks=2, seed=0)
    shifted = image[8:, :] == image[:-8, :]
    plain = ~unique[8:, :] & ~unique[:-8, :]
    assert bool(shifted[plain].all())  # one period down, the same pixel
    assert 0 < int(unique.sum()) < 40 * 40


def test_warp_carries_pixels_where_the_affine_says() -> None:
    pair = image_pair(48, 8, noise=0.0, seed=3)
    q, truth = queries_inside(pair, stride=1)
    # nearest-pixel lookup of b at the true position reproduces a's values, up to gain/bias
    xb = truth.round().long()
    a_vals = pair.a.flatten()[q]
    b_vals = pair.b[xb[:, 1], xb[:, 0]]
    corr = torch.corrcoef(torch.stack([a_vals, b_vals]))[0, 1]
    assert float(corr) > 0.8


def test_mutual_nearest_equals_ckdtree() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(150, 8, generator=gen, dtype=torch.float64), dim=1)
    pairs = {tuple(p) for p in mutual_nearest(a, b).T.tolist()}
    _, ab = cKDTree(b.numpy()).query(a.numpy())
    _, ba = cKDTree(a.numpy()).query(b.numpy())
    expected = {(i, int(j)) for i, j in enumerate(ab) if ba[j] == i}
    assert pairs == expected and len(pairs) > 0


def test_anchor_context_by_hand() -> None:
    # one pixel at the origin, anchors at distance 0 and 2, sigma 2: weights 1 and exp(-1/2)
    ctx = anchor_context(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [2.0, 0.0]]), sigma=2.0)
    w = torch.tensor([1.0, math.exp(-0.5)])
    torch.testing.assert_close(ctx[0], w / w.norm())
    # translation of pixels and anchors together leaves the context unchanged
    xy, anchors = torch.rand(5, 2) * 10, torch.rand(3, 2) * 10
    torch.testing.assert_close(anchor_context(xy + 3, anchors + 3, sigma=2.0), anchor_context(xy, anchors, sigma=2.0))


def test_cycle_filter_keeps_a_subset_and_anchors_help() -> None:
    pair = image_pair(48, 8, seed=1)
    da, db = describe(pair.a), describe(pair.b)
    with_cycle = find_anchors(da, db, width=48, stride=2, ratio=0.8, cycle=2.0, max_anchors=10_000)
    without = find_anchors(da, db, width=48, stride=2, ratio=0.8, cycle=None, max_anchors=10_000)
    kept = {tuple(p) for p in torch.cat([with_cycle.xy_a, with_cycle.xy_b], 1).tolist()}
    allp = {tuple(p) for p in torch.cat([without.xy_a, without.xy_b], 1).tolist()}
    assert kept <= allp and len(with_cycle) > 0
    q, truth = queries_inside(pair, stride=2)
    plain = pck(match(da, db, q, width=48), truth, 2.0)
    anchored = pck(match(da, db, q, width=48, anchors=with_cycle), truth, 2.0)
    assert anchored > plain


def test_pck_by_hand_and_errors() -> None:
    pred = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    truth = torch.zeros(3, 2)
    assert pck(pred, truth, 5.0) == 1.0
    assert pck(pred, truth, 2.0) == pytest.approx(2 / 3)  # |(3, 4)| = 5 > 2
    with pytest.raises(ValueError, match="r must be"):
        pck(pred, truth, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        pck(pred, truth[:2], 1.0)
    with pytest.raises(ValueError, match="period"):
        repeated_texture(32, 1)
    with pytest.raises(ValueError, match="image"):
        describe(torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="image"):
        describe(torch.zeros(3, 4, dtype=torch.int64))


def test_coarse_to_fine_scores_fewer_pairs_and_still_matches() -> None:
    pair = image_pair(48, 8, seed=2)
    da, db = describe(pair.a), describe(pair.b)
    q, truth = queries_inside(pair, stride=2)
    anchors = find_anchors(da, db, width=48, stride=2, ratio=0.8)
    result = match_coarse_to_fine(pair.a, pair.b, q, anchors=anchors, factor=2, window=1)
    # coarse: Q x (48 / 2)^2 scores; fine: Q x (2 * 1 * 2 + 1)^2 = 25 per query
    assert result.coarse_scores == len(q) * 24 * 24 and result.fine_scores == len(q) * 25
    assert result.coarse_scores + result.fine_scores < len(q) * 48 * 48
    assert pck(result.xy, truth, 2.0) > pck(match(da, db, q, width=48), truth, 2.0)
    with pytest.raises(ValueError, match="divisible by factor"):
        match_coarse_to_fine(pair.a, pair.b, q, anchors=None, factor=5)

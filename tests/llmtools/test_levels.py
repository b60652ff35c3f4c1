"""Levels as programs: block drops, the physics verdict, the picture and the diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.llmtools import levels as lv

PYRAMID = [("b31", 5), ("b31", 8), ("b31", 11), ("b31", 6), ("b31", 10), ("b31", 8)]
TOWER = [("b11", 9)] + [("b13", 9)] * 4


def test_drops_land_on_the_highest_block_below_them() -> None:
    boxes = lv.program([("b13", 4), ("b31", 3), ("b11", 6), ("b11", 3)]).boxes()
    # x_left, y_bottom, width, height
    assert boxes.tolist() == [[4, 0, 1, 3], [3, 3, 3, 1], [6, 0, 1, 1], [3, 4, 1, 1]]


def test_a_pyramid_stands_and_a_tall_narrow_tower_falls() -> None:
    pyramid = lv.settle(lv.program(PYRAMID), jolt=0.7)
    tower = lv.settle(lv.program(TOWER), jolt=0.7)
    assert pyramid.stable(0.25) and pyramid.stability(0.25) == 1.0
    assert not tower.stable(0.25)
    assert tower.moved[-1] > tower.moved[0]  # the top travels furthest


def test_an_unsupported_overhang_falls_without_a_jolt() -> None:
    beam_on_its_end = lv.settle(lv.program([("b13", 5), ("b31", 5)]), jolt=0.0)
    assert beam_on_its_end.moved[1] > 1.0
    centred = lv.settle(lv.program([("b13", 5), ("b31", 4)]), jolt=0.0)
    assert centred.stable(0.1)


def test_render_is_a_digit_like_picture() -> None:
    one = lv.settle(lv.program([("b13", 2), ("b13", 3)] * 3))
    img = lv.render(one)
    assert img.shape == (1, 8, 8) and img.min() >= -1 and img.max() <= 1
    # a 2-wide, 9-tall pillar: the middle columns are ink, the outer ones background
    assert img[0, :, 3:5].mean() > 0.5 and img[0, :, :2].max() == -1.0
    empty = lv.render(lv.settle(lv.Level()))
    assert torch.equal(empty, -torch.ones(1, 8, 8))


def test_diversity_is_the_competitions_pair_sum_over_the_count() -> None:
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs (0,1), (1,2) are orthogonal (distance 1), (0,2) identical (0): 2 / 3 levels
    assert lv.diversity(p) == pytest.approx(2 / 3)
    assert lv.diversity(np.tile([[0.2, 0.8]], (5, 1))) == pytest.approx(0.0, abs=1e-12)
    assert lv.diversity(p[:1]) == 0.0


def test_generators_are_seeded_and_the_repetitive_one_repeats() -> None:
    a = lv.template_level(8, np.random.default_rng(3)).calls
    b = lv.template_level(8, np.random.default_rng(3)).calls
    assert a == b
    assert lv.repetitive_level(0).calls == lv.repetitive_level(0).calls
    rnd = lv.random_level(np.random.default_rng(0), n_blocks=(4, 4))
    assert len(rnd.calls) == 4


def test_score_generators_shapes() -> None:
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    sc = lv.score_generators(clf, n_levels=2, steps=5)
    table = sc.table(list(lv.TEMPLATES))
    assert set(table) == set(lv.GENERATORS)
    assert table["repetitive"]["diversity"] == pytest.approx(0.0, abs=1e-9)
    for key, probs in sc.probs.items():
        assert probs.shape == (2, 10) and sc.images[key].shape == (2, 1, 8, 8)


def test_bad_arguments() -> None:
    level = lv.Level()
    with pytest.raises(ValueError, match="kind"):
        level.drop_block("b22", 3)
    with pytest.raises(ValueError, match="x=18"):
        level.drop_block("b31", 18)
    with pytest.raises(ValueError, match="x"):
        level.drop_block("b11", -1)
    with pytest.raises(TypeError, match="level"):
        lv.settle([("b11", 0)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        lv.settle(lv.program(PYRAMID), steps=2).stability(0.0)
    with pytest.raises(ValueError, match="digit"):
        lv.repetitive_level(7)
    with pytest.raises(ValueError, match="probs"):
        lv.diversity(np.zeros(3))


def test_the_picture_ignores_where_the_level_stands() -> None:
    calls = lv.TEMPLATES[6][0]
    at = [lv.render(lv.settle(lv.program([(k, x + x0) for k, x in calls])))
          for x0 in (0, 9)]
    # the engine's rounding differs with position: a few edge samples flip, no more
    assert (at[0] - at[1]).abs().mean() < 0.05
    eight = lv.render(lv.settle(lv.program(lv.TEMPLATES[8][0])))
    assert (at[0] - eight).abs().mean() > 0.2

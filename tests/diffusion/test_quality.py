"""Sample-quality measures: hand-checked distances, stub classifiers, and the trained judge."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.diffusion import (class_diversity, classifier_confidence, digits_split, feature_frechet_distance,
                              pixel_deviation, pretrained_classifier, sample_quality)


class FixedLogits(nn.Module):
    """A 'classifier' that returns the given logits, whatever the images."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_frechet_distance_by_hand_in_one_dimension():
    a = torch.tensor([[0.0], [2.0]])  # mean 1, variance 2 (unbiased)
    b = torch.tensor([[1.0], [5.0]])  # mean 3, variance 8
    # (1 - 3)^2 + 2 + 8 - 2 sqrt(2 * 8) = 4 + 10 - 8
    assert feature_frechet_distance(a, b) == pytest.approx(6.0)


def test_frechet_distance_invariants_and_scipy_parity():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g)
    b = torch.randn(150, 6, generator=g) @ torch.randn(6, 6, generator=g) + 0.5
    assert feature_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.arange(6.0)
    assert feature_frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()))
    linalg = pytest.importorskip("scipy.linalg")
    import numpy as np

    ca, cb = np.cov(a.double().numpy().T), np.cov(b.double().numpy().T)
    mu = (a.double().mean(0) - b.double().mean(0)).numpy()
    expected = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(linalg.sqrtm(ca @ cb)).real
    assert feature_frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert feature_frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_bad_input():
    with pytest.raises(ValueError, match="widths"):
        feature_frechet_distance(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="B >= 2"):
        feature_frechet_distance(torch.zeros(1, 2), torch.zeros(3, 2))


def test_pixel_deviation_by_hand():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([0.5, -0.5, 1.0, 0.0]).view(1, 1, 2, 2).expand(2, 1, 2, 2)
    assert pixel_deviation(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        pixel_deviation(a, b[:1])


def test_confidence_and_diversity_with_stub_classifiers():
    images = torch.zeros(10, 1, 8, 8)
    one_class = FixedLogits(torch.zeros(10, 10).index_fill_(1, torch.tensor([3]), 100.0))
    assert classifier_confidence(images, classifier=one_class) == pytest.approx(1.0)
    assert class_diversity(images, classifier=one_class) == pytest.approx(0.0)
    every_class = FixedLogits(torch.eye(10) * 100.0)
    assert class_diversity(images, classifier=every_class) == pytest.approx(math.log(10))
    unsure = FixedLogits(torch.zeros(10, 10))
    assert classifier_confidence(images, classifier=unsure) == pytest.approx(0.1)


def test_trained_judge_is_accurate_cached_and_scores_real_digits_well(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    first = pretrained_classifier(seed=0, epochs=10, verbose=False)
    second = pretrained_classifier(seed=0, epochs=10, verbose=False)
    assert first.test_accuracy >= 0.95
    assert first.test_accuracy == second.test_accuracy
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    x, _, x_test, _ = digits_split()
    q = sample_quality(x[:200], x_test, classifier=first.model)
    assert q.confidence > 0.9 and q.diversity > 2.2  # real digits: crisp and all ten present
    noise = sample_quality(torch.rand(200, 1, 8, 8) * 2 - 1, x_test, classifier=first.model)
    assert noise.frechet > 5 * q.frechet
    with pytest.raises(ValueError, match="images must be"):
        first.model(torch.zeros(2, 8, 8))

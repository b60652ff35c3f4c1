"""Dirichlet and i.i.d. splits: coverage, class skew, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.federated.partition import class_counts, dirichlet_partition

LABELS = torch.arange(600) % 10


@pytest.mark.parametrize("alpha", [math.inf, 100.0, 0.5, 0.1])
def test_every_sample_goes_to_exactly_one_peer(alpha: float) -> None:
    parts = dirichlet_partition(LABELS, 7, alpha=alpha, seed=3)
    assert len(parts) == 7
    joined = torch.cat(parts).sort().values
    assert torch.equal(joined, torch.arange(600))
    assert min(len(p) for p in parts) >= 2


def test_iid_split_is_balanced_by_hand() -> None:
    parts = dirichlet_partition(torch.zeros(10, dtype=torch.long), 3, alpha=math.inf)
    assert sorted(len(p) for p in parts) == [3, 3, 4]


def test_small_alpha_concentrates_classes() -> None:
    def classes_held(alpha: float) -> float:
        counts = class_counts(LABELS, dirichlet_partition(LABELS, 10, alpha=alpha))
        share = counts / counts.sum(1, keepdim=True)
        return (share > 0.05).sum(1).float().mean().item()  # classes over 5 %

    assert classes_held(0.1) < 4.0 < 9.0 < classes_held(100.0)


def test_class_counts_by_hand() -> None:
    labels = torch.tensor([0, 1, 1, 2])
    counts = class_counts(labels, [torch.tensor([0, 1]), torch.tensor([2, 3])],
                          n_classes=3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_same_seed_same_split() -> None:
    a = dirichlet_partition(LABELS, 5, alpha=0.3, seed=1)
    b = dirichlet_partition(LABELS, 5, alpha=0.3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(LABELS, 5, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(LABELS, 5, alpha=-1.0)
    with pytest.raises(TypeError, match="alpha"):
        dirichlet_partition(LABELS, 5, alpha="big")
    with pytest.raises(ValueError, match="n_peers"):
        dirichlet_partition(LABELS, 1, alpha=1.0)
    with pytest.raises(ValueError, match="min_size"):
        dirichlet_partition(LABELS[:10], 5, alpha=1.0, min_size=3)
    with pytest.raises(TypeError, match="labels"):
        dirichlet_partition(LABELS.float(), 5, alpha=1.0)
    with pytest.raises(ValueError, match="tries"):
        dirichlet_partition(LABELS[:40], 10, alpha=0.01, min_size=4, max_tries=2)

"""Tests for labkit.data.synthetic: seeded blobs, planted-partition graphs and digits."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from labkit.data import digits, gaussian_blobs, make_generator, planted_partition_graph
from labkit.data.synthetic import _unrank_lower_triangle


def _assert_valid_undirected(edge_index: torch.Tensor, n_nodes: int) -> None:
    assert edge_index.dtype == torch.int64 and edge_index.dim() == 2 and edge_index.shape[0] == 2
    row, col = edge_index
    assert bool((row != col).all()), "self loop"
    if edge_index.numel():
        assert int(edge_index.min()) >= 0 and int(edge_index.max()) < n_nodes
    key = row * n_nodes + col
    assert bool((key[1:] > key[:-1]).all()), "not sorted by (row, col) or duplicated"
    reverse = torch.sort(col * n_nodes + row).values
    assert torch.equal(reverse, key), "not symmetric"


# --- make_generator --------------------------------------------------------------------------


def test_make_generator_same_seed_same_stream() -> None:
    a = torch.rand(5, generator=make_generator(7))
    b = torch.rand(5, generator=make_generator(7))
    c = torch.rand(5, generator=make_generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert make_generator(np.int64(7)).initial_seed() == 7


@pytest.mark.parametrize("seed", ["1", 1.0, True, None])
def test_make_generator_rejects_non_int(seed: object) -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        make_generator(seed)  # type: ignore[arg-type]


def test_make_generator_rejects_negative() -> None:
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63 - 1\]"):
        make_generator(-1)


# --- gaussian_blobs ---------------------------------------------------------------------------


def test_blobs_hand_example_without_spread() -> None:
    x, y = gaussian_blobs(5, n_classes=2, dim=3, spread=0.0, seed=0)
    assert x.shape == (5, 3) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=2).tolist() == [3, 2]  # balanced: 5 = 3 + 2
    # With no spread every sample sits on its class centre.
    for c in range(2):
        members = x[y == c]
        assert torch.equal(members, members[:1].expand_as(members))
    assert not torch.equal(x[y == 0][0], x[y == 1][0])


def test_blobs_deterministic_and_seeded() -> None:
    x1, y1 = gaussian_blobs(100, n_classes=4, dim=2, seed=3)
    x2, y2 = gaussian_blobs(100, n_classes=4, dim=2, seed=3)
    x3, _ = gaussian_blobs(100, n_classes=4, dim=2, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


def test_blobs_cluster_around_their_class_means() -> None:
    x, y = gaussian_blobs(2000, n_classes=3, dim=8, spread=0.5, seed=0)
    means = torch.stack([x[y == c].mean(0) for c in range(3)])  # (C, D)
    nearest = torch.cdist(x, means).argmin(1)
    assert (nearest == y).float().mean() > 0.99
    within = (x - means[y]).std()
    assert abs(float(within) - 0.5) < 0.05


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((2,), {"n_classes": 3, "dim": 2}, ValueError, r"n must be at least n_classes \(3\)"),
        ((0,), {"n_classes": 1, "dim": 2}, ValueError, "n must be >= 1"),
        ((10,), {"n_classes": 2, "dim": 0}, ValueError, "dim must be >= 1"),
        ((10,), {"n_classes": 2.0, "dim": 2}, TypeError, "n_classes must be an int, got float"),
        ((10,), {"n_classes": 2, "dim": 2, "spread": -1.0}, ValueError, "spread must be a finite float >= 0"),
        ((10,), {"n_classes": 2, "dim": 2, "seed": "a"}, TypeError, "seed must be an int"),
    ],
)
def test_blobs_reject_bad_arguments(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gaussian_blobs(*args, **kwargs)


# --- planted_partition_graph ------------------------------------------------------------------


def test_planted_graph_hand_example() -> None:
    edge_index, labels = planted_partition_graph([3, 2], p_in=1.0, p_out=0.0)
    # Two cliques: {0, 1, 2} and {3, 4}, each edge in both directions, sorted by (row, col).
    assert edge_index.tolist() == [[0, 0, 1, 1, 2, 2, 3, 4], [1, 2, 0, 2, 0, 1, 4, 3]]
    assert labels.tolist() == [0, 0, 0, 1, 1]
    assert labels.dtype == torch.int64


def test_planted_graph_extremes_match_networkx() -> None:
    sizes = [7, 5, 1, 4]
    full, _ = planted_partition_graph(sizes, p_in=1.0, p_out=1.0)
    _assert_valid_undirected(full, 17)
    graph = nx.Graph(full.t().tolist())
    assert nx.is_isomorphic(graph, nx.complete_graph(17))
    cliques, labels = planted_partition_graph(sizes, p_in=1.0, p_out=0.0)
    components = sorted(len(c) for c in nx.connected_components(nx.Graph(cliques.t().tolist())))
    assert components == [4, 5, 7]  # the singleton community has no edge at all
    empty, _ = planted_partition_graph(sizes, p_in=0.0, p_out=0.0)
    assert empty.shape == (2, 0) and empty.dtype == torch.int64
    bipartite, _ = planted_partition_graph([3, 4], p_in=0.0, p_out=1.0)
    assert nx.is_isomorphic(nx.Graph(bipartite.t().tolist()), nx.complete_bipartite_graph(3, 4))


def test_planted_graph_densities_match_p_in_and_p_out() -> None:
    sizes, p_in, p_out = [1000, 1500, 500], 0.02, 0.002
    edge_index, labels = planted_partition_graph(sizes, p_in=p_in, p_out=p_out, seed=0)
    n = sum(sizes)
    _assert_valid_undirected(edge_index, n)
    same = labels[edge_index[0]] == labels[edge_index[1]]
    pairs_in = sum(s * (s - 1) // 2 for s in sizes)
    pairs_out = n * (n - 1) // 2 - pairs_in
    density_in = int(same.sum()) / 2 / pairs_in
    density_out = int((~same).sum()) / 2 / pairs_out
    assert density_in == pytest.approx(p_in, rel=0.05)
    assert density_out == pytest.approx(p_out, rel=0.05)
    # Every node's label is its community, in order.
    assert torch.bincount(labels).tolist() == sizes


def test_planted_graph_deterministic_and_seeded() -> None:
    a, _ = planted_partition_graph([50, 50], p_in=0.3, p_out=0.05, seed=1)
    b, _ = planted_partition_graph([50, 50], p_in=0.3, p_out=0.05, seed=1)
    c, _ = planted_partition_graph([50, 50], p_in=0.3, p_out=0.05, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unranking_is_exact_for_large_ranks() -> None:
    i = np.array([1, 2, 3, 10**7, 10**8, 3 * 10**8], dtype=np.int64)
    j = np.array([0, 1, 0, 10**7 - 1, 12345, 0], dtype=np.int64)
    rank = i * (i - 1) // 2 + j
    got_i, got_j = _unrank_lower_triangle(rank)
    assert got_i.tolist() == i.tolist() and got_j.tolist() == j.tolist()


@pytest.mark.parametrize(
    ("sizes", "kwargs", "error", "match"),
    [
        ([], {"p_in": 0.5, "p_out": 0.1}, ValueError, "sizes must be a non-empty sequence"),
        ("abc", {"p_in": 0.5, "p_out": 0.1}, ValueError, "sizes must be a non-empty sequence"),
        ([3, 0], {"p_in": 0.5, "p_out": 0.1}, ValueError, r"sizes\[1\] must be >= 1"),
        ([3, 2.5], {"p_in": 0.5, "p_out": 0.1}, TypeError, r"sizes\[1\] must be an int, got float"),
        ([3], {"p_in": 1.5, "p_out": 0.1}, ValueError, r"p_in must be a probability in \[0, 1\]"),
        ([3], {"p_in": 0.5, "p_out": -0.1}, ValueError, r"p_out must be a probability in \[0, 1\]"),
        ([3], {"p_in": 0.5, "p_out": 0.1, "seed": 1.5}, TypeError, "seed must be an int"),
    ],
)
def test_planted_graph_rejects_bad_arguments(sizes: object, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        planted_partition_graph(sizes, **kwargs)  # type: ignore[arg-type]


# --- digits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_seed0() -> tuple[torch.Tensor, torch.Tensor]:
    return digits(seed=0)


def test_digits_shapes_range_and_labels(digits_seed0: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits_seed0
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum() == 1797 and int(counts.min()) >= 170
    # Pixels were 0..16 integers: undo the scaling and they are integers again.
    raw = (images + 1.0) * 8.0
    assert torch.equal(raw, raw.round())


def test_digits_are_sklearns_images_shuffled_by_the_seed(
    digits_seed0: tuple[torch.Tensor, torch.Tensor],
) -> None:
    from sklearn.datasets import load_digits

    images, labels = digits_seed0
    source = load_digits()
    order = torch.randperm(1797, generator=make_generator(0))
    expected = torch.as_tensor(source.images, dtype=torch.float32)[order] / 8.0 - 1.0
    assert torch.equal(images[:, 0], expected)
    assert torch.equal(labels, torch.as_tensor(source.target)[order])
    _, other_labels = digits(seed=1)
    assert not torch.equal(other_labels, labels)
    assert torch.equal(torch.sort(other_labels).values, torch.sort(labels).values)


@pytest.mark.parametrize("size", [16, 28, True])
def test_digits_rejects_unsupported_size(size: object) -> None:
    with pytest.raises(ValueError, match="size must be 8"):
        digits(size=size)  # type: ignore[arg-type]

"""Seeded synthetic data shared by many chapters: blobs, planted-partition graphs, digits.

Every generator here is a pure function of its arguments and ``seed``: the same call gives
the same tensors on every machine, so a notebook's numbers are reproducible and its claims
can be asserted. Nothing is downloaded; ``digits`` reads the 8x8 digits that scikit-learn
ships inside its wheel.

Shapes: N samples or nodes, D features, C classes or communities, M directed edges.
Section: chapter 01, "Message passing is a sparse matrix product"; chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from labkit.validation import check_int

__all__ = ["make_generator", "gaussian_blobs", "planted_partition_graph", "digits"]

_MAX_SEED = 2**63 - 1


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``.

    Args:
        seed: a non-negative int (NumPy integers are accepted too).

    Returns:
        A fresh generator; two calls with the same seed give the same stream.
    """
    return torch.Generator().manual_seed(_check_seed(seed))


def gaussian_blobs(
    n: int, *, n_classes: int, dim: int, spread: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Isotropic Gaussian clusters around random class centres.

    Centres are drawn from N(0, 4^2 I) (so with ``spread=1`` classes overlap little in a
    few dimensions); sample i of class c is ``centre[c] + spread * eps``, eps ~ N(0, I).
    Classes are balanced (sizes differ by at most one) and the samples are shuffled.

    Args:
        n: N, number of samples, at least ``n_classes``.
        n_classes: C, number of clusters, at least 1.
        dim: D, feature dimension, at least 1.
        spread: standard deviation around each centre, >= 0 (0 puts every sample on it).
        seed: seed of the draw.

    Returns:
        ``(x, y)``: features and class labels in [0, C).

    Shapes:
        x: (N, D) float32; y: (N,) int64.
    """
    for name, value, low in (("n", n, 1), ("n_classes", n_classes, 1), ("dim", dim, 1)):
        check_int(name, value, low)
    if n < n_classes:
        raise ValueError(f"n must be at least n_classes ({n_classes}) so every class has a sample, got {n}")
    if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not 0 <= spread < float("inf"):
        raise ValueError(f"spread must be a finite float >= 0, got {spread!r}")
    gen = make_generator(seed)
    centres = 4.0 * torch.randn(n_classes, dim, generator=gen)  # (C, D)
    y = (torch.arange(n) % n_classes)[torch.randperm(n, generator=gen)]  # (N,) balanced, shuffled
    x = centres[y] + float(spread) * torch.randn(n, dim, generator=gen)  # (N, D)
    return x.float(), y.long()


def planted_partition_graph(
    sizes: Sequence[int], *, p_in: float, p_out: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An undirected stochastic block model with one within- and one across-community rate.

    Each unordered pair of distinct nodes is an edge independently, with probability
    ``p_in`` when both lie in the same community and ``p_out`` otherwise. Per block of pairs
    the edge count is drawn from the binomial and the pairs uniformly without replacement,
    which is the same distribution as a coin per pair but costs O(M), not O(N^2), when the
    graph is sparse. Nodes are numbered community by community.

    Args:
        sizes: number of nodes in each community, each at least 1.
        p_in: edge probability inside a community, in [0, 1].
        p_out: edge probability across communities, in [0, 1].
        seed: seed of the draw.

    Returns:
        ``(edge_index, labels)``: every undirected edge stored in both directions, no self
        loops, columns sorted by (row, col); and the community of each node.

    Shapes:
        edge_index: (2, M) int64 with M even; labels: (N,) int64, N = sum(sizes).
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise ValueError(f"sizes must be a non-empty sequence of positive ints, got {sizes!r}")
    for i, size in enumerate(sizes):
        check_int(f"sizes[{i}]", size, 1)
    for name, p in (("p_in", p_in), ("p_out", p_out)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    rng = np.random.default_rng(_check_seed(seed))
    counts = np.asarray([int(s) for s in sizes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_nodes = int(offsets[-1])

    rows, cols = [], []
    for a in range(len(counts)):
        for b in range(a, len(counts)):
            if a == b:  # pairs i > j inside community a
                n_pairs = int(counts[a] * (counts[a] - 1) // 2)
                pick = _sample_pairs(rng, n_pairs, float(p_in))
                i, j = _unrank_lower_triangle(pick)
                rows.append(offsets[a] + i)
                cols.append(offsets[a] + j)
            else:  # all pairs between communities a and b
                pick = _sample_pairs(rng, int(counts[a] * counts[b]), float(p_out))
                rows.append(offsets[a] + pick // counts[b])
                cols.append(offsets[b] + pick % counts[b])
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    # Store both directions, then sort by (row, col) through one int64 key.
    key = np.sort(np.concatenate([row * n_nodes + col, col * n_nodes + row]))
    edge_index = torch.from_numpy(np.stack([key // n_nodes, key % n_nodes]))  # (2, M)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.from_numpy(counts))  # (N,)
    return edge_index.long(), labels.long()


def digits(*, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's shipped handwritten digits (UCI, 1797 images), shuffled.

    Pixels (0..16 in the source) are scaled to [-1, 1], the range a diffusion model's data
    is usually put in. Nothing is downloaded: ``sklearn.datasets.load_digits`` reads a file
    inside the installed package.

    Args:
        size: image side; only 8 (the source resolution) is supported.
        seed: seed of the shuffle.

    Returns:
        ``(images, labels)``: images in [-1, 1] and digit labels 0..9.

    Shapes:
        images: (1797, 1, 8, 8) float32; labels: (1797,) int64.
    """
    if isinstance(size, bool) or size != 8:
        raise ValueError(f"size must be 8 (the resolution scikit-learn ships), got {size!r}")
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # (N, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)  # (N,)
    order = torch.randperm(labels.numel(), generator=make_generator(seed))
    return images[order].contiguous(), labels[order].contiguous()


def _sample_pairs(rng: np.random.Generator, n_pairs: int, p: float) -> np.ndarray:
    """Ranks in [0, n_pairs) of the pairs that are edges, each kept with probability p."""
    if n_pairs == 0 or p == 0.0:
        return np.empty(0, dtype=np.int64)
    k = int(rng.binomial(n_pairs, p))
    return rng.choice(n_pairs, size=k, replace=False).astype(np.int64)


def _unrank_lower_triangle(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map rank r = i (i - 1) / 2 + j (0 <= j < i) back to (i, j)."""
    i = np.floor((1.0 + np.sqrt(1.0 + 8.0 * rank.astype(np.float64))) / 2.0).astype(np.int64)
    i -= (i * (i - 1) // 2) > rank  # correct float rounding either way
    i += ((i + 1) * i // 2) <= rank
    return i, rank - i * (i - 1) // 2


def _check_seed(seed: object) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63 - 1], got {seed}")
    return int(seed)


"""User-item interaction data for the recommender sections: a seeded generator with planted
communities, a per-user train/validation/test split, negative sampling, and a loader for the real
MovieLens-100k file that never downloads anything.

Shapes: U users, I items, E interactions stored as ``(2, E)`` int64 pairs ``[user; item]``.
Section: chapter 01, "UltraGCN" and "GraphHash".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.loaders import require_local

__all__ = ["Interactions", "NegativeSampler", "load_movielens_100k", "sample_negatives", "split_per_user", "synthetic_interactions"]


@dataclass(frozen=True)
class Interactions:
    """A user-item dataset split per user.

    Attributes:
        n_users, n_items: U and I.
        train, val, test: (2, E_split) int64 ``[user; item]`` pairs, disjoint.
        user_group, item_group: planted community of each user (U,) / item (I,), or None for real data.
    """

    n_users: int
    n_items: int
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    user_group: torch.Tensor | None = None
    item_group: torch.Tensor | None = None

    def __repr__(self) -> str:
        return (f"Interactions(users={self.n_users:,}, items={self.n_items:,}, train={self.train.shape[1]:,}, "
                f"val={self.val.shape[1]:,}, test={self.test.shape[1]:,})")

    @property
    def density(self) -> float:
        """Share of the U x I matrix observed (all splits)."""
        total = self.train.shape[1] + self.val.shape[1] + self.test.shape[1]
        return total / (self.n_users * self.n_items)


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def synthetic_interactions(n_users: int, n_items: int, *, n_communities: int = 8, avg_degree: float = 20.0,
                           p_in: float = 0.8, popularity_exponent: float = 0.8, val_fraction: float = 0.1,
                           test_fraction: float = 0.2, seed: int = 0) -> Interactions:
    """A seeded user-item graph with planted communities and skewed degrees.

    Users and items are assigned to ``n_communities`` communities. Each user's number of
    interactions is log-normal around ``avg_degree`` (a heavy-ish tail, at least 5); each
    interaction picks, with probability ``p_in``, an item of the user's own community, else any
    item; within either pool items are drawn with Zipf-like popularity ``rank^-exponent``.
    Duplicates are dropped, then every user's items are split into train / validation / test.

    Returns:
        An :class:`Interactions` with the planted groups attached.
    """
    _check_count("n_users", n_users)
    _check_count("n_items", n_items, 2)
    _check_count("n_communities", n_communities)
    if n_communities > n_items:
        raise ValueError(f"n_communities ({n_communities}) must not exceed n_items ({n_items})")
    if not 5 <= avg_degree < n_items:
        raise ValueError(f"avg_degree must lie in [5, n_items), got {avg_degree}")
    if not 0.0 <= p_in <= 1.0:
        raise ValueError(f"p_in must lie in [0, 1], got {p_in}")
    if popularity_exponent < 0:
        raise ValueError(f"popularity_exponent must be >= 0, got {popularity_exponent}")
    g = torch.Generator().manual_seed(seed)
    user_group = torch.randint(n_communities, (n_users,), generator=g)
    item_group = torch.randperm(n_items, generator=g) % n_communities
    # Zipf-like popularity over a random order of the items
    rank = torch.randperm(n_items, generator=g).to(torch.float64) + 1.0
    popularity = rank.pow(-popularity_exponent)

    # heavy-tailed user degrees with mean ~avg_degree (log-normal, sigma 0.6)
    sigma = 0.6
    mu = torch.log(torch.tensor(avg_degree)) - sigma**2 / 2
    deg = torch.exp(mu + sigma * torch.randn(n_users, generator=g)).round().clamp(5, n_items // 2).long()
    users = torch.repeat_interleave(torch.arange(n_users), deg)
    inside = torch.rand(users.numel(), generator=g) < p_in
    items = torch.multinomial(popularity, users.numel(), replacement=True, generator=g)
    for c in range(n_communities):  # one vectorised draw per community
        pick = inside & (user_group[users] == c)
        pool = (item_group == c).nonzero().squeeze(1)
        if pick.any():
            draw = torch.multinomial(popularity[pool], int(pick.sum()), replacement=True, generator=g)
            items[pick] = pool[draw]
    pairs = torch.unique(users * n_items + items)  # drop duplicates, sorted by (user, item)
    pairs = torch.stack([pairs // n_items, pairs % n_items])
    train, val, test = split_per_user(pairs, n_users, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return Interactions(n_users, n_items, train, val, test, user_group, item_group)


def split_per_user(pairs: torch.Tensor, n_users: int, *, val_fraction: float, test_fraction: float,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each user's interactions at random into train / validation / test.

    Every user with at least 3 interactions keeps at least one in each split; fractions are of
    each user's own interactions (rounded down, at least one).
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")
    g = torch.Generator().manual_seed(seed + 1)
    users = pairs[0]
    # order interactions by user, randomly within a user: sort by user + a random fraction
    order = torch.argsort(users.double() + torch.rand(users.numel(), generator=g, dtype=torch.float64))
    pairs = pairs[:, order]
    users = pairs[0]
    counts = torch.bincount(users, minlength=n_users)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(users.numel()) - starts[users]  # position within the user's shuffled list
    n = counts[users]
    n_test = (n.double() * test_fraction).floor().clamp(min=1).long()
    n_val = (n.double() * val_fraction).floor().clamp(min=1).long()
    enough = n >= 3
    is_test = enough & (pos < n_test)
    is_val = enough & (pos >= n_test) & (pos < n_test + n_val)
    is_train = ~(is_test | is_val)
    return pairs[:, is_train], pairs[:, is_val], pairs[:, is_test]


class NegativeSampler:
    """Uniform items a user did not interact with (vectorised rejection sampling).

    Args:
        positives: (2, E) known ``[user; item]`` pairs to avoid (kept as sorted keys once).
        n_items: I.
    """

    def __init__(self, positives: torch.Tensor, n_items: int) -> None:
        if positives.dim() != 2 or positives.shape[0] != 2:
            raise ValueError(f"positives must have shape (2, E), got {tuple(positives.shape)}")
        self.n_items = _check_count("n_items", n_items)
        self.keys = torch.unique(positives[0] * n_items + positives[1])  # sorted

    def __call__(self, users: torch.Tensor, *, n_neg: int = 1, generator: torch.Generator | None = None,
                 max_tries: int = 10) -> torch.Tensor:
        """(B, n_neg) item ids; a draw still colliding after ``max_tries`` rounds is kept (rare)."""
        if n_neg < 1:
            raise ValueError(f"n_neg must be >= 1, got {n_neg}")
        neg = torch.randint(self.n_items, (users.numel(), n_neg), generator=generator)
        if self.keys.numel() == 0:
            return neg
        for _ in range(max_tries):
            q = users.unsqueeze(1) * self.n_items + neg
            idx = torch.searchsorted(self.keys, q).clamp(max=self.keys.numel() - 1)
            clash = self.keys[idx] == q
            if not clash.any():
                break
            neg[clash] = torch.randint(self.n_items, (int(clash.sum()),), generator=generator)
        return neg


def sample_negatives(users: torch.Tensor, positives: torch.Tensor, n_items: int, *, n_neg: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One-off :class:`NegativeSampler` draw: (B, n_neg) items that ``users`` did not interact with."""
    return NegativeSampler(positives, n_items)(users, n_neg=n_neg, generator=generator)


def load_movielens_100k(path: str | Path, *, min_rating: int = 4, val_fraction: float = 0.1,
                        test_fraction: float = 0.2, seed: int = 0) -> Interactions:
    """MovieLens-100k from its ``u.data`` file (tab-separated user, item, rating, time).

    Nothing is downloaded: pass the path of a ``u.data`` you fetched yourself from
    https://grouplens.org/datasets/movielens/100k/. Ratings >= ``min_rating`` count as
    interactions (the usual implicit-feedback conversion); ids are made 0-based.

    Raises:
        FileNotFoundError: with instructions, when the file is absent.
    """
    path = require_local(path, name="MovieLens-100k (u.data)", url="https://grouplens.org/datasets/movielens/100k/")
    rows = torch.tensor([[int(v) for v in line.split("\t")[:3]] for line in Path(path).read_text().splitlines() if line])
    if rows.numel() == 0 or rows.shape[1] != 3:
        raise ValueError(f"{path} does not look like MovieLens u.data (user<TAB>item<TAB>rating<TAB>time)")
    keep = rows[:, 2] >= min_rating
    users, items = rows[keep, 0] - 1, rows[keep, 1] - 1
    n_users, n_items = int(rows[:, 0].max()), int(rows[:, 1].max())
    pairs = torch.stack([users, items])
    train, val, test = split_per_user(pairs, n_users, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return Interactions(n_users, n_items, train, val, test)

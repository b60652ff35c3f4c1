"""labkit.graphs.interactions: the seeded generator, the per-user split, negatives, MovieLens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from labkit.graphs.interactions import NegativeSampler, load_movielens_100k, split_per_user, synthetic_interactions


@pytest.fixture(scope="module")
def data():
    return synthetic_interactions(600, 400, n_communities=4, avg_degree=15, seed=3)


def keys(pairs: torch.Tensor, n_items: int) -> set[int]:
    return set((pairs[0] * n_items + pairs[1]).tolist())


def test_splits_are_disjoint_and_cover_users(data) -> None:
    tr, va, te = (keys(p, data.n_items) for p in (data.train, data.val, data.test))
    assert not (tr & va) and not (tr & te) and not (va & te)
    counts = torch.bincount(torch.cat([data.train[0], data.val[0], data.test[0]]), minlength=data.n_users)
    assert set(data.test[0].tolist()) == set((counts >= 3).nonzero().squeeze(1).tolist())  # all with >= 3 items
    total = len(tr) + len(va) + len(te)
    assert 0.15 < len(te) / total < 0.3 and 0.05 < len(va) / total < 0.2


def test_deterministic_and_seed_dependent(data) -> None:
    again = synthetic_interactions(600, 400, n_communities=4, avg_degree=15, seed=3)
    assert torch.equal(again.train, data.train) and torch.equal(again.test, data.test)
    other = synthetic_interactions(600, 400, n_communities=4, avg_degree=15, seed=4)
    assert not torch.equal(other.train, data.train)


def test_planted_communities_dominate(data) -> None:
    pairs = torch.cat([data.train, data.val, data.test], dim=1)
    same = (data.user_group[pairs[0]] == data.item_group[pairs[1]]).double().mean().item()
    assert same > 0.75  # p_in = 0.8 plus chance matches


def test_split_by_hand() -> None:
    pairs = torch.tensor([[0] * 10 + [1] * 2, list(range(10)) + [0, 1]])
    tr, va, te = split_per_user(pairs, 2, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert (te[0] == 0).sum() == 2 and (va[0] == 0).sum() == 1 and (tr[0] == 0).sum() == 7
    assert (tr[0] == 1).sum() == 2  # too few interactions to hold any out


def test_negatives_avoid_positives(data) -> None:
    sampler = NegativeSampler(data.train, data.n_items)
    users = data.train[0]
    neg = sampler(users, n_neg=3, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (users.numel(), 3)
    hits = keys(torch.stack([users.repeat_interleave(3), neg.reshape(-1)]), data.n_items) & keys(data.train, data.n_items)
    assert not hits


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_users"):
        synthetic_interactions(0, 10)
    with pytest.raises(ValueError, match="avg_degree"):
        synthetic_interactions(10, 20, avg_degree=50)
    with pytest.raises(ValueError, match="p_in"):
        synthetic_interactions(10, 100, p_in=1.5)
    with pytest.raises(ValueError, match="fraction"):
        split_per_user(torch.zeros(2, 3, dtype=torch.long), 1, val_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ValueError, match="n_neg"):
        NegativeSampler(torch.zeros(2, 1, dtype=torch.long), 5)(torch.tensor([0]), n_neg=0)


def test_movielens_loader_reads_u_data_and_explains_when_absent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="grouplens.org"):
        load_movielens_100k(tmp_path / "u.data")
    lines = [f"{u}\t{i}\t{5 if (u + i) % 3 else 2}\t0" for u in range(1, 21) for i in range(1, 11)]
    (tmp_path / "u.data").write_text("\n".join(lines) + "\n")
    ml = load_movielens_100k(tmp_path / "u.data")
    assert (ml.n_users, ml.n_items) == (20, 10)
    total = ml.train.shape[1] + ml.val.shape[1] + ml.test.shape[1]
    assert total == sum(1 for u in range(1, 21) for i in range(1, 11) if (u + i) % 3)

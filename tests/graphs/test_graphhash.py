"""labkit.graphs.graphhash: random and graph bucket maps, the hashed MF, its training and size."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs import synthetic_interactions
from labkit.graphs.graphhash import (
    HashedEmbedding,
    HashedMF,
    HashedMFConfig,
    TableSize,
    graphhash_buckets,
    random_hash_buckets,
    table_size,
    train_hashed_mf,
)


@pytest.fixture(scope="module")
def small():
    return synthetic_interactions(120, 60, n_communities=4, avg_degree=8.0, p_in=0.9, seed=3)


def two_bicliques() -> torch.Tensor:
    """Users 0-2 x items 0-2 and users 3-5 x items 3-5, every pair inside a block, none across."""
    pairs = [(u, i) for block in (0, 3) for u in range(block, block + 3) for i in range(block, block + 3)]
    return torch.tensor(pairs).T.contiguous()


@pytest.mark.parametrize("resolution", [None, 1.0])
def test_two_bicliques_get_one_bucket_each(resolution) -> None:
    users, items = graphhash_buckets(two_bicliques(), 6, 6, n_user_buckets=2, n_item_buckets=2,
                                     resolution=resolution, seed=0)
    for buckets in (users, items):
        assert len(set(buckets[:3].tolist())) == 1 and len(set(buckets[3:].tolist())) == 1
        assert buckets[0] != buckets[3]
        assert sorted(set(buckets.tolist())) == [0, 1]


def test_isolated_ids_share_a_bucket() -> None:
    # items 6 and 7 have no training pair: they carry no signal and collide with each other
    _, items = graphhash_buckets(two_bicliques(), 6, 8, n_user_buckets=2, n_item_buckets=3, seed=0)
    assert items[6] == items[7]
    assert len({int(items[0]), int(items[3]), int(items[6])}) == 3


def test_random_hash_is_balanced_and_deterministic() -> None:
    a = random_hash_buckets(1000, 64, seed=5)
    assert a.dtype == torch.int64 and a.shape == (1000,)
    assert torch.equal(a, random_hash_buckets(1000, 64, seed=5))
    assert not torch.equal(a, random_hash_buckets(1000, 64, seed=6))
    counts = torch.bincount(a, minlength=64)
    assert counts.numel() == 64 and counts.min() == 1000 // 64 and counts.max() == -(-1000 // 64)


@pytest.mark.parametrize("n_user_buckets, n_item_buckets", [(1, 1), (6, 4), (30, 15), (120, 60)])
def test_graphhash_uses_exactly_the_requested_rows(small, n_user_buckets, n_item_buckets) -> None:
    users, items = graphhash_buckets(small.train, small.n_users, small.n_items, n_user_buckets=n_user_buckets,
                                     n_item_buckets=n_item_buckets, seed=0)
    assert users.shape == (small.n_users,) and items.shape == (small.n_items,)
    assert torch.equal(torch.unique(users), torch.arange(n_user_buckets))
    assert torch.equal(torch.unique(items), torch.arange(n_item_buckets))


def test_graphhash_is_seeded(small) -> None:
    kw = dict(n_user_buckets=10, n_item_buckets=6, seed=1)
    a = graphhash_buckets(small.train, small.n_users, small.n_items, **kw)
    b = graphhash_buckets(small.train, small.n_users, small.n_items, **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _purity(buckets: torch.Tensor, group: torch.Tensor) -> float:
    """Share of IDs whose bucket's majority planted group is their own."""
    hits = sum(int(torch.bincount(group[buckets == b]).max()) for b in torch.unique(buckets))
    return hits / buckets.numel()


def test_graphhash_collisions_follow_the_planted_communities(small) -> None:
    users, items = graphhash_buckets(small.train, small.n_users, small.n_items, n_user_buckets=12,
                                     n_item_buckets=6, seed=0)
    assert _purity(users, small.user_group) >= 0.8
    assert _purity(items, small.item_group) >= 0.8
    assert _purity(random_hash_buckets(small.n_users, 12, seed=0), small.user_group) < 0.7


def test_full_table_hashed_mf_equals_plain_mf_up_to_a_permutation(small) -> None:
    users, items = graphhash_buckets(small.train, small.n_users, small.n_items, n_user_buckets=small.n_users,
                                     n_item_buckets=small.n_items, seed=0)
    assert torch.equal(users.sort().values, torch.arange(small.n_users))  # one ID per row: a permutation
    g = torch.Generator().manual_seed(0)
    w_user, w_item = torch.randn(small.n_users, 8, generator=g), torch.randn(small.n_items, 8, generator=g)
    hashed = HashedMF(users, items, 8)
    plain = HashedMF(torch.arange(small.n_users), torch.arange(small.n_items), 8)  # the unhashed MF
    with torch.no_grad():
        hashed.users.tables[0].weight[users] = w_user  # row bucket[id] holds the ID's embedding
        hashed.items.tables[0].weight[items] = w_item
        plain.users.tables[0].weight.copy_(w_user)
        plain.items.tables[0].weight.copy_(w_item)
    every = torch.arange(small.n_users)
    torch.testing.assert_close(hashed.all_scores(every), w_user @ w_item.T)
    # training is permutation-equivariant too: same batches, same updates, same scores
    config = HashedMFConfig(max_epochs=2, eval_every=1, batch_size=256)
    train_hashed_mf(hashed, small, config=config)
    train_hashed_mf(plain, small, config=config)
    torch.testing.assert_close(hashed.all_scores(every), plain.all_scores(every), atol=1e-5, rtol=1e-5)


def test_double_hashing_sums_two_tables() -> None:
    emb = HashedEmbedding([torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])], 2)
    with torch.no_grad():
        emb.tables[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        emb.tables[1].weight.copy_(torch.tensor([[10.0, 10.0], [20.0, 20.0]]))
    assert emb.n_rows == 4
    assert torch.equal(emb(torch.tensor([0, 1, 2])), torch.tensor([[11.0, 10.0], [21.0, 20.0], [20.0, 21.0]]))


def test_table_size_by_hand() -> None:
    model = HashedMF(random_hash_buckets(100, 10, seed=0), random_hash_buckets(50, 5, seed=0), 16)
    size = table_size(model)
    assert size == TableSize(rows=15, full_rows=150, dim=16, bytes_per_value=4)
    assert (size.params, size.bytes, size.full_bytes, size.fraction) == (240, 960, 9600, 0.1)


def test_training_improves_on_random_init_and_keeps_the_best(small) -> None:
    torch.manual_seed(0)
    model = HashedMF(torch.arange(small.n_users), torch.arange(small.n_items), 16)
    result = train_hashed_mf(model, small, config=HashedMFConfig(max_epochs=12, eval_every=2, lr=0.02))
    vals = [h.recall for h in result.history]
    assert result.best_val.recall == max(vals) and result.best_epoch in [h.epoch for h in result.history]
    assert result.best_val.recall > vals[0] or result.best_epoch == result.history[0].epoch
    assert result.best_val.recall > 0.1


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(n_ids=10, n_buckets=0, seed=0), ValueError, "n_buckets must be in"),
    (dict(n_ids=10, n_buckets=11, seed=0), ValueError, "n_buckets must be in"),
    (dict(n_ids=10, n_buckets=2.0, seed=0), TypeError, "n_buckets must be an int"),
    (dict(n_ids=True, n_buckets=1, seed=0), TypeError, "n_ids must be an int"),
    (dict(n_ids=10, n_buckets=2, seed=-1), ValueError, "seed"),
])
def test_random_hash_bad_inputs(kwargs, err, msg) -> None:
    with pytest.raises(err, match=msg):
        random_hash_buckets(**kwargs)


@pytest.mark.parametrize("pairs, kwargs, err, msg", [
    (two_bicliques(), dict(n_user_buckets=0), ValueError, "n_user_buckets"),
    (two_bicliques(), dict(n_item_buckets=7), ValueError, "n_item_buckets"),
    (two_bicliques()[:1], {}, ValueError, r"shape \(2, E\)"),
    (two_bicliques().float(), {}, TypeError, "int64"),
    (two_bicliques() + 1, {}, ValueError, "out of range"),
    (two_bicliques() - 1, {}, ValueError, "out of range"),
    ([[0], [0]], {}, TypeError, "must be a tensor"),
    (two_bicliques(), dict(resolution=-1.0), ValueError, "resolution"),
])
def test_graphhash_bad_inputs(pairs, kwargs, err, msg) -> None:
    args = dict(n_user_buckets=2, n_item_buckets=2) | kwargs
    with pytest.raises(err, match=msg):
        graphhash_buckets(pairs, 6, 6, **args)


def test_model_and_training_bad_inputs(small) -> None:
    with pytest.raises(ValueError, match="bucket map 1 must be int64 of shape"):
        HashedEmbedding([torch.arange(5), torch.arange(4)], 4)
    with pytest.raises(ValueError, match="bucket ids >= 0"):
        HashedEmbedding(torch.tensor([0, -1]), 4)
    with pytest.raises(TypeError, match="buckets must be a tensor"):
        HashedEmbedding([], 4)
    with pytest.raises(ValueError, match="dim must be"):
        HashedEmbedding(torch.arange(3), 0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        HashedMFConfig(lr=0.0)
    with pytest.raises(ValueError, match="patience must be"):
        HashedMFConfig(patience=0)
    wrong = HashedMF(torch.arange(small.n_users + 1), torch.arange(small.n_items), 4)
    with pytest.raises(ValueError, match="users"):
        train_hashed_mf(wrong, small)
    with pytest.raises(TypeError, match="HashedMF"):
        table_size(torch.nn.Linear(2, 2))


def test_table_size_counts_stored_maps() -> None:
    # GraphHash keeps one int32 per ID: 150 IDs x 4 B = 600 B beside the 15 x 16 x 4 = 960 B of rows;
    # the full tables (150 x 16 x 4 = 9600 B) and a random hash (a formula) need no map
    model = HashedMF(random_hash_buckets(100, 10, seed=0), random_hash_buckets(50, 5, seed=0), 16)
    size = table_size(model, stored_maps=1)
    assert (size.table_bytes, size.map_bytes, size.bytes) == (960, 600, 1560)
    assert size.memory_fraction == pytest.approx(1560 / 9600) and size.fraction == 0.1
    assert table_size(model, stored_maps=1, index_bytes=8).bytes == 960 + 1200
    assert table_size(model).map_bytes == 0 and table_size(model).bytes == 960
    double = HashedMF([random_hash_buckets(100, 5, seed=0), random_hash_buckets(100, 5, seed=1)],
                      [random_hash_buckets(50, 3, seed=0), random_hash_buckets(50, 2, seed=1)], 16)
    assert table_size(double, stored_maps=1).bytes == 15 * 16 * 4 + 150 * 4
    with pytest.raises(ValueError, match="stored_maps must be in"):
        table_size(model, stored_maps=2)
    with pytest.raises(ValueError, match="index_bytes"):
        table_size(model, stored_maps=1, index_bytes=0)
    with pytest.raises(TypeError, match="stored_maps must be an int"):
        table_size(model, stored_maps=True)

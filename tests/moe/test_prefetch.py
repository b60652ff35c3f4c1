"""labkit.moe.prefetch: LRU and lookahead-Belady expert caches and the decode timeline."""

from __future__ import annotations

import pytest
import torch

from labkit.moe.prefetch import CacheStats, decode_time, expert_requests, simulate_cache


def _stream(ids: list[int]) -> torch.Tensor:
    """One request per token, one layer: (T, 1)."""
    return torch.tensor(ids).view(-1, 1)


def test_expert_requests_numbering() -> None:
    routes = torch.tensor([[[1, 0], [2, -1]], [[0, 1], [1, 2]]])  # (T=2, L=2, k=2), E=3
    assert expert_requests(routes, 3).tolist() == [[1, 0, 5, -1], [0, 1, 4, 5]]


def test_lru_by_hand() -> None:
    # capacity 2: a b a c b -> miss miss hit miss(evict b) miss(evict a)
    stats = simulate_cache(_stream([0, 1, 0, 2, 1]), capacity=2, policy="lru", n_layers=1)
    assert (stats.hits, stats.loads, stats.requests) == (1, 4, 5)
    assert stats.loads_per_token.view(-1).tolist() == [1, 1, 0, 1, 1]


def test_belady_by_hand() -> None:
    # capacity 2, full lookahead: a b a c b -> at c evict a (never used again), keep b: b hits
    stats = simulate_cache(_stream([0, 1, 0, 2, 1]), capacity=2, policy="belady", n_layers=1)
    assert (stats.hits, stats.loads) == (2, 3)
    # a window of 1 token sees only the current request: falls back to LRU's choice (evict b)
    short = simulate_cache(_stream([0, 1, 0, 2, 1]), capacity=2, policy="belady", n_layers=1, lookahead=1)
    assert (short.hits, short.loads) == (1, 4)
    assert simulate_cache(_stream([0, 1, 0, 2, 1]), capacity=2, policy="belady", n_layers=1, lookahead=2).hits == 2


def test_cyclic_pattern_lru_thrashes() -> None:
    # The classic LRU worst case: cycling through C + 1 experts misses every time; MIN keeps C - 1.
    ids = [0, 1, 2] * 10
    assert simulate_cache(_stream(ids), capacity=2, policy="lru", n_layers=1).hits == 0
    assert simulate_cache(_stream(ids), capacity=2, policy="belady", n_layers=1).hits > 10


def test_within_token_lookahead() -> None:
    # A token's two layers are known together at lookahead=1: request layout (T, L=2).
    req = torch.tensor([[0, 1], [2, 1], [0, 3]])
    lru = simulate_cache(req, capacity=2, policy="lru", n_layers=2)
    bel = simulate_cache(req, capacity=2, policy="belady", n_layers=2, lookahead=1)
    assert lru.loads_per_token.tolist() == [[1, 1], [1, 0], [1, 1]]
    assert bel.loads <= lru.loads


@pytest.mark.parametrize("seed", range(8))
def test_belady_never_worse_than_lru(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(12, generator=gen) ** 3  # skewed popularity
    req = torch.multinomial(weights, 600, replacement=True, generator=gen).view(150, 4)
    req[torch.rand(150, 4, generator=gen) < 0.05] = -1  # some dropped assignments
    for capacity in (1, 3, 6, 12):
        lru = simulate_cache(req, capacity=capacity, policy="lru", n_layers=2)
        opt = simulate_cache(req, capacity=capacity, policy="belady", n_layers=2)
        none = simulate_cache(req, capacity=capacity, policy="belady", n_layers=2, lookahead=0)
        assert opt.loads <= lru.loads  # Belady's MIN is optimal
        assert none.loads == lru.loads  # knowing nothing is LRU
        assert lru.requests == int((req >= 0).sum()) == lru.hits + lru.loads
        assert int(opt.loads_per_token.sum()) == opt.loads
        if capacity == 12:  # everything fits: only compulsory loads
            assert opt.loads == lru.loads == len(set(req[req >= 0].tolist()))


def test_hit_rate_property() -> None:
    assert CacheStats(requests=0, hits=0, loads=0, loads_per_token=torch.zeros(0, 1, dtype=torch.int64)).hit_rate == 0.0
    one = torch.zeros(1, 1, dtype=torch.int64)
    assert CacheStats(requests=4, hits=3, loads=1, loads_per_token=one).hit_rate == 0.75


def test_decode_time_by_hand() -> None:
    loads = torch.tensor([[1, 1], [0, 2]])  # (T=2, L=2)
    # on demand: 4 loads * 2 s + 4 layers * 1 s
    assert decode_time(loads, compute_s=1.0, load_s=2.0, prefetch=False) == 12.0
    # prefetch, token 0: copies end at 2, 4; layers run [2, 3], [4, 5]. token 1 starts at 5:
    # copies end 5, 9; layers [5, 6], [9, 10]
    assert decode_time(loads, compute_s=1.0, load_s=2.0, prefetch=True) == 10.0
    zero = torch.zeros(3, 2, dtype=torch.int64)
    for prefetch in (True, False):  # nothing to load: compute only
        assert decode_time(zero, compute_s=1.0, load_s=5.0, prefetch=prefetch) == 6.0


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="routes"):
        expert_requests(torch.zeros(2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        expert_requests(torch.tensor([[[0, 3]]]), 2)
    with pytest.raises(TypeError):
        expert_requests(torch.tensor([[[0, 1]]]), 2.0)  # type: ignore[arg-type]
    req = _stream([0, 1])
    with pytest.raises(ValueError, match="policy"):
        simulate_cache(req, capacity=1, policy="fifo", n_layers=1)
    with pytest.raises(ValueError, match="capacity"):
        simulate_cache(req, capacity=0, policy="lru", n_layers=1)
    with pytest.raises(ValueError, match="lookahead"):
        simulate_cache(req, capacity=1, policy="belady", n_layers=1, lookahead=-1)
    with pytest.raises(ValueError, match="multiple"):
        simulate_cache(torch.zeros(2, 3, dtype=torch.int64), capacity=1, policy="lru", n_layers=2)
    with pytest.raises(ValueError, match="requests"):
        simulate_cache(torch.zeros(4, dtype=torch.int64), capacity=1, policy="lru", n_layers=1)
    with pytest.raises(TypeError, match="loads_per_token"):  # float counts: a wrong dtype
        decode_time(torch.zeros(2, 2), compute_s=1.0, load_s=1.0, prefetch=True)
    with pytest.raises(ValueError, match="loads_per_token"):
        decode_time(torch.zeros(2, dtype=torch.int64), compute_s=1.0, load_s=1.0, prefetch=True)
    with pytest.raises(ValueError, match="compute_s"):
        decode_time(torch.zeros(2, 2, dtype=torch.int64), compute_s=0.0, load_s=1.0, prefetch=True)

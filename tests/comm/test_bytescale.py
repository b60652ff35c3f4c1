"""labkit.comm.bytescale: static 2-D mesh against ByteScale-style data-aware sharding."""

from __future__ import annotations

import pytest

from labkit.comm import AlphaBeta, collective_time
from labkit.comm.bytescale import (
    TokenCost,
    dynamic_assignment,
    measure_token_cost,
    sample_lengths,
    static_cp_size,
    static_mesh_assignment,
)

COST = TokenCost(linear=1e-6, attention=1e-9, kv_bytes_per_token=100.0)
LINK = AlphaBeta(alpha=1e-5, beta=1e-9)


def test_hand_checked_batch() -> None:
    # 4 ranks, capacity 100: one long sequence (200 tokens: 2 ranks) and two short ones
    lengths = [200, 50, 50]
    dyn = dynamic_assignment(lengths, world_size=4, capacity=100, cost=COST, link=LINK, piece_share=10.0)
    assert dyn.ranks[0] == (0, 1) and {dyn.ranks[1], dyn.ranks[2]} == {(2,), (3,)}
    assert dyn.compute[0] == pytest.approx(COST.seconds(200) / 2)
    assert dyn.comm_bytes == pytest.approx((100 * 100, 100 * 100, 0.0, 0.0))  # half of 200 x 100 B each
    assert dyn.comm[0] == pytest.approx(collective_time("all_gather", 200 * 100, 2, LINK))
    sta = static_mesh_assignment(lengths, world_size=4, cp_size=2, capacity=100, cost=COST, link=LINK)
    assert sta.ranks == ((0, 1), (2, 3), (2, 3))  # token-balanced: both short ones join the other group
    assert sta.redundant_bytes == pytest.approx(2 * 2 * 50 * 100 / 2)  # short ones, 2 ranks x 25 tokens x 100 B
    assert sta.total_comm_bytes > dyn.total_comm_bytes


def test_invariants_over_seeds() -> None:
    cp = static_cp_size(8192, capacity=1024, world_size=16)
    assert cp == 8
    for seed in range(3):
        lengths = sample_lengths(96, seed=seed, max_len=8192)
        assert min(lengths) >= 16 and max(lengths) <= 8192
        sta = static_mesh_assignment(lengths, world_size=16, cp_size=cp, capacity=1024, cost=COST, link=LINK)
        dyn = dynamic_assignment(lengths, world_size=16, capacity=1024, cost=COST, link=LINK)
        # all the (padded) compute is distributed; padding never loses work
        for a in (sta, dyn):
            assert sum(a.compute) >= sum(COST.seconds(n) for n in lengths) * (1 - 1e-9)
            assert all(n <= p for n, p in zip(lengths, a.padded))
        # a sequence longer than capacity is split in both; a short one only by the static mesh
        assert all(len(r) == 1 for n, r in zip(lengths, dyn.ranks) if n <= 1024 and COST.seconds(n) * 32 < sum(dyn.compute))
        assert dyn.redundant_bytes == 0.0 and sta.redundant_bytes > 0
    assert sample_lengths(10, seed=3) == sample_lengths(10, seed=3)


def test_measure_token_cost_is_positive() -> None:
    cost = measure_token_cost(d_model=16, n_heads=2, lengths=(64, 128), repeats=1)
    assert cost.linear > 0 and cost.attention > 0 and cost.kv_bytes_per_token == 2 * 16 * 4


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="n_seqs must be an int >= 1"):
        sample_lengths(0, seed=0)
    with pytest.raises(ValueError, match="min_len"):
        sample_lengths(4, seed=0, min_len=100, max_len=10)
    with pytest.raises(ValueError, match="cp_size must be an int >= 1 dividing world_size"):
        static_mesh_assignment([10], world_size=4, cp_size=3, capacity=10, cost=COST, link=LINK)
    with pytest.raises(ValueError, match="does not fit cp_size"):
        static_mesh_assignment([100], world_size=4, cp_size=2, capacity=10, cost=COST, link=LINK)
    with pytest.raises(ValueError, match="does not fit world_size"):
        dynamic_assignment([100], world_size=4, capacity=10, cost=COST, link=LINK)
    with pytest.raises(ValueError, match="lengths must be a non-empty"):
        dynamic_assignment([], world_size=4, capacity=10, cost=COST, link=LINK)
    with pytest.raises(TypeError, match="cost must be a TokenCost"):
        dynamic_assignment([5], world_size=4, capacity=10, cost=1.0, link=LINK)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="piece_share"):
        dynamic_assignment([5], world_size=4, capacity=10, cost=COST, link=LINK, piece_share=0)
    with pytest.raises(ValueError, match="needs 9 ranks"):
        static_cp_size(90, capacity=10, world_size=8)
    with pytest.raises(ValueError, match="linear must be a number >= 0"):
        TokenCost(linear=-1.0, attention=0.0, kv_bytes_per_token=1.0)
    with pytest.raises(ValueError, match="d_model must be a positive multiple"):
        measure_token_cost(d_model=10, n_heads=4)

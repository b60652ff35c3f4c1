"""Tests of labkit.comm.overlap: chunking, shards, efficiency, and the real two-process steps.

The multi-process tests spawn real ranks joined by gloo (a few seconds per launch), so the file
keeps to three launches: the whole study on tiny sizes, the overlapped step alone, and a rank that
fails while its peer waits in a collective.
"""

from __future__ import annotations

import time

import pytest
import torch

from labkit.comm import AlphaBeta, collective_time
from labkit.comm.overlap import (
    CommEngine,
    chunk_rows,
    link_all_reduce,
    make_shards,
    overlap_efficiency,
    overlap_study,
    paired_speedups,
    overlapped_matmul_all_reduce,
    overlapped_step,
    serial_matmul_all_reduce,
)
from labkit.dist import LaunchError, LaunchTimeout, launch

SIZES = dict(m=64, k=16, n=8, seed=3)


def _expected(world_size: int, *, m: int, k: int, n: int, seed: int) -> torch.Tensor:
    total = torch.zeros(m, n)
    for rank in range(world_size):
        x, w = make_shards(rank, m=m, k=k, n=n, seed=seed)
        total += x @ w
    return total


# ---------------------------------------------------------------- single-process pieces


def test_chunk_rows_by_hand() -> None:
    assert chunk_rows(6, chunks=3) == [(0, 2), (2, 4), (4, 6)]
    assert chunk_rows(5, chunks=1) == [(0, 5)]


@pytest.mark.parametrize("m, chunks", [(8, 2), (12, 4), (32, 32)])
def test_chunk_rows_tile_the_rows(m: int, chunks: int) -> None:
    ranges = chunk_rows(m, chunks=chunks)
    assert len(ranges) == chunks and ranges[0][0] == 0 and ranges[-1][1] == m
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert {hi - lo for lo, hi in ranges} == {m // chunks}


def test_chunk_rows_bad_inputs() -> None:
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        chunk_rows(8, chunks=0)
    with pytest.raises(ValueError, match="chunks=3 must divide the m=10"):
        chunk_rows(10, chunks=3)
    with pytest.raises(TypeError, match="chunks must be an int"):
        chunk_rows(8, chunks=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="m must be >= 1"):
        chunk_rows(0, chunks=1)


def test_make_shards_are_small_integers_and_reproducible() -> None:
    x, w = make_shards(1, m=5, k=3, n=4, seed=7)
    assert x.shape == (5, 3) and w.shape == (3, 4) and x.dtype == torch.float32
    assert torch.equal(x, x.round()) and x.abs().max() <= 2
    again = make_shards(1, m=5, k=3, n=4, seed=7)
    assert torch.equal(again[0], x) and torch.equal(again[1], w)
    assert not torch.equal(make_shards(0, m=5, k=3, n=4, seed=7)[0], x)
    with pytest.raises(ValueError, match="k must be >= 1"):
        make_shards(0, m=5, k=0, n=4, seed=7)
    with pytest.raises(ValueError, match="rank must be >= 0"):
        make_shards(-1, m=5, k=3, n=4, seed=7)
    with pytest.raises(TypeError, match="rank must be an int, got float"):  # a wrong type is a TypeError
        make_shards(1.0, m=5, k=3, n=4, seed=7)


def test_overlap_efficiency_by_hand() -> None:
    # serial 10 = compute 6 + comm 4; overlapped at max(6, 4) = 6 hides all of min = 4
    assert overlap_efficiency(serial=10.0, overlapped=6.0, compute=6.0, comm=4.0) == pytest.approx(1.0)
    assert overlap_efficiency(serial=10.0, overlapped=10.0, compute=6.0, comm=4.0) == 0.0
    assert overlap_efficiency(serial=10.0, overlapped=12.0, compute=6.0, comm=4.0) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="compute must be a positive"):
        overlap_efficiency(serial=10.0, overlapped=6.0, compute=0.0, comm=4.0)


def test_operand_and_link_checks_need_no_process_group() -> None:
    x, w = torch.ones(4, 3), torch.ones(2, 5)
    with pytest.raises(ValueError, match="must agree on K"):
        serial_matmul_all_reduce(x, w)
    with pytest.raises(ValueError, match="must agree on K"):
        overlapped_matmul_all_reduce(x, w, chunks=2)
    with pytest.raises(ValueError, match="chunks=3 must divide"):
        overlapped_matmul_all_reduce(torch.ones(4, 2), w, chunks=3)
    with pytest.raises(TypeError, match="link must be an AlphaBeta"):
        CommEngine(link=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="contiguous"):
        link_all_reduce(torch.ones(4, 4).t(), link=None)


def test_study_rejects_bad_arguments_before_any_collective() -> None:
    links = {"loopback": None}
    with pytest.raises(ValueError, match="world_size must be an int >= 2"):
        overlap_study(0, 1, m=8, k=2, n=2, repeats=1, seed=0, chunk_counts=(2,), links=links)
    with pytest.raises(ValueError, match="chunk_counts must be >= 1"):
        overlap_study(0, 2, m=8, k=2, n=2, repeats=1, seed=0, chunk_counts=(0,), links=links)
    with pytest.raises(ValueError, match="must divide the m=10"):
        overlap_study(0, 2, m=10, k=2, n=2, repeats=1, seed=0, chunk_counts=(4,), links=links)
    with pytest.raises(TypeError, match="links"):
        overlap_study(0, 2, m=8, k=2, n=2, repeats=1, seed=0, chunk_counts=(2,), links={"x": 3})
    with pytest.raises(ValueError, match="world_size must be an int >= 2"):
        overlapped_step(0, 1, m=8, k=2, n=2, repeats=1, seed=0, chunks=2)


# ---------------------------------------------------------------- real processes


@pytest.mark.timeout(90)
def test_study_in_two_processes_is_exact_and_well_formed() -> None:
    link = AlphaBeta(alpha=2e-4, beta=1e-8)
    counts = (1, 2, 4)
    out = launch(overlap_study, 2, timeout=60.0, kwargs=dict(
        **SIZES, repeats=2, chunk_counts=counts, links={"loopback": None, "link": link}))
    expected = _expected(2, **SIZES)
    for rank_result in out:
        assert torch.equal(rank_result["output"], expected)
        assert set(rank_result["modes"]) == {"loopback", "link"}
    for name, mode in out[0]["modes"].items():
        assert mode["exact"] is True
        assert all(mode[key] > 0 for key in ("compute", "comm", "serial"))
        assert list(mode["overlapped"]) == list(counts) and all(t > 0 for t in mode["overlapped"].values())
        assert list(mode["paired_speedup"]) == list(counts) and all(r > 0 for r in mode["paired_speedup"].values())
        assert {e["kind"] for e in mode["serial_events"]} == {"compute", "comm"}
        for c in counts:
            events = mode["events"][c]
            compute = sorted((e for e in events if e["kind"] == "compute"), key=lambda e: e["chunk"])
            comm = sorted((e for e in events if e["kind"] == "comm"), key=lambda e: e["chunk"])
            assert [e["chunk"] for e in compute] == [e["chunk"] for e in comm] == list(range(c))
            assert all(0 <= e["start"] <= e["end"] for e in events)
            # chunk i's communication starts only after chunk i is computed; chunks run in order
            assert all(q["start"] >= p["end"] for p, q in zip(compute, comm))
            assert all(b["start"] >= a["end"] for a, b in zip(compute, compute[1:]))
        if name == "link":  # each chunk is on the modelled wire at least its ring all-reduce time
            chunk_bytes = SIZES["m"] // max(counts) * SIZES["n"] * 4
            floor = collective_time("ring_all_reduce", chunk_bytes, 2, link)
            wire = [e["end"] - e["start"] for e in mode["events"][max(counts)] if e["kind"] == "comm"]
            assert all(t >= floor * 0.999 for t in wire)
            assert mode["comm"] >= collective_time("ring_all_reduce", SIZES["m"] * SIZES["n"] * 4, 2, link) * 0.999


@pytest.mark.timeout(90)
def test_overlapped_step_equals_the_exact_sum() -> None:
    out = launch(overlapped_step, 2, timeout=60.0, kwargs=dict(**SIZES, repeats=2, chunks=8))
    expected = _expected(2, **SIZES)
    for rank_result in out:
        assert torch.equal(rank_result["output"], expected)
        assert len(rank_result["times"]) == 2 and rank_result["median"] > 0
        assert sum(e["kind"] == "comm" for e in rank_result["events"]) == 8


@pytest.mark.timeout(90)
def test_failing_rank_surfaces_cleanly() -> None:
    timeout = 60.0
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(overlap_study, 2, timeout=timeout, kwargs=dict(
            **SIZES, repeats=1, chunk_counts=(2,), links={"loopback": None}, fail_rank=1))
    assert not isinstance(info.value, LaunchTimeout)
    assert info.value.rank == 1
    assert "failed on purpose" in info.value.child_traceback
    assert time.monotonic() - start < timeout / 2  # reported at once, not after the timeout


def test_paired_speedup_is_the_median_of_per_repeat_ratios() -> None:
    """A repeat where the whole machine is slow changes both times alike and so not the ratio."""
    # per repeat: compute, comm, serial, overlapped C=2, overlapped C=4; the last is 10x slower
    rows = [[1.0, 1.0, 2.0, 1.25, 1.6], [1.0, 1.0, 2.2, 1.1, 2.0], [10.0, 10.0, 20.0, 12.5, 16.0]]
    paired = paired_speedups(rows, (2, 4))
    assert paired == {2: pytest.approx(1.6), 4: pytest.approx(1.25)}
    # the ratio of medians would mix repeats: median serial 2.2 / median overlapped 1.25 = 1.76
    with pytest.raises(ValueError, match="rows"):
        paired_speedups([[1.0, 1.0, 2.0]], (2,))

"""labkit.runtime: seeding and timing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from labkit.runtime import (Timing, clock_reader, device_syncer, interleaved_times, one_thread, paired_speedup,
                            seed_everything, time_fn)


def test_seed_makes_runs_repeatable() -> None:
    g = seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    g = seed_everything(3)
    b = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=g))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert not torch.equal(torch.rand(2, generator=seed_everything(4)), a[3])


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("0", TypeError)])
def test_seed_rejects_bad_values(bad, err) -> None:
    with pytest.raises(err, match="seed"):
        seed_everything(bad)


def test_time_fn_counts_calls_and_reports_median() -> None:
    calls = []
    t = time_fn(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and len(t.times) == 4
    assert t.min <= t.median and t.device == "cpu"
    assert "median" in str(t)


def test_timing_median_by_hand() -> None:
    assert Timing(times=(3.0, 1.0, 2.0), device="cpu").median == 2.0


@pytest.mark.parametrize("kw, msg", [(dict(repeats=0), "repeats"), (dict(warmup=-1), "warmup")])
def test_time_fn_rejects_bad_counts(kw, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        time_fn(lambda: None, **kw)


def test_time_fn_needs_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        time_fn(3)  # type: ignore[arg-type]


def test_progress_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.runtime import progress_disabled

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_disabled("ci") and not progress_disabled("default")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_disabled("default")
    with pytest.raises(ValueError, match="tier"):
        progress_disabled("fast")


def test_interleaved_times_runs_round_robin():
    calls: list[str] = []
    out = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(out) == {"a", "b"} and all(len(t.times) == 3 for t in out.values())
    with pytest.raises(ValueError):
        interleaved_times({}, repeats=1)
    with pytest.raises(TypeError):
        interleaved_times({"a": 3}, repeats=1)
    with pytest.raises(ValueError):
        interleaved_times({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError):
        interleaved_times({"a": lambda: None}, repeats=1, clock="sundial")
    with pytest.raises(ValueError):
        interleaved_times({"a": lambda: None}, repeats=1, clock="cpu", device="cuda")


def test_cpu_clock_ignores_sleeping():
    import time

    out = interleaved_times({"sleep": lambda: time.sleep(0.02), "work": lambda: sum(range(200_000))}, repeats=2,
                            warmup=0, clock="cpu")
    wall = interleaved_times({"sleep": lambda: time.sleep(0.02)}, repeats=2, warmup=0)
    assert out["sleep"].median < 0.005 < 0.015 < wall["sleep"].median  # asleep, the thread uses no CPU
    assert out["work"].median > 0


def test_paired_speedup_by_hand():
    base, other = Timing((1.0, 2.0, 3.0), "cpu"), Timing((0.5, 1.0, 3.0), "cpu")
    assert paired_speedup(base, other) == pytest.approx(2.0)  # ratios 2, 2, 1
    with pytest.raises(ValueError):
        paired_speedup(base, Timing((1.0,), "cpu"))
    with pytest.raises(TypeError):
        paired_speedup(base, [1.0, 2.0, 3.0])


def test_clock_reader_and_device_syncer() -> None:
    import time

    assert clock_reader("wall") is time.perf_counter and clock_reader("cpu", "cpu") is time.thread_time
    assert device_syncer("cpu")() is None  # nothing to wait for on the CPU
    with pytest.raises(ValueError, match="clock"):
        clock_reader("sundial")
    with pytest.raises(ValueError, match="clock='cpu'"):
        clock_reader("cpu", "cuda")


def test_one_thread_sets_one_and_restores_even_after_an_error():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with one_thread():
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)

"""Seeding and timing, the same way in every chapter.

Timing follows the usual rules of benchmarking: warm up first, repeat, report the median; on a
GPU use CUDA events around the work (host timers only see the launch). :func:`time_fn` times one
callable; :func:`interleaved_times` times several round-robin, so a load change on a shared
machine hits all of them alike, and :func:`paired_speedup` compares two of them round by round.

Section: chapter 00, "How this book runs"; chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .validation import check_int

__all__ = ["Timing", "clock_reader", "cuda_median_seconds", "device_syncer", "interleaved_times", "one_thread",
           "paired_speedup", "progress_disabled", "seed_everything", "time_fn"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a fresh ``torch.Generator`` for ``seed``.

    Prefer passing the returned generator to sampling calls over relying on global state.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one callable, in seconds."""

    times: tuple[float, ...]
    device: str

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def __str__(self) -> str:
        return f"median {self.median * 1e3:.3f} ms over {len(self.times)} runs on {self.device}"


def time_fn(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    On a CUDA device each run is bracketed by CUDA events (the wall clock of the host would
    only measure the kernel launches); on CPU ``time.perf_counter`` is used.

    Args:
        fn: a zero-argument callable (wrap arguments with a lambda or ``functools.partial``).
        repeats: timed calls (>= 1).
        warmup: untimed calls first (>= 0): compilation, caches, allocator.
        device: where ``fn`` does its work.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(dev)
            times.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in ms
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Timing(times=tuple(times), device=name)


def interleaved_times(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1,
                      device: torch.device | str = "cpu", clock: str = "wall") -> dict[str, Timing]:
    """Time several callables round-robin: round r runs each once, in turn.

    On a shared machine the load drifts; interleaving spreads the drift over every candidate
    instead of favouring whichever ran in a quiet moment. Medians (``Timing.median``) then
    compare candidates fairly.

    ``clock="cpu"`` reads the calling thread's CPU time (``time.thread_time``) instead of the
    wall clock. With one intra-op thread (``torch.set_num_threads(1)``) PyTorch runs every CPU
    operator on the calling thread, so this is the work the candidate did, without the time it
    spent waiting while other processes had the cores: on a busy machine it is far steadier
    than the wall clock, and on an idle one the two agree. Caches still suffer from the
    neighbours, so it is not noise-free. Only meaningful for CPU work with one thread.

    Args:
        fns: name -> zero-argument callable.
        repeats: timed rounds (>= 1).
        warmup: untimed rounds first (>= 0).
        device: where the callables work; on a CUDA device each call is followed by a
            synchronisation, so the host clock sees the kernels finish.
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.thread_time``; CPU only).

    Returns:
        name -> :class:`labkit.Timing` (host wall clock).
    """
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError("fns must be a non-empty mapping name -> callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] must be callable, got {type(fn).__name__}")
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    now = clock_reader(clock, torch.device(device))
    sync = device_syncer(torch.device(device))
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = now()
            fn()
            sync()
            times[name].append(now() - t0)
    where = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else f"cpu ({clock} clock)"
    return {name: Timing(times=tuple(v), device=where) for name, v in times.items()}


_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def clock_reader(clock: str, device: torch.device | str = "cpu") -> Callable[[], float]:
    """The timer behind ``clock``: ``"wall"`` is ``time.perf_counter``, ``"cpu"`` the calling
    thread's CPU time ``time.thread_time`` (CPU work only).

    Raises:
        ValueError: an unknown clock, or ``"cpu"`` for a non-CPU ``device``.
    """
    device = torch.device(device)
    if clock not in _CLOCKS:
        raise ValueError(f"clock must be one of {tuple(_CLOCKS)}, got {clock!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ValueError(f"clock='cpu' measures host CPU time; use clock='wall' for device {device}")
    return _CLOCKS[clock]


def device_syncer(device: torch.device | str = "cpu") -> Callable[[], None]:
    """A call that waits for ``device``'s queued work: ``torch.cuda.synchronize`` on a CUDA device,
    nothing on the CPU (its operators return when done)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def paired_speedup(base: Timing, other: Timing) -> float:
    """Median over rounds of ``base / other`` for two :func:`interleaved_times` results.

    Round r of both ran back to back, under the same load, so their ratio cancels most of a
    shared machine's drift; the median then discards the rounds a burst of load split unevenly.

    Args:
        base: the reference (e.g. plain DDIM).
        other: the candidate; the result is > 1 when it is faster.

    Raises:
        ValueError: different numbers of rounds.
    """
    for name, t in (("base", base), ("other", other)):
        if not isinstance(t, Timing):
            raise TypeError(f"{name} must be a labkit.Timing, got {type(t).__name__}")
    if len(base.times) != len(other.times):
        raise ValueError(f"base and other must have the same rounds, got {len(base.times)} and {len(other.times)}")
    return statistics.median(b / o for b, o in zip(base.times, other.times))


def progress_disabled(tier: str) -> bool:
    """Whether progress bars should stay silent: in the ``ci`` tier (the test suite), and when
    ``TQDM_DISABLE`` is set (the book build: a bar helps a live reader, not a built page)."""
    from .tiers import validate_tier

    return validate_tier(tier) == "ci" or os.environ.get("TQDM_DISABLE", "") not in ("", "0")


def cuda_median_seconds(fn: Callable[[], object]) -> float:
    """Median seconds of a CUDA ``fn`` for the GPU benchmarks, by ``triton.testing.do_bench``.

    One call first compiles and warms up, a second is timed with CUDA events to size the warm-up
    (at least 3 estimated runs, 25 ms) and the measurement (at least 25 estimated runs, 100 ms),
    so short and long kernels both get about 20 or more timed runs; ``do_bench`` clears the L2
    cache between runs and reports milliseconds, converted here.
    """
    import triton.testing

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est_ms = max(start.elapsed_time(end), 1e-3)
    return triton.testing.do_bench(fn, warmup=max(25.0, 3 * est_ms), rep=max(100.0, 25 * est_ms),
                                   return_mode="median") / 1e3


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op PyTorch thread, then restore the previous count.

    For tiny tensors (a client's batch, a rank's few-KiB state) a second thread only adds
    synchronisation, and on a busy machine spin-waiting; one thread is as fast and steadier.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Seeding and timing, the same way in every chapter.

Timing follows the usual rules of benchmarking: warm up first, repeat, report the median; on a
GPU use CUDA events around the work (host timers only see the launch). Taught in chapter 00.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Timing", "cuda_median_seconds", "progress_disabled", "seed_everything", "time_fn"]


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

"""BLOCK_SIZE, measured: the time of one Triton scaled add at each block size.

The launch grid of :mod:`~labkit.intro.grid` says how many programs a block size starts; this
module times them. On a GPU the compiled kernel runs its programs in parallel across the SMs,
so the time stays near the memory-bound floor until the blocks get so small that per-program
work no longer hides the launch and scheduling cost. On a CPU, Triton's interpreter runs the
programs one after another in NumPy, so the time grows with the number of programs: the
measured time per program is the interpreter's fixed cost of one program.

Section: chapter 00, "How this book runs" (the BLOCK_SIZE slider).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..runtime import time_fn
from ..validation import check_int
from .axpy import _check, scaled_add
from .grid import LaunchGrid, launch_grid

__all__ = ["BlockTiming", "time_block_sizes"]


@dataclass(frozen=True)
class BlockTiming:
    """One block size's launch grid and its measured median time per call (seconds)."""

    grid: LaunchGrid
    seconds: float

    @property
    def block_size(self) -> int:
        return self.grid.block_size

    @property
    def per_program(self) -> float:
        """Median seconds per call divided by the number of programs launched."""
        return self.seconds / self.grid.programs

    def describe(self) -> str:
        """Two lines for the page: the grid, then the measured time."""
        g = self.grid
        return (f"{g.n:,} elements with BLOCK_SIZE={g.block_size}: {g.programs} programs; "
                f"the last masks {g.masked_lanes} lanes\n"
                f"measured {_duration(self.seconds)} per call, "
                f"{_duration(self.per_program)} per program")


def _duration(seconds: float) -> str:
    """``seconds`` with three significant digits in s, ms, µs or ns."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def time_block_sizes(x: torch.Tensor, y: torch.Tensor, block_sizes: Sequence[int], *,
                     alpha: float = 1.0, repeats: int = 3, warmup: int = 1) -> list[BlockTiming]:
    """Median time of ``scaled_add(x, y, backend="triton", block_size=B)`` for each ``B``.

    Args:
        x, y: the inputs (same shape, floating dtype and device; CUDA, or CPU tensors with
            ``TRITON_INTERPRET=1`` set before the kernel module was imported).
        block_sizes: powers of two to time, in any order (kept in that order).
        alpha: the scale of ``x``.
        repeats: timed calls per block size (the median is kept).
        warmup: untimed calls first, per block size (a GPU compiles each new block size once).

    Returns:
        One :class:`BlockTiming` per block size.

    Raises:
        TypeError, ValueError: bad tensors (as :func:`~labkit.intro.scaled_add`), an empty
            ``block_sizes``, a block size that is not a positive power of two, or bad counts.
    """
    _check(x, y, alpha)
    if x.numel() == 0:
        raise ValueError("time_block_sizes: x and y must hold at least one element")
    repeats = check_int("repeats", repeats, 1)
    warmup = check_int("warmup", warmup, 0)
    if isinstance(block_sizes, (str, bytes)) or not isinstance(block_sizes, Sequence) or not block_sizes:
        raise ValueError(f"time_block_sizes: block_sizes must be a non-empty sequence of ints, got {block_sizes!r}")
    grids = [launch_grid(x.numel(), block_size=b) for b in block_sizes]  # validates each block size
    out = []
    for g in grids:
        timing = time_fn(lambda: scaled_add(x, y, alpha=alpha, backend="triton", block_size=g.block_size),
                         repeats=repeats, warmup=warmup, device=x.device)
        out.append(BlockTiming(grid=g, seconds=timing.median))
    return out

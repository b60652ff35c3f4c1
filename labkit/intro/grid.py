"""How a 1-D Triton launch covers ``n`` elements: the grid, and the lanes the last block masks.

Section: chapter 00, "How this book runs" (the BLOCK_SIZE slider).
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.validation import check_int

__all__ = ["LaunchGrid", "launch_grid"]


@dataclass(frozen=True)
class LaunchGrid:
    """A 1-D launch: ``programs`` blocks of ``block_size`` lanes over ``n`` elements."""

    n: int
    block_size: int
    programs: int
    masked_lanes: int

    @property
    def wasted_fraction(self) -> float:
        """Share of all launched lanes that the mask switches off."""
        total = self.programs * self.block_size
        return self.masked_lanes / total if total else 0.0


def launch_grid(n: int, *, block_size: int) -> LaunchGrid:
    """Grid of a one-program-per-block kernel: ``ceil(n / block_size)`` programs.

    >>> launch_grid(1000, block_size=256)
    LaunchGrid(n=1000, block_size=256, programs=4, masked_lanes=24)
    """
    n = check_int("n", n, 0)
    block_size = check_int("block_size", block_size, 1)
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a positive power of two, got {block_size}")
    programs = -(-n // block_size)
    return LaunchGrid(n=n, block_size=block_size, programs=programs, masked_lanes=programs * block_size - n)

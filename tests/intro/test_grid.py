"""The launch-grid arithmetic of a 1-D Triton kernel: worked examples, invariants, bad inputs."""

from __future__ import annotations

import pytest

from labkit.intro.grid import LaunchGrid, launch_grid


def test_launch_grid_by_hand() -> None:
    g = launch_grid(1000, block_size=256)  # ceil(1000 / 256) = 4 programs, 4 * 256 - 1000 = 24 idle lanes
    assert g == LaunchGrid(n=1000, block_size=256, programs=4, masked_lanes=24)
    assert g.wasted_fraction == pytest.approx(24 / 1024)
    assert launch_grid(1024, block_size=1024).masked_lanes == 0
    zero = launch_grid(0, block_size=64)
    assert (zero.programs, zero.masked_lanes, zero.wasted_fraction) == (0, 0, 0.0)


@pytest.mark.parametrize("block_size", [1, 2, 64, 1024])
def test_the_grid_just_covers_n(block_size: int) -> None:
    for n in range(0, 3000, 37):
        g = launch_grid(n, block_size=block_size)
        assert g.programs * block_size >= n > (g.programs - 1) * block_size or n == g.programs == 0
        assert 0 <= g.masked_lanes < block_size and g.programs * block_size - g.masked_lanes == n
        assert 0.0 <= g.wasted_fraction < 1.0


@pytest.mark.parametrize("n, block, err, msg", [
    (-1, 64, ValueError, "n must be >= 0"),
    (1.5, 64, TypeError, "n must be an int"),
    (10, 0, ValueError, "block_size must be >= 1"),
    (10, 96, ValueError, "block_size must be a positive power of two, got 96"),
    (10, True, TypeError, "block_size must be an int"),
])
def test_launch_grid_bad_input(n, block, err, msg) -> None:
    with pytest.raises(err, match=msg):
        launch_grid(n, block_size=block)

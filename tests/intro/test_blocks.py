"""labkit.intro.blocks: the scaled add timed at each BLOCK_SIZE (the chapter 00 slider)."""

from __future__ import annotations

import pytest
import torch

from labkit.intro import BlockTiming, launch_grid, time_block_sizes
from labkit.intro.blocks import _duration


def test_timing_by_hand() -> None:
    t = BlockTiming(grid=launch_grid(1000, block_size=256), seconds=0.02)
    assert (t.block_size, t.grid.programs) == (256, 4)
    assert t.per_program == pytest.approx(0.005)  # 20 ms over ceil(1000 / 256) = 4 programs
    first, second = t.describe().splitlines()
    assert first == "1,000 elements with BLOCK_SIZE=256: 4 programs; the last masks 24 lanes"
    assert second == "measured 20 ms per call, 5 ms per program"


@pytest.mark.parametrize("seconds, text", [(2.5, "2.5 s"), (0.0123, "12.3 ms"), (4.56e-5, "45.6 µs"),
                                           (7e-9, "7 ns")])
def test_duration_units(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


@pytest.mark.gpu
def test_every_block_size_is_timed_in_order(triton_kernels, device: str) -> None:
    triton_kernels("labkit.intro._kernels")
    x, y = torch.randn(1000, device=device), torch.randn(1000, device=device)
    timed = time_block_sizes(x, y, [1024, 64, 256], alpha=0.5, repeats=1, warmup=0)
    assert [t.block_size for t in timed] == [1024, 64, 256]
    assert [t.grid.programs for t in timed] == [1, 16, 4]
    assert all(t.seconds > 0 and len(t.describe().splitlines()) == 2 for t in timed)
    assert all(len(line) <= 80 for t in timed for line in t.describe().splitlines())


@pytest.mark.parametrize("blocks, kwargs, err, msg", [
    ([], {}, ValueError, "non-empty sequence"),
    ("64", {}, ValueError, "non-empty sequence"),
    ([96], {}, ValueError, "power of two, got 96"),
    ([64], {"repeats": 0}, ValueError, "repeats must be >= 1"),
    ([64], {"warmup": -1}, ValueError, "warmup must be >= 0"),
    ([64], {"alpha": "2"}, TypeError, "alpha"),
])
def test_bad_input_fails_before_timing(blocks, kwargs: dict, err: type, msg: str) -> None:
    x = torch.ones(10)
    with pytest.raises(err, match=msg):
        time_block_sizes(x, x, blocks, **kwargs)


def test_empty_tensors_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one element"):
        time_block_sizes(torch.ones(0), torch.ones(0), [64])

"""labkit.intro.measured: the GPU run chapter 00 quotes, and its Markdown table."""

from __future__ import annotations

import pytest

from labkit.intro import H200_SCALED_ADD, BenchmarkRow, BenchmarkRun, benchmark_markdown
from labkit.intro.measured import BYTES_PER_ELEMENT


def test_the_rows_agree_with_themselves() -> None:
    """Times are printed to the microsecond, bandwidths to 1 GB/s: the kernel's time implied by
    its bandwidth lies within the rounding of its printed time, and so does eager's implied by
    the speed-up (a typo in the data breaks one of these)."""
    for r in H200_SCALED_ADD.rows:
        ours_ms = BYTES_PER_ELEMENT * r.elements / (r.gbps * 1e9) * 1e3
        assert abs(ours_ms - r.ours_ms) <= 0.0005 + ours_ms * 1e-3, r
        assert abs(r.vs_eager * ours_ms - r.eager_ms) <= 0.0005 + 0.01 * r.eager_ms, r
    assert [r.elements for r in H200_SCALED_ADD.rows] == sorted(r.elements for r in H200_SCALED_ADD.rows)


def test_megabytes_by_hand() -> None:
    assert BenchmarkRow(1_000_000, 1, 1, 1, 1, 1, 1).megabytes == pytest.approx(12.0)  # 12 B per element


def test_markdown_table() -> None:
    run = BenchmarkRun("GPU", 40, "torch x", "2026-01-01",
                       (BenchmarkRow(1024, 0.0104, 0.008, 0.0075, 1.39, 1638, 0.981),))
    lines = benchmark_markdown(run).splitlines()
    assert len(lines) == 3 and lines[1].startswith("| ---:")
    assert lines[2] == "| 1,024 | 0.010 ms | 0.008 ms | 0.007 ms | 1.39x | 1,638 | 98% |"
    assert all(len(line) <= 80 for line in benchmark_markdown(H200_SCALED_ADD).splitlines())


def test_markdown_needs_a_run() -> None:
    with pytest.raises(TypeError, match="BenchmarkRun"):
        benchmark_markdown([("1", 2)])  # type: ignore[arg-type]

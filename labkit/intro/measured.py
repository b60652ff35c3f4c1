"""A GPU measurement of the scaled add, kept as data so the page quotes it from one place.

``benchmarks/intro_scaled_add.py`` prints, for each size, the median time of eager
``alpha * x + y`` (the anchor), of ``torch.add(y, x, alpha=a)`` (PyTorch's own fused axpy) and of
the Triton kernel, the kernel's effective bandwidth and its fraction of a device-to-device copy
measured in the same run. :data:`H200_SCALED_ADD` holds one such run as printed (times rounded to
the microsecond, the ratio and fractions computed by the script from unrounded times). The page
renders it with :func:`benchmark_markdown` and computes every ratio its prose quotes from it.

Section: chapter 00, "How this book runs" (the GPU measurement).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BenchmarkRow", "BenchmarkRun", "H200_SCALED_ADD", "benchmark_markdown"]

BYTES_PER_ELEMENT = 12  # float32: read x, read y, write out


@dataclass(frozen=True)
class BenchmarkRow:
    """One size of a run: times in milliseconds as printed, the script's ratio and fractions."""

    elements: int
    eager_ms: float
    add_ms: float
    ours_ms: float
    vs_eager: float  # eager time / ours, from unrounded times
    gbps: float  # ours: BYTES_PER_ELEMENT * elements / time, GB/s
    of_copy: float  # ours' bandwidth / the copy's, same run

    @property
    def megabytes(self) -> float:
        """Bytes the kernel reads and writes, in MB (10^6)."""
        return BYTES_PER_ELEMENT * self.elements / 1e6


@dataclass(frozen=True)
class BenchmarkRun:
    """A benchmark run: the card, its L2 cache, the software, the date, one row per size."""

    device: str
    l2_mb: int
    software: str
    date: str
    rows: tuple[BenchmarkRow, ...]


#: One run of ``benchmarks/intro_scaled_add.py`` on an H200 SXM, whose L2 cache holds 50 MB (the
#: full GH100 die has 60 MB; the H100 and H200 SXM products enable 50 MB of it).
H200_SCALED_ADD = BenchmarkRun(
    device="NVIDIA H200",
    l2_mb=50,
    software="torch 2.11.0+cu130, triton 3.6.0",
    date="2026-11-26",
    rows=(
        BenchmarkRow(1_048_576, 0.012, 0.008, 0.008, vs_eager=1.44, gbps=1501, of_copy=1.17),
        BenchmarkRow(16_777_216, 0.087, 0.053, 0.052, vs_eager=1.67, gbps=3841, of_copy=1.03),
        BenchmarkRow(268_435_456, 1.246, 0.741, 0.741, vs_eager=1.68, gbps=4348, of_copy=1.03),
    ),
)


def benchmark_markdown(run: BenchmarkRun) -> str:
    """The run as a Markdown table (one line per size, about 80 characters wide)."""
    if not isinstance(run, BenchmarkRun):
        raise TypeError(f"benchmark_markdown: run must be a BenchmarkRun, got {type(run).__name__}")
    lines = ["| elements | eager | `torch.add` | Triton | vs eager | GB/s | of copy |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.elements:,} | {r.eager_ms:.3f} ms | {r.add_ms:.3f} ms | {r.ours_ms:.3f} ms "
              f"| {r.vs_eager:.2f}x | {r.gbps:,.0f} | {r.of_copy:.0%} |" for r in run.rows]
    return "\n".join(lines)

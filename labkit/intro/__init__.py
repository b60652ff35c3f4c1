"""The small ops of chapter 00, "How this book runs", that show how the book's machinery works
(no paper of the list):

- :mod:`~labkit.intro.axpy`: a fused scaled add, reference and Triton, behind the dispatcher;
- :mod:`~labkit.intro.grid`: how a 1-D Triton launch covers ``n`` elements;
- :mod:`~labkit.intro.blocks`: the kernel timed at each ``BLOCK_SIZE`` (the page's slider);
- :mod:`~labkit.intro.measured`: a GPU benchmark run, kept as data the page quotes.
"""

from .axpy import scaled_add, scaled_add_reference
from .blocks import BlockTiming, time_block_sizes
from .grid import LaunchGrid, launch_grid
from .measured import H200_SCALED_ADD, BenchmarkRow, BenchmarkRun, benchmark_markdown

__all__ = [
    "H200_SCALED_ADD",
    "BenchmarkRow",
    "BenchmarkRun",
    "BlockTiming",
    "LaunchGrid",
    "benchmark_markdown",
    "launch_grid",
    "scaled_add",
    "scaled_add_reference",
    "time_block_sizes",
]

"""A measured SpMM benchmark run, kept as data, and the helpers the SpMM page times with.

``benchmarks/graphs_spmm.py`` times, on one GPU, ``torch.sparse.mm`` (cuSPARSE), gather +
``index_add_``, PyG's ``scatter`` and the Triton kernel of :mod:`labkit.graphs._kernels` on a
uniform and a power-law graph, after checking the kernel against the reference.
:data:`H200_SPMM` holds one run as the script printed it (milliseconds rounded as printed, the
fraction of a copy's bandwidth as the script computed it); the page renders it with
:func:`spmm_benchmark_markdown` and computes every ratio its prose quotes from it.
:func:`gather_index_add` is the textbook scatter the ``gpu`` tier times against.

Section: chapter 01, "Message passing is a sparse matrix product".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["H200_SPMM", "SpmmRow", "SpmmRun", "gather_index_add", "spmm_benchmark_markdown"]


@dataclass(frozen=True)
class SpmmRow:
    """One graph and feature width F of a run; times in milliseconds (medians)."""

    graph: str
    features: int
    cusparse_ms: float
    index_add_ms: float
    pyg_ms: float
    ours_ms: float
    of_copy: float  # the kernel's bandwidth (gather model) over a device-to-device copy's

    @property
    def vs_cusparse(self) -> float:
        """Speed-up of the Triton kernel over ``torch.sparse.mm``."""
        return self.cusparse_ms / self.ours_ms

    @property
    def vs_index_add(self) -> float:
        """Speed-up of the Triton kernel over gather + ``index_add_``."""
        return self.index_add_ms / self.ours_ms


@dataclass(frozen=True)
class SpmmRun:
    """A benchmark run: card, software, date, graph size and the rows, plus the side results.

    Attributes:
        copy_tbps: device-to-device copy bandwidth measured in the run (TB/s).
        largest_row, top100_share: the power-law graph's longest row (nonzeros) and the share
            of all nonzeros in its 100 longest rows.
        unsplit_ms: the power-law graph at F=64 with row splitting off (one program per row).
        plan_ms: building the work list (``row_chunks``), per graph kind.
    """

    device: str
    software: str
    date: str
    nodes: int
    nonzeros: int
    copy_tbps: float
    largest_row: int
    top100_share: float
    unsplit_ms: float
    plan_ms: dict[str, float]
    rows: tuple[SpmmRow, ...]

    def row(self, graph: str, features: int) -> SpmmRow:
        """The row of one graph kind and width."""
        for r in self.rows:
            if (r.graph, r.features) == (graph, features):
                return r
        raise ValueError(f"no row for graph={graph!r}, features={features}")


H200_SPMM = SpmmRun(
    device="NVIDIA H200",
    software="torch 2.11.0+cu130, triton 3.6.0",
    date="2026-11-26",
    nodes=1_000_000,
    nonzeros=16_000_000,
    copy_tbps=4.2,
    largest_row=1_000_000,
    top100_share=0.35,
    unsplit_ms=79.0,
    plan_ms={"uniform": 0.13, "power-law": 0.37},
    rows=(
        SpmmRow("uniform", 64, 1.838, 20.13, 15.59, 1.565, 0.69),
        SpmmRow("uniform", 256, 5.237, 64.40, 32.96, 5.762, 0.72),
        SpmmRow("power-law", 64, 2.227, 25.90, 41.20, 1.776, 0.61),
        SpmmRow("power-law", 256, 6.140, 75.82, 97.74, 6.491, 0.64),
    ),
)


def spmm_benchmark_markdown(run: SpmmRun) -> str:
    """The run's rows as a Markdown table (times in ms, speed-ups of the Triton kernel)."""
    if not isinstance(run, SpmmRun):
        raise TypeError(f"spmm_benchmark_markdown: run must be a SpmmRun, got {type(run).__name__}")
    lines = ["| graph | F | cuSPARSE | `index_add_` | PyG | Triton | vs cuSPARSE"
             " | vs `index_add_` | of copy |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in run.rows:
        lines.append(f"| {r.graph} | {r.features} | {r.cusparse_ms:.3f} | {r.index_add_ms:.2f}"
                     f" | {r.pyg_ms:.2f} | {r.ours_ms:.3f} | {r.vs_cusparse:.2f}x"
                     f" | {r.vs_index_add:.1f}x | {r.of_copy:.0%} |")
    return "\n".join(lines)


def gather_index_add(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adj @ x`` as the textbook scatter: gather every nonzero's message, ``index_add_`` it.

    Args:
        adj: (N, N_src) sparse CSR matrix; x: (N_src, F) dense features.

    Returns:
        (N, F) float32 (the messages are summed into a zero-filled float32 output).
    """
    if not isinstance(adj, torch.Tensor) or adj.layout != torch.sparse_csr:
        raise TypeError(f"adj must be a sparse CSR tensor, got {getattr(adj, 'layout', type(adj))}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != adj.shape[1]:
        raise ValueError(f"x must be ({adj.shape[1]}, F), got {tuple(getattr(x, 'shape', ()))}")
    ptr = adj.crow_indices()
    rows = torch.repeat_interleave(torch.arange(adj.shape[0], device=x.device), ptr.diff())  # (M,)
    messages = x[adj.col_indices()].float() * adj.values().float().unsqueeze(1)  # (M, F)
    out = torch.zeros(adj.shape[0], x.shape[1], device=x.device)
    return out.index_add_(0, rows, messages)

"""labkit.graphs.spmm_measured: the kept benchmark run, its table, the scatter baseline."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs import to_csr
from labkit.graphs.spmm_measured import H200_SPMM, SpmmRow, gather_index_add, spmm_benchmark_markdown


def test_ratios_by_hand() -> None:
    row = SpmmRow("uniform", 64, cusparse_ms=2.0, index_add_ms=20.0, pyg_ms=15.0, ours_ms=1.6, of_copy=0.7)
    assert row.vs_cusparse == pytest.approx(1.25) and row.vs_index_add == pytest.approx(12.5)


def test_table_has_one_line_per_row_and_the_printed_ratio() -> None:
    table = spmm_benchmark_markdown(H200_SPMM).splitlines()
    assert len(table) == 2 + len(H200_SPMM.rows)
    # uniform F=64: 1.838 / 1.565 = 1.17x cuSPARSE, 20.13 / 1.565 = 12.9x index_add_
    assert "| uniform | 64 |" in table[2] and "1.17x" in table[2] and "12.9x" in table[2]
    assert H200_SPMM.row("power-law", 256).ours_ms == 6.491
    with pytest.raises(ValueError, match="no row"):
        H200_SPMM.row("uniform", 128)
    with pytest.raises(TypeError, match="SpmmRun"):
        spmm_benchmark_markdown(H200_SPMM.rows[0])


def test_gather_index_add_equals_the_dense_product() -> None:
    # a 3-node path 0 - 1 - 2 with weights: row 1 sums 2 * x[0] + 3 * x[2]
    ei = torch.tensor([[0, 2, 1, 1], [1, 1, 0, 2]])
    adj = to_csr(ei, 3, torch.tensor([2.0, 3.0, 1.0, 1.0]))
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    out = gather_index_add(adj, x)
    torch.testing.assert_close(out, adj.to_dense() @ x)
    torch.testing.assert_close(out[1], 2 * x[0] + 3 * x[2])
    with pytest.raises(TypeError, match="sparse CSR"):
        gather_index_add(adj.to_dense(), x)
    with pytest.raises(ValueError, match="x must be"):
        gather_index_add(adj, x[:2])

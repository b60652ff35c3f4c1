"""Random sparse matrices for the SpMM timings: a worked example, the CSR invariants, the power
law's heavy rows, and bad inputs."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.random_graphs import power_law_csr, uniform_csr


def row_counts(a: torch.Tensor) -> torch.Tensor:
    return a.crow_indices().diff()


def test_one_node_by_hand() -> None:
    # n = 1: every one of the m positions is (0, 0); the pairs stay three separate entries
    a = uniform_csr(1, 3, seed=5)
    assert a.layout == torch.sparse_csr and a.shape == (1, 1) and a.dtype == torch.float32
    assert a.crow_indices().tolist() == [0, 3] and a.col_indices().tolist() == [0, 0, 0]
    assert a.to_dense().item() == pytest.approx(float(a.values().sum()))  # duplicates add up
    empty = power_law_csr(4, 0)
    assert empty.crow_indices().tolist() == [0, 0, 0, 0, 0] and empty.values().numel() == 0


@pytest.mark.parametrize("make", [uniform_csr, power_law_csr])
def test_csr_invariants_and_seeds(make) -> None:
    n, m = 37, 500
    a = make(n, m, seed=1)
    crow, cols, vals = a.crow_indices(), a.col_indices(), a.values()
    assert crow[0] == 0 and crow[-1] == m and bool((crow.diff() >= 0).all())
    assert cols.numel() == m and int(cols.min()) >= 0 and int(cols.max()) < n
    for r in range(n):  # columns sorted within each row
        row = cols[crow[r]:crow[r + 1]]
        assert bool((row.diff() >= 0).all())
    assert bool((vals >= 0).all()) and bool((vals < 1).all())
    again = make(n, m, seed=1)
    assert torch.equal(again.col_indices(), cols) and torch.equal(again.values(), vals)
    assert not torch.equal(make(n, m, seed=2).col_indices(), cols)


def test_power_law_rows_are_heavy_tailed_and_exponent_zero_is_uniform_in_law() -> None:
    n, m = 1000, 20_000
    uniform, heavy = row_counts(uniform_csr(n, m)), row_counts(power_law_csr(n, m, exponent=1.0))
    # the busiest Zipf row (rank 1) holds about 1 / H_1000 = 13 % of the entries; a uniform row 0.1 %
    assert int(heavy.max()) > 0.08 * m and int(uniform.max()) < 0.005 * m
    flat = row_counts(power_law_csr(n, m, exponent=0.0))
    assert int(flat.max()) < 0.005 * m  # exponent 0: every row equally likely


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        uniform_csr(0, 3)
    with pytest.raises(TypeError, match="n must be an int"):
        uniform_csr(4.0, 3)
    with pytest.raises(ValueError, match="m must be >= 0"):
        power_law_csr(4, -1)
    with pytest.raises(TypeError, match="m must be an int"):
        power_law_csr(4, True)
    with pytest.raises(ValueError, match="exponent must be >= 0"):
        power_law_csr(4, 3, exponent=-0.5)
    with pytest.raises(TypeError, match="exponent must be a real number"):
        power_law_csr(4, 3, exponent="1")

"""labkit.graphs.sparse reference path: SpMM as message passing, segment sums and means."""

from __future__ import annotations

import pytest
import torch

from labkit.graphs.sparse import (
    row_chunks,
    segment_mean,
    segment_mean_reference,
    segment_sum,
    segment_sum_reference,
    spmm,
    spmm_reference,
)
from labkit.testing import assert_close


def random_csr(n: int, n_src: int, density: float, *, seed: int, dtype=torch.float32) -> torch.Tensor:
    """A random (n, n_src) CSR matrix; rows left empty by chance stay empty."""
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(n, n_src, generator=g) < density) * torch.randn(n, n_src, generator=g)
    return dense.to(dtype).to_sparse_csr()


def test_spmm_by_hand() -> None:
    # row 0 receives 2 * x[1]; row 1 receives x[0] + 3 * x[2]; row 2 receives nothing
    adj = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [0.0, 0.0, 0.0]]).to_sparse_csr()
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    expected = torch.tensor([[4.0, 40.0], [10.0, 100.0], [0.0, 0.0]])
    assert torch.equal(spmm_reference(adj, x), expected)
    assert torch.equal(spmm(adj, x, backend="reference"), expected)


def test_segment_sum_and_mean_by_hand() -> None:
    src = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    ptr = torch.tensor([0, 2, 2, 5])  # segments [1, 2], [], [3, 4, 5]
    assert torch.equal(segment_sum_reference(src, ptr), torch.tensor([[3.0], [0.0], [12.0]]))
    assert torch.equal(segment_mean_reference(src, ptr), torch.tensor([[1.5], [0.0], [4.0]]))


@pytest.mark.parametrize("n, n_src, density, f", [(50, 50, 0.1, 8), (37, 61, 0.05, 53), (64, 20, 0.5, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_spmm_matches_torch_sparse_mm_and_dense(n: int, n_src: int, density: float, f: int, seed: int) -> None:
    adj = random_csr(n, n_src, density, seed=seed)
    x = torch.randn(n_src, f, generator=torch.Generator().manual_seed(seed + 100))
    out = spmm_reference(adj, x)
    assert out.shape == (n, f) and out.dtype == x.dtype
    assert_close(out, torch.sparse.mm(adj, x))
    assert_close(out, adj.to_dense() @ x)


def test_spmm_half_precision_accumulates_in_float32() -> None:
    adj = random_csr(40, 40, 0.2, seed=3)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(4))
    out = spmm_reference(adj.to(torch.bfloat16), x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    expected = adj.to(torch.bfloat16).to(torch.float32).to_dense() @ x.to(torch.bfloat16).float()
    assert_close(out, expected.to(torch.bfloat16))


def test_segment_mean_of_constant_rows_is_the_constant() -> None:
    lengths = torch.tensor([3, 0, 1, 7, 0, 2])
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    values = torch.arange(6, dtype=torch.float32) - 2.5  # segment i holds copies of values[i]
    src = torch.repeat_interleave(values, lengths)[:, None].expand(-1, 4).contiguous()  # (13, 4)
    mean = segment_mean(src, ptr, backend="reference")
    expected = torch.where(lengths[:, None] > 0, values[:, None], 0.0).expand(-1, 4)
    assert_close(mean, expected)
    assert_close(segment_sum(src, ptr, backend="reference"), expected * lengths[:, None])


def test_empty_rows_and_empty_matrix_give_zeros() -> None:
    adj = torch.zeros(4, 3).to_sparse_csr()  # no nonzeros at all
    assert torch.equal(spmm_reference(adj, torch.randn(3, 5)), torch.zeros(4, 5))
    ptr = torch.zeros(4, dtype=torch.int64)  # three empty segments of an empty src
    assert torch.equal(segment_mean_reference(torch.empty(0, 2), ptr), torch.zeros(3, 2))


def test_row_chunks_by_hand() -> None:
    ptr = torch.tensor([0, 5, 5, 6, 17])  # row lengths 5, 0, 1, 11
    plan = row_chunks(ptr, chunk_nnz=4)
    assert plan.split_rows.tolist() == [0, 3]
    assert plan.extra_row.tolist() == [0, 3, 3]  # row 0: 4..5; row 3: 10..14, 14..17
    assert plan.extra_start.tolist() == [4, 10, 14]
    assert plan.n_programs == 4 + 3
    assert row_chunks(ptr, chunk_nnz=11).extra_row.numel() == 0


def test_row_chunks_cover_every_nonzero_once() -> None:
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 40, (30,), generator=g)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    plan = row_chunks(ptr, chunk_nnz=7)
    starts = torch.cat([ptr[:-1], plan.extra_start])
    rows = torch.cat([torch.arange(30), plan.extra_row.long()])
    ends = torch.minimum(starts + 7, ptr[rows + 1])
    covered = torch.zeros(int(ptr[-1]), dtype=torch.int64)
    for s, e in zip(starts.tolist(), ends.tolist()):
        covered[s:e] += 1
    assert torch.equal(covered, torch.ones_like(covered))


def _dense() -> torch.Tensor:
    return torch.tensor([[0.0, 1.0], [2.0, 0.0]])


@pytest.mark.parametrize("adj, x, err, msg", [
    (_dense(), torch.ones(2, 3), TypeError, r"expected a torch.sparse_csr tensor; convert with .to_sparse_csr\(\)"),
    (_dense().to_sparse(), torch.ones(2, 3), TypeError, "sparse_coo.*expected a torch.sparse_csr"),
    (_dense().to_sparse_csc(), torch.ones(2, 3), TypeError, "sparse_csc.*expected a torch.sparse_csr"),
    (_dense().to_sparse_csr(), torch.ones(3, 3), ValueError, r"adj.shape\[1\] \(2\) must equal x.shape\[0\] \(3\)"),
    (_dense().to_sparse_csr(), torch.ones(2, 3, dtype=torch.float64), TypeError, "one floating dtype"),
    (_dense().to_sparse_csr(), torch.ones(2), ValueError, "x must be 2-D"),
    (_dense().to_sparse_csr(), torch.ones(2, 3, device="meta"), ValueError, "one device"),
    ("adj", torch.ones(2, 3), TypeError, "adj must be a tensor"),
    (_dense().to_sparse_csr(), [[1.0]], TypeError, "x must be a tensor"),
])
def test_spmm_bad_inputs(adj, x, err, msg) -> None:
    with pytest.raises(err, match=msg):
        spmm_reference(adj, x)


@pytest.mark.parametrize("src, ptr, err, msg", [
    (torch.ones(3, 2), torch.tensor([0.0, 3.0]), TypeError, "ptr must be int64"),
    (torch.ones(3, 2), torch.tensor([0, 3], dtype=torch.int32), TypeError, "ptr must be int64"),
    (torch.ones(3, 2), torch.tensor([[0, 3]]), ValueError, "ptr must be 1-D"),
    (torch.ones(3, 2), torch.tensor([0, 2, 1, 3]), ValueError, "non-decreasing"),
    (torch.ones(3, 2), torch.tensor([0, 2]), ValueError, r"end at 3.*ptr\[-1\] = 2"),
    (torch.ones(3, 2), torch.tensor([1, 3]), ValueError, "start at 0"),
    (torch.ones(3), torch.tensor([0, 3]), ValueError, "src must be 2-D"),
    (torch.ones(3, 2, dtype=torch.int64), torch.tensor([0, 3]), TypeError, "src must be a floating"),
    (torch.ones(3, 2, device="meta"), torch.tensor([0, 3]), ValueError, "one device"),
])
def test_segment_bad_inputs(src, ptr, err, msg) -> None:
    for op in (segment_sum_reference, segment_mean_reference):
        with pytest.raises(err, match=msg):
            op(src, ptr)


def malformed_csr(ptr: list[int], col: list[int], n_cols: int) -> torch.Tensor:
    """A CSR matrix built without torch's invariant checks, as a corrupted or hand-made one arrives."""
    return torch.sparse_csr_tensor(torch.tensor(ptr), torch.tensor(col), torch.arange(1.0, len(col) + 1),
                                   size=(len(ptr) - 1, n_cols), check_invariants=False)


#: (row offsets, columns, N_src, the error every SpMM path must raise)
MALFORMED_CSR = {
    "column_past_the_end": ([0, 1, 3], [0, 5, 1], 3,
                            r"spmm: adj.col_indices\(\) must lie in \[0, 3\) \(the columns of adj\); "
                            r"1 of 3 do not \(min 0, max 5\)"),
    "negative_column": ([0, 2, 3], [0, -1, 2], 3, r"adj.col_indices\(\) must lie in \[0, 3\).*min -1, max 2"),
    "decreasing_offsets": ([0, 2, 1, 3], [0, 1, 2], 3,
                           r"spmm: adj.crow_indices\(\) must be non-decreasing; it decreases 1 time\(s\), "
                           r"first from row 1 to row 2"),
    "offsets_not_from_0": ([1, 2, 3], [0, 1, 2], 3, r"spmm: adj.crow_indices\(\) must start at 0, got 1"),
    "offsets_short_of_nnz": ([0, 1, 2], [0, 1, 2], 3,
                             r"spmm: adj.crow_indices\(\) must end at 3 \(the number of nonzeros\), got 2"),
}


@pytest.mark.parametrize("case", list(MALFORMED_CSR))
def test_spmm_reference_rejects_a_malformed_csr(case: str) -> None:
    ptr, col, n_cols, msg = MALFORMED_CSR[case]
    with pytest.raises(ValueError, match=msg):
        spmm_reference(malformed_csr(ptr, col, n_cols), torch.ones(n_cols, 2))


def test_row_chunks_checks_offsets_and_optionally_columns() -> None:
    with pytest.raises(ValueError, match="row_chunks: ptr must be non-decreasing"):
        row_chunks(torch.tensor([0, 2, 1, 3]))
    with pytest.raises(ValueError, match="row_chunks: ptr must start at 0, got 1"):
        row_chunks(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="row_chunks: ptr must be an integer tensor"):
        row_chunks(torch.tensor([0.0, 1.0]))
    ptr, col = torch.tensor([0, 1, 3]), torch.tensor([0, 5, 1])
    assert row_chunks(ptr).nnz == 3  # without columns only the offsets are checked
    with pytest.raises(ValueError, match=r"row_chunks: col must lie in \[0, 3\)"):
        row_chunks(ptr, col=col, n_cols=3)
    with pytest.raises(ValueError, match="row_chunks: pass n_cols with col"):
        row_chunks(ptr, col=col)
    with pytest.raises(ValueError, match=r"row_chunks: ptr must end at 2 \(the number of nonzeros\), got 3"):
        row_chunks(ptr, col=col[:2], n_cols=8)
    checked, unchecked = row_chunks(ptr, col=col, n_cols=6, chunk_nnz=1), row_chunks(ptr, chunk_nnz=1)
    for name in ("split_rows", "extra_row", "extra_start"):  # the same work list either way
        assert torch.equal(getattr(checked, name), getattr(unchecked, name))


def test_row_chunks_bad_chunk() -> None:
    with pytest.raises(ValueError, match="chunk_nnz"):
        row_chunks(torch.tensor([0, 3]), chunk_nnz=0)

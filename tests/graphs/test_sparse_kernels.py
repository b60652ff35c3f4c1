"""labkit.graphs._kernels: Triton SpMM and segment reductions against the reference.

Compiled on a GPU, under TRITON_INTERPRET=1 on CPU (10^4-10^5 times slower), so the inputs stay
at a few hundred nonzeros, and most tests use a small tile (``block_k=8``: the interpreter sums a
tile element by element); ``chunk_nnz`` is set small where a test needs split rows.
"""

from __future__ import annotations

import pytest
import torch

from labkit.graphs import sparse
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
from tests.graphs.test_sparse import MALFORMED_CSR, malformed_csr

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.graphs._kernels"


def csr_from_lengths(lengths: list[int], n_src: int, *, seed: int, dtype=torch.float32) -> torch.Tensor:
    """A CSR matrix whose row i has lengths[i] distinct random columns and random values."""
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randperm(n_src, generator=g)[:k].sort().values for k in lengths]
    col = torch.cat(cols) if cols else torch.empty(0, dtype=torch.int64)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int64).cumsum(0)])
    val = torch.randn(col.numel(), generator=g).to(dtype)
    return torch.sparse_csr_tensor(ptr, col, val, size=(len(lengths), n_src), check_invariants=False)


def poison_allocator(shape: tuple[int, int], device: str) -> None:
    """Free a NaN block of the output's size first: the allocator is then likely to hand it back,
    so a row the kernel forgets to write shows up as NaN instead of a lucky zero."""
    block = torch.full(shape, float("nan"), device=device)
    del block


def lengths_for(case: str) -> tuple[list[int], int, int, int]:
    """(row lengths, N_src, F, chunk_nnz) of each awkward case."""
    g = torch.Generator().manual_seed(1)
    if case == "awkward_37x53":  # F not a multiple of the block, some empty rows
        lengths = torch.randint(0, 12, (37,), generator=g)
        lengths[[3, 17, 36]] = 0
        return lengths.tolist(), 41, 53, 8
    if case == "hub_row":  # one row holds most nonzeros and is split into many chunks
        lengths = [2, 0, 1, 300, 3, 0, 1]
        return lengths, 320, 24, 32
    if case == "hub_row_default_chunk":  # longer than the default chunk of 256
        return [1, 290, 0, 2], 300, 8, 256
    if case == "single_row":
        return [9], 9, 33, 4
    if case == "one_feature":
        return torch.randint(0, 6, (20,), generator=g).tolist(), 15, 1, 3
    if case == "empty_matrix":  # no nonzeros at all
        return [0, 0, 0, 0, 0], 6, 7, 4
    if case == "wide_features":  # F > 128: two feature blocks
        return [3, 0, 5, 2], 7, 200, 2
    raise ValueError(case)


CASES = ["awkward_37x53", "hub_row", "hub_row_default_chunk", "single_row", "one_feature", "empty_matrix",
         "wide_features"]


@pytest.mark.parametrize("case", CASES)
def test_spmm_triton_matches_reference(triton_kernels, device: str, case: str) -> None:
    kernels = triton_kernels(KERNELS)
    lengths, n_src, f, chunk = lengths_for(case)
    adj = csr_from_lengths(lengths, n_src, seed=2).to(device)
    x = torch.randn(n_src, f, generator=torch.Generator().manual_seed(3)).to(device)
    poison_allocator((len(lengths), f), device)
    out = kernels.spmm_triton(adj, x, chunk_nnz=chunk, block_k=8)
    assert out.shape == (len(lengths), f) and out.dtype == x.dtype
    assert_close(out, spmm_reference(adj, x), backend="triton")
    assert_close(out, torch.sparse.mm(adj.cpu(), x.cpu()), backend="triton")


@pytest.mark.parametrize("case", ["awkward_37x53", "hub_row", "empty_matrix"])
@pytest.mark.parametrize("mean", [False, True])
def test_segment_triton_matches_reference(triton_kernels, device: str, case: str, mean: bool) -> None:
    kernels = triton_kernels(KERNELS)
    lengths, _, f, chunk = lengths_for(case)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(lengths).cumsum(0)]).to(device)
    src = torch.randn(sum(lengths), f, generator=torch.Generator().manual_seed(4)).to(device)
    triton_op = kernels.segment_mean_triton if mean else kernels.segment_sum_triton
    reference = segment_mean_reference if mean else segment_sum_reference
    poison_allocator((len(lengths), f), device)
    assert_close(triton_op(src, ptr, chunk_nnz=chunk, block_k=8), reference(src, ptr), backend="triton")


def test_triton_through_the_dispatcher(triton_kernels, device: str) -> None:
    triton_kernels(KERNELS)  # default knobs: chunk_nnz=256 splits the hub row in two
    lengths, n_src, f, _ = lengths_for("hub_row")
    adj = csr_from_lengths(lengths, n_src, seed=5).to(device)
    x = torch.randn(f, n_src, device=device).t()  # a transposed, non-contiguous (N_src, F) view
    assert_close(spmm(adj, x, backend="triton"), spmm_reference(adj, x), backend="triton")
    ptr, src = adj.crow_indices(), x[adj.col_indices()]
    assert_close(segment_sum(src, ptr, backend="triton"), segment_sum_reference(src, ptr), backend="triton")
    assert_close(segment_mean(src, ptr, backend="triton"), segment_mean_reference(src, ptr), backend="triton")


def test_triton_reuses_a_plan_and_rejects_a_foreign_one(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    lengths, n_src, f, _ = lengths_for("hub_row")
    adj = csr_from_lengths(lengths, n_src, seed=6).to(device)
    x = torch.randn(n_src, f, device=device)
    plan = row_chunks(adj.crow_indices(), chunk_nnz=64)
    assert plan.split_rows.tolist() == [3] and plan.extra_row.numel() == 4  # 300 nonzeros = 5 chunks
    assert_close(kernels.spmm_triton(adj, x, plan=plan, block_k=8), spmm_reference(adj, x), backend="triton")
    other = row_chunks(torch.tensor([0, 1, 2], device=device), chunk_nnz=64)
    with pytest.raises(ValueError, match="plan must be the RowChunks"):
        kernels.spmm_triton(adj, x, plan=other)


def test_triton_half_precision(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    lengths, n_src, f, chunk = lengths_for("hub_row")
    adj = csr_from_lengths(lengths, n_src, seed=7, dtype=torch.float16).to(device)
    x = torch.randn(n_src, f, generator=torch.Generator().manual_seed(8)).to(torch.float16).to(device)
    out = kernels.spmm_triton(adj, x, chunk_nnz=chunk, block_k=8)
    assert out.dtype == torch.float16
    assert_close(out, spmm_reference(adj, x), backend="triton")


def test_triton_rejects_bad_inputs(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    adj = csr_from_lengths([1, 2], 3, seed=9).to(device)
    x = torch.ones(3, 4, device=device)
    with pytest.raises(TypeError, match="expected a torch.sparse_csr tensor"):
        kernels.spmm_triton(adj.to_dense(), x)
    with pytest.raises(ValueError, match="power of two"):
        kernels.spmm_triton(adj, x, block_k=12)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.spmm_triton(adj.to(torch.float64), x.double())
    with pytest.raises(ValueError, match="non-decreasing"):
        kernels.segment_sum_triton(torch.ones(3, 2, device=device), torch.tensor([0, 2, 1, 3], device=device))


@pytest.mark.parametrize("case", list(MALFORMED_CSR))
def test_triton_rejects_a_malformed_csr_like_the_reference(triton_kernels, device: str, case: str) -> None:
    kernels = triton_kernels(KERNELS)
    ptr, col, n_cols, msg = MALFORMED_CSR[case]
    adj, x = malformed_csr(ptr, col, n_cols).to(device), torch.ones(n_cols, 4, device=device)
    with pytest.raises(ValueError, match=msg):
        spmm_reference(adj, x)
    with pytest.raises(ValueError, match=msg):  # the work list is built, and the matrix checked, in the call
        kernels.spmm_triton(adj, x, block_k=8)
    with pytest.raises(ValueError, match=msg):
        spmm(adj, x, backend="triton")
    if case.startswith(("column", "negative")):  # offsets fine: a plan built from them alone checks at first use
        plan = row_chunks(adj.crow_indices())
        with pytest.raises(ValueError, match=msg):
            kernels.spmm_triton(adj, x, plan=plan, block_k=8)


def test_triton_checks_each_matrix_once_per_plan(triton_kernels, device: str, monkeypatch) -> None:
    kernels = triton_kernels(KERNELS)
    checks: list[str] = []
    real_check = sparse._check_csr

    def counting_check(*args, **kwargs):
        checks.append(kwargs["op"])
        return real_check(*args, **kwargs)

    monkeypatch.setattr(sparse, "_check_csr", counting_check)
    lengths, n_src, f, _ = lengths_for("hub_row")
    adj = csr_from_lengths(lengths, n_src, seed=10).to(device)
    x = torch.randn(n_src, f, generator=torch.Generator().manual_seed(11)).to(device)
    expected = spmm_reference(adj, x)
    plan = row_chunks(adj.crow_indices(), chunk_nnz=64)  # offsets checked here, columns not yet
    assert checks == ["spmm", "row_chunks"]
    for _ in range(3):
        assert_close(kernels.spmm_triton(adj, x, plan=plan, block_k=8), expected, backend="triton")
    assert checks == ["spmm", "row_chunks", "spmm"]  # the first product checked the columns, once
    full = row_chunks(adj.crow_indices(), chunk_nnz=64, col=adj.col_indices(), n_cols=n_src)
    assert_close(kernels.spmm_triton(adj, x, plan=full, block_k=8), expected, backend="triton")
    assert checks == ["spmm", "row_chunks", "spmm", "row_chunks"]  # checked when built, not when used
    # a different matrix with the same shape and nonzero count is checked at its first use with the plan
    bad_col = adj.col_indices().clone()
    bad_col[7] = n_src
    bad = torch.sparse_csr_tensor(adj.crow_indices(), bad_col, adj.values(), size=adj.shape, check_invariants=False)
    with pytest.raises(ValueError, match=r"adj.col_indices\(\) must lie in \[0, 320\)"):
        kernels.spmm_triton(bad, x, plan=full, block_k=8)


def test_spmm_triton_docstring_states_the_feature_block_rule() -> None:
    """The docstring's default BLOCK_F rule is the one the launcher applies (it once said 128)."""
    import ast
    import re
    from pathlib import Path

    import labkit.graphs

    path = Path(labkit.graphs.__file__).with_name("_kernels.py")
    text = path.read_text()
    cap, floor = re.search(r"block_f = min\((\d+), max\((\d+), triton\.next_power_of_2", text).groups()
    doc = next(ast.get_docstring(node) for node in ast.walk(ast.parse(text))
               if isinstance(node, ast.FunctionDef) and node.name == "spmm_triton")
    assert f"min({cap}, max({floor}, next power of two of F))" in doc

"""Triton kernels for :mod:`labkit.graphs.sparse` (imported only when Triton is chosen).

One kernel serves all three ops: it sums, over a chunk of at most ``CHUNK`` consecutive nonzeros
of one row, ``val[e] * x[col[e]]`` (SpMM), or just ``x[e]`` (segment sum, ``GATHER=False``), and
optionally divides by the row length (segment mean). The grid has one program per (work item,
feature block); the work items are, first, the extra chunks of long rows listed by
:func:`~labkit.graphs.sparse.row_chunks` (launched first so that the heaviest work starts
early), then one item per row for that row's first chunk. Every program therefore sums at most
``CHUNK`` nonzeros, whatever the degree distribution: no program is left looping over a hub
row while the rest of the GPU idles. A row that fits one chunk is stored directly (an empty row
stores zeros, so the output needs no zero fill); the chunks of a split row are combined with
``tl.atomic_add`` into that row, zeroed beforehand, so their order of summation is unspecified.

Order of the Triton tutorials: the kernel, then launchers that check their inputs, allocate the
output and compute the grid. Under ``TRITON_INTERPRET=1`` (set before this module is imported)
the same kernel runs on CPU tensors in Triton's interpreter, which the tests use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .sparse import RowChunks, _check_csr_once, _check_segments, _check_spmm, _row_chunks

__all__ = ["segment_mean_triton", "segment_sum_triton", "spmm_triton"]


# The kernel sticks to Triton builtins: tl.sum and tl.zeros are @jit helpers of triton.language,
# which the interpreter cannot call when triton was imported before TRITON_INTERPRET=1 was set
# (as in the tests). tl.reduce with this combine function compiles to the same code as tl.sum.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _row_chunk_kernel(
    x_ptr, col_ptr, val_ptr, rowptr_ptr, extra_row_ptr, extra_start_ptr, out_ptr,
    n_extra, n_features,
    stride_xm, stride_xf, stride_om, stride_of,
    CHUNK: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr,
    GATHER: tl.constexpr, WEIGHTED: tl.constexpr, MEAN: tl.constexpr,
):
    # show: start work-item
    pid = tl.program_id(axis=0)  # work item
    pid_f = tl.program_id(axis=1)  # feature block
    # Which nonzeros: an extra chunk of a long row,
    # or the first chunk of row pid - n_extra.
    if pid < n_extra:
        row = tl.load(extra_row_ptr + pid)
        start = tl.load(extra_start_ptr + pid).to(tl.int64)
    else:
        row = pid - n_extra
        start = tl.load(rowptr_ptr + row).to(tl.int64)
    row_start = tl.load(rowptr_ptr + row).to(tl.int64)
    row_end = tl.load(rowptr_ptr + row + 1).to(tl.int64)
    end = tl.minimum(start + CHUNK, row_end)
    # show: end work-item

    # show: start inner-loop
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < n_features
    # (BLOCK_K, BLOCK_F) partial sums in float32, reduced over K once at the end
    acc = tl.full([BLOCK_K, BLOCK_F], 0.0, dtype=tl.float32)
    for k in range(start, end, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        if GATHER:  # SpMM: nonzero e reads row col[e] of x
            src = tl.load(col_ptr + offs_k, mask=mask_k, other=0).to(tl.int64)
        else:  # segment reduction: nonzero e is row e of x itself
            src = offs_k
        mask = mask_k[:, None] & mask_f[None, :]
        x = tl.load(x_ptr + src[:, None] * stride_xm + offs_f[None, :] * stride_xf,
                    mask=mask, other=0.0).to(tl.float32)
        if WEIGHTED:  # message val[e] * x[col[e]]
            w = tl.load(val_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            x = x * w[:, None]
        acc += x
    total = tl.reduce(acc, 0, _add)  # (BLOCK_F,)
    if MEAN:  # dividing each chunk's partial sum by the row length: still linear
        total = total / tl.maximum(row_end - row_start, 1).to(tl.float32)

    out_ptrs = out_ptr + row.to(tl.int64) * stride_om + offs_f * stride_of
    if row_end - row_start > CHUNK:  # split row: several programs add into it
        tl.atomic_add(out_ptrs, total, mask=mask_f, sem="relaxed")
    else:  # the only program of its row
        tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mask_f)
    # show: end inner-loop


def _launch(x: torch.Tensor, ptr: torch.Tensor, col: torch.Tensor | None, val: torch.Tensor | None, *,
            nnz: int, mean: bool, plan: RowChunks | None, chunk_nnz: int, block_k: int, block_f: int | None,
            num_warps: int | None, op: str) -> torch.Tensor:
    """Shared launcher: checks the Triton-specific conditions, allocates, computes the grid.

    With a ``plan`` it makes no host-device sync, so it can be timed and captured in graphs (after
    the first call with each matrix, which checks that matrix's CSR structure once).
    """
    if not (x.is_cuda or triton_interpreting()):
        raise ValueError(f"{op}: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{op}: the Triton path takes float32, float16 or bfloat16, got {x.dtype}")
    for name, value in (("block_k", block_k), ("block_f", block_f), ("num_warps", num_warps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0 or value & (value - 1)):
            raise ValueError(f"{op}: {name} must be a positive power of two, got {value!r}")
    n_rows, n_features = ptr.numel() - 1, x.shape[1]
    if plan is None:  # building the work list checks the CSR structure (columns too, for SpMM)
        plan = (_row_chunks(ptr, chunk_nnz, col, x.shape[0], op=op) if col is not None
                else _row_chunks(ptr, chunk_nnz, None, None, op=op, names=("ptr", "col")))
    elif not isinstance(plan, RowChunks) or (plan.n_rows, plan.nnz) != (n_rows, nnz):
        raise ValueError(f"{op}: plan must be the RowChunks built by row_chunks() for this matrix")
    elif col is not None:  # a reused work list: check each matrix's structure at its first use only
        _check_csr_once(plan, ptr, col, x.shape[0], op=op)
    if block_f is None:  # whole rows up to 256 features; wider rows split over the grid's 2nd axis
        block_f = min(256, max(16, triton.next_power_of_2(n_features)))
    if num_warps is None:  # about 16 float32 of the (BLOCK_K, BLOCK_F) tile per thread, at most 4 warps
        # (measured on an H200, 1M nodes / 16M nonzeros: BLOCK_K=16 with at most 4 warps was the
        # fastest configuration at F=64 and F=256, on the uniform and the power-law graph alike)
        num_warps = min(4, max(1, block_k * block_f // 512))

    # Accumulate in float32: split rows receive float32 atomic adds; other dtypes are cast at the end.
    out = torch.empty(n_rows, n_features, dtype=torch.float32, device=x.device)
    if n_rows == 0 or n_features == 0:
        return out.to(x.dtype)
    if plan.split_rows.numel():
        out.index_fill_(0, plan.split_rows, 0.0)  # the atomics of split rows add into zeros
    gather, weighted = col is not None, val is not None
    ptr = ptr.contiguous()
    col = col.contiguous() if gather else ptr  # a placeholder pointer, never read
    val = val.contiguous() if weighted else ptr
    n_extra = plan.extra_row.numel()
    # one program per (work item, feature block); work items: the extra chunks, then the rows
    grid = (n_extra + n_rows, triton.cdiv(n_features, block_f))
    _row_chunk_kernel[grid](
        x, col, val, ptr, plan.extra_row, plan.extra_start, out,
        n_extra, n_features,
        x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        CHUNK=plan.chunk_nnz, BLOCK_K=block_k, BLOCK_F=block_f,
        GATHER=gather, WEIGHTED=weighted, MEAN=mean, num_warps=num_warps,
    )
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def spmm_triton(adj: torch.Tensor, x: torch.Tensor, *, plan: RowChunks | None = None, chunk_nnz: int = 256,
                block_k: int = 16, block_f: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Triton ``adj @ x`` with the reference's signature, plus tuning knobs (all keyword-only).

    Args:
        plan: ``row_chunks(adj.crow_indices(), chunk_nnz=...)``, built once per sparsity pattern
            and reused (``chunk_nnz`` is then ignored); built on every call when None.
        chunk_nnz: the most nonzeros one program sums (rows longer than this are split).
        block_k, block_f: nonzeros and features per tile (powers of two); block_f None picks
            min(256, max(16, next power of two of F)): whole rows up to 256 features.
        num_warps: warps per program; None sizes it to the tile.
    """
    _check_spmm(adj, x)
    return _launch(x, adj.crow_indices(), adj.col_indices(), adj.values(), nnz=adj.values().numel(),
                   mean=False, plan=plan, chunk_nnz=chunk_nnz, block_k=block_k, block_f=block_f,
                   num_warps=num_warps, op="spmm")


def segment_sum_triton(src: torch.Tensor, ptr: torch.Tensor, *, plan: RowChunks | None = None,
                       chunk_nnz: int = 256, block_k: int = 16, block_f: int | None = None,
                       num_warps: int | None = None) -> torch.Tensor:
    """Triton segment sum with the reference's signature, plus :func:`spmm_triton`'s knobs."""
    _check_segments(src, ptr, op="segment_sum")
    return _launch(src, ptr, None, None, nnz=src.shape[0], mean=False, plan=plan, chunk_nnz=chunk_nnz,
                   block_k=block_k, block_f=block_f, num_warps=num_warps, op="segment_sum")


def segment_mean_triton(src: torch.Tensor, ptr: torch.Tensor, *, plan: RowChunks | None = None,
                        chunk_nnz: int = 256, block_k: int = 16, block_f: int | None = None,
                        num_warps: int | None = None) -> torch.Tensor:
    """Triton segment mean with the reference's signature, plus :func:`spmm_triton`'s knobs."""
    _check_segments(src, ptr, op="segment_mean")
    return _launch(src, ptr, None, None, nnz=src.shape[0], mean=True, plan=plan, chunk_nnz=chunk_nnz,
                   block_k=block_k, block_f=block_f, num_warps=num_warps, op="segment_mean")

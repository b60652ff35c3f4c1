"""Message passing is a sparse matrix product: SpMM and segment reductions over CSR rows.

One round of message passing sends ``w * x[src]`` along every edge ``src -> dst`` and sums what
arrives at each ``dst``. Written with the adjacency matrix ``A[dst, src] = w`` that is exactly the
sparse-dense product ``A @ x`` (SpMM), so a GNN layer's aggregation and a sparse BLAS call are
the same computation, and either side's fast kernels serve the other.

**The CSR format.** Shape letters used throughout: N rows (destination nodes), N_src columns
(source nodes), M stored nonzeros (edges), F features. A CSR matrix keeps three arrays:

- ``crow_indices`` (``ptr``), shape (N + 1,): row ``i`` owns nonzeros ``ptr[i] : ptr[i + 1]``,
- ``col_indices`` (``col``), shape (M,): the source node of each nonzero,
- ``values`` (``val``), shape (M,): its weight.

The product then splits into the two halves of message passing: a *gather* builds one message
per nonzero, ``msg[e] = val[e] * x[col[e]]`` (shape (M, F)), and a *segment sum* adds the
messages of each row's contiguous run, ``out[i] = sum(msg[ptr[i]:ptr[i + 1]])``. Both are
public below: :func:`segment_sum` and :func:`segment_mean` are the aggregation on its own, and
:func:`spmm` fuses the gather into it so the (M, F) messages never touch memory.

**Why one program per row stalls, and the fix.** The obvious GPU kernel gives each row to one
program (GE-SpMM, "General-purpose Sparse Matrix-Matrix Multiplication on GPUs for Graph Neural
Networks", arXiv:2007.03179, refines that layout). On a uniform random graph every row has
about M / N nonzeros and that is fast; on a power-law graph a handful of hub rows hold a large
share of all nonzeros, and the program that drew a hub loops over it alone long after the rest
of the GPU has gone idle. The Triton path therefore caps each program's work at ``chunk_nnz``
nonzeros: every row keeps one program for its first chunk, and every row longer than that gets
extra programs for its remaining chunks (:func:`row_chunks` lists them with a few vectorised
torch ops, once per sparsity pattern). A short row's program stores its result; the programs of
a split row combine theirs with atomic adds into a row zeroed beforehand, so split rows are
summed in an unspecified order: not bit-for-bit deterministic from run to run, equal within
float32 rounding. Rows that fit one chunk are deterministic.

**Malformed CSR.** A matrix built with ``check_invariants=False`` (torch's default) may carry
offsets that decrease or columns past the end; a kernel would read whatever memory lies there.
Both paths check the structure (offsets from 0 to M, non-decreasing; columns in ``[0, N_src)``)
and raise the same ``ValueError``: the reference on every call, the Triton path once per
sparsity pattern, when its work list is built (or first used, for a list built from the offsets
alone).

What the miniature leaves out: merge-path partitions (Merrill & Garland, SC 2016), which also
balance the fixed cost of many tiny rows by giving each program a fixed share of rows *plus*
nonzeros; caching x rows in shared memory; autotuning; backward passes.

Section: chapter 01, "Message passing is a sparse matrix product".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..backend import Op

__all__ = [
    "RowChunks",
    "row_chunks",
    "segment_mean",
    "segment_mean_reference",
    "segment_sum",
    "segment_sum_reference",
    "spmm",
    "spmm_reference",
]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INDICES = (torch.int32, torch.int64)


def _check_ptr(ptr: torch.Tensor, n_items: int, *, op: str) -> None:
    """Validate CSR-style offsets: 1-D int64, ptr[0] = 0, non-decreasing, ptr[-1] = n_items.
    Costs a device sync on a GPU."""
    if not isinstance(ptr, torch.Tensor):
        raise TypeError(f"{op}: ptr must be a tensor, got {type(ptr).__name__}")
    if ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError(f"{op}: ptr must be 1-D of length N + 1 >= 1, got shape {tuple(ptr.shape)}")
    if ptr.dtype != torch.int64:
        raise TypeError(f"{op}: ptr must be int64, got {ptr.dtype}")
    first, last = ptr[0].item(), ptr[-1].item()
    if first != 0 or last != n_items:
        raise ValueError(f"{op}: ptr must start at 0 and end at {n_items} (the rows of src), "
                         f"got ptr[0] = {first} and ptr[-1] = {last}")
    if ptr.numel() > 1 and bool((ptr.diff() < 0).any()):
        raise ValueError(f"{op}: ptr must be non-decreasing (segment i is ptr[i]:ptr[i + 1])")


def _check_segments(src: torch.Tensor, ptr: torch.Tensor, *, op: str) -> None:
    if not isinstance(src, torch.Tensor):
        raise TypeError(f"{op}: src must be a tensor, got {type(src).__name__}")
    if src.dim() != 2:
        raise ValueError(f"{op}: src must be 2-D (M, F), got shape {tuple(src.shape)}")
    if src.dtype not in _FLOATS:
        raise TypeError(f"{op}: src must be a floating tensor, got {src.dtype}")
    if isinstance(ptr, torch.Tensor) and ptr.device != src.device:
        raise ValueError(f"{op}: src and ptr must be on one device, got {src.device} and {ptr.device}")
    _check_ptr(ptr, src.shape[0], op=op)


def _check_spmm(adj: torch.Tensor, x: torch.Tensor) -> None:
    if not isinstance(adj, torch.Tensor):
        raise TypeError(f"spmm: adj must be a tensor, got {type(adj).__name__}")
    if adj.layout != torch.sparse_csr:
        raise TypeError(f"spmm: adj has layout {adj.layout}; expected a torch.sparse_csr tensor; "
                        "convert with .to_sparse_csr()")
    if adj.dim() != 2 or adj.values().dim() != 1:
        raise ValueError(f"spmm: adj must be a 2-D CSR matrix with scalar values (no batch or dense "
                         f"dimensions), got shape {tuple(adj.shape)}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"spmm: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"spmm: x must be 2-D (N_src, F), got shape {tuple(x.shape)}")
    if adj.shape[1] != x.shape[0]:
        raise ValueError(f"spmm: adj.shape[1] ({adj.shape[1]}) must equal x.shape[0] ({x.shape[0]})")
    if x.dtype not in _FLOATS or adj.dtype != x.dtype:
        raise TypeError(f"spmm: adj and x must share one floating dtype, got {adj.dtype} and {x.dtype}")
    if adj.device != x.device:
        raise ValueError(f"spmm: adj and x must be on one device, got {adj.device} and {x.device}")
    # Shapes, types and devices only: no device sync. The index values (torch's CSR invariants,
    # unchecked unless the tensor was built with check_invariants=True) are _check_csr's job: on
    # every call of the reference, once per work list and matrix on the Triton path.


def _check_csr(ptr: torch.Tensor, col: torch.Tensor | None, n_cols: int | None, *, op: str,
               names: tuple[str, str] = ("adj.crow_indices()", "adj.col_indices()")) -> None:
    """Validate a CSR structure with one host sync: ``ptr`` (N + 1,) starts at 0, never decreases
    and, with ``col``, ends at ``col.numel()``, every column lying in ``[0, n_cols)``.

    ``names`` are how the messages call ``ptr`` and ``col``. The counts are computed on the
    tensors' device and read back together; the details of a failure cost further syncs.
    """
    ptr_name, col_name = names
    if not isinstance(ptr, torch.Tensor) or ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError(f"{op}: {ptr_name} must be a 1-D tensor of N + 1 >= 1 offsets")
    if ptr.dtype not in _INDICES:
        raise TypeError(f"{op}: {ptr_name} must be an integer tensor (int32 or int64), got {ptr.dtype}")
    if col is not None and (not isinstance(col, torch.Tensor) or col.dim() != 1 or col.dtype not in _INDICES):
        raise TypeError(f"{op}: {col_name} must be a 1-D integer tensor (int32 or int64)")
    down = ptr.diff() < 0  # (N,)
    stats = [ptr[0], ptr[-1], down.sum()]
    if col is not None and col.numel():
        stats += list(torch.aminmax(col))  # one pass over the columns
    first, last, n_down, *col_range = torch.stack([v.to(torch.int64) for v in stats]).tolist()
    if first != 0:
        raise ValueError(f"{op}: {ptr_name} must start at 0, got {first}")
    if n_down:
        row = int(torch.nonzero(down)[0])
        raise ValueError(f"{op}: {ptr_name} must be non-decreasing; it decreases {n_down} time(s), first from "
                         f"row {row} to row {row + 1} ({int(ptr[row])} then {int(ptr[row + 1])})")
    if col is None:
        return
    if last != col.numel():
        raise ValueError(f"{op}: {ptr_name} must end at {col.numel()} (the number of nonzeros), got {last}")
    if col_range and (col_range[0] < 0 or col_range[1] >= n_cols):
        outside = int(((col < 0) | (col >= n_cols)).sum())
        raise ValueError(f"{op}: {col_name} must lie in [0, {n_cols}) (the columns of adj); {outside} of "
                         f"{col.numel()} do not (min {col_range[0]}, max {col_range[1]})")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate in float32 (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def segment_sum_reference(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Sum each run of rows ``src[ptr[i]:ptr[i + 1]]`` (the aggregation of message passing).

    Args:
        src: (M, F) floating tensor, one row per message.
        ptr: (N + 1,) int64 offsets, non-decreasing, ``ptr[0] = 0``, ``ptr[-1] = M``.

    Returns:
        (N, F) tensor of ``src``'s dtype, accumulated in float32; empty segments give 0.
    """
    _check_segments(src, ptr, op="segment_sum")
    n_segments = ptr.numel() - 1
    lengths = ptr.diff()  # (N,) rows in each segment
    # segment id of every row of src: [0]*len_0 + [1]*len_1 + ...
    seg = torch.repeat_interleave(torch.arange(n_segments, device=src.device), lengths)  # (M,)
    out = torch.zeros(n_segments, src.shape[1], dtype=_acc_dtype(src.dtype), device=src.device)
    out.index_add_(0, seg, src.to(out.dtype))  # out[seg[e]] += src[e]
    return out.to(src.dtype)


def segment_mean_reference(src: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """Average each run of rows ``src[ptr[i]:ptr[i + 1]]``; empty segments give 0.

    Same arguments and shapes as :func:`segment_sum_reference`.
    """
    _check_segments(src, ptr, op="segment_mean")
    sums = segment_sum_reference(src, ptr).to(_acc_dtype(src.dtype))  # (N, F)
    counts = ptr.diff().clamp(min=1).to(sums.dtype)  # (N,), empty segments divide 0 by 1
    return (sums / counts[:, None]).to(src.dtype)


def spmm_reference(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``adj @ x`` as message passing: gather one message per nonzero, then segment-sum each row.

    Args:
        adj: (N, N_src) ``torch.sparse_csr`` matrix with floating values, ``adj[dst, src] = w``.
        x: (N_src, F) dense features of the same dtype and device.

    Returns:
        (N, F) tensor of ``x``'s dtype, accumulated in float32; equals ``torch.sparse.mm(adj, x)``.

    Raises:
        ValueError: a malformed CSR structure (offsets not from 0 to M or decreasing, a column
            outside ``[0, N_src)``), besides mismatched shapes or devices.
    """
    _check_spmm(adj, x)
    _check_csr(adj.crow_indices(), adj.col_indices(), adj.shape[1], op="spmm")
    # show: start gather-sum
    ptr, col, val = adj.crow_indices().long(), adj.col_indices(), adj.values()
    acc = _acc_dtype(x.dtype)
    # gather: the message along nonzero e is val[e] * x[col[e]]
    messages = val.to(acc)[:, None] * x[col].to(acc)  # (M, F)
    # aggregate: row i sums the messages ptr[i]:ptr[i + 1]
    return segment_sum_reference(messages, ptr).to(x.dtype)
    # show: end gather-sum


@dataclass(frozen=True)
class RowChunks:
    """Work list of the balanced kernel: the extra programs that rows longer than
    ``chunk_nnz`` need (every row also has one program of its own for its first chunk).

    Attributes:
        chunk_nnz: the most nonzeros one program sums.
        n_rows: N, rows of the matrix it was built for.
        nnz: M, nonzeros of that matrix.
        split_rows: (S,) int64 rows with more than ``chunk_nnz`` nonzeros (combined by atomics).
        extra_row: (X,) int32 row of each extra chunk.
        extra_start: (X,) int64 offset of each extra chunk's first nonzero.

    It also remembers which matrices' structure has been checked with it (offsets and columns,
    see :func:`row_chunks`), so that SpMM checks a matrix once, not on every call.
    """

    chunk_nnz: int
    n_rows: int
    nnz: int
    split_rows: torch.Tensor
    extra_row: torch.Tensor
    extra_start: torch.Tensor
    _checked: set[tuple[int, ...]] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def n_programs(self) -> int:
        """Programs per feature block: one per row plus one per extra chunk."""
        return self.n_rows + self.extra_row.numel()


def row_chunks(ptr: torch.Tensor, *, chunk_nnz: int = 256, col: torch.Tensor | None = None,
               n_cols: int | None = None) -> RowChunks:
    """Split rows longer than ``chunk_nnz`` nonzeros into chunks for separate programs.

    Built on ``ptr``'s device with a handful of vectorised ops (two host syncs, plus one for the
    checks); reuse it for every product with the same sparsity pattern.

    Args:
        ptr: (N + 1,) CSR row offsets (``adj.crow_indices()`` or a segment ``ptr``): checked to
            start at 0 and never decrease.
        chunk_nnz: the most nonzeros one program handles, >= 1.
        col, n_cols: optionally the column indices (``adj.col_indices()``) and the column count
            N_src: then ``ptr`` must also end at ``col.numel()`` and every column lie in
            ``[0, n_cols)``, and the plan remembers this matrix as checked (SpMM with a plan built
            from ``ptr`` alone checks the columns once, at its first use with a matrix).

    Raises:
        ValueError: a malformed ``ptr`` or ``col``, or ``chunk_nnz`` < 1.
    """
    if col is not None and n_cols is None:
        raise ValueError("row_chunks: pass n_cols with col (the column count the indices must stay below)")
    return _row_chunks(ptr, chunk_nnz, col, n_cols, op="row_chunks", names=("ptr", "col"))


def _csr_key(ptr: torch.Tensor, col: torch.Tensor, n_cols: int) -> tuple[int, ...]:
    """Identifies one matrix's index tensors (where they live and how long they are)."""
    return (ptr.data_ptr(), ptr.numel(), col.data_ptr(), col.numel(), n_cols)


def _check_csr_once(plan: RowChunks, ptr: torch.Tensor, col: torch.Tensor, n_cols: int, *, op: str) -> None:
    """:func:`_check_csr` for a matrix the first time it is used with ``plan``; later calls cost nothing."""
    key = _csr_key(ptr, col, n_cols)
    if key not in plan._checked:
        _check_csr(ptr, col, n_cols, op=op)
        plan._checked.add(key)


def _row_chunks(ptr: torch.Tensor, chunk_nnz: int, col: torch.Tensor | None, n_cols: int | None, *, op: str,
                names: tuple[str, str] = ("adj.crow_indices()", "adj.col_indices()")) -> RowChunks:
    """:func:`row_chunks`, with errors that name ``op`` and call the index tensors ``names``."""
    if isinstance(chunk_nnz, bool) or not isinstance(chunk_nnz, int) or chunk_nnz < 1:
        raise ValueError(f"{op}: chunk_nnz must be an int >= 1, got {chunk_nnz!r}")
    _check_csr(ptr, col, n_cols, op=op, names=names)
    key = _csr_key(ptr, col, n_cols) if col is not None else None
    ptr = ptr.long()
    lengths = ptr.diff()  # (N,) nonzeros per row
    split_rows = torch.nonzero(lengths > chunk_nnz).flatten()  # (S,)
    n_extra = (lengths[split_rows] - 1) // chunk_nnz  # (S,) chunks beyond each row's first
    extra_row = torch.repeat_interleave(split_rows, n_extra)  # (X,)
    # chunk number j = 1, 2, ... of each extra chunk within its row
    first = torch.cumsum(n_extra, 0) - n_extra  # (S,) position of each row's first extra chunk
    j = torch.arange(extra_row.numel(), device=ptr.device) - torch.repeat_interleave(first, n_extra) + 1
    extra_start = ptr[extra_row] + j * chunk_nnz  # (X,)
    plan = RowChunks(chunk_nnz=chunk_nnz, n_rows=lengths.numel(), nnz=int(ptr[-1].item()),
                     split_rows=split_rows, extra_row=extra_row.to(torch.int32), extra_start=extra_start)
    if key is not None:
        plan._checked.add(key)
    return plan


#: ``spmm(adj, x, backend=None)``: reference or Triton, see :mod:`labkit.backend`.
spmm = Op("spmm", reference=spmm_reference, triton="labkit.graphs._kernels:spmm_triton")
#: ``segment_sum(src, ptr, backend=None)``.
segment_sum = Op("segment_sum", reference=segment_sum_reference, triton="labkit.graphs._kernels:segment_sum_triton")
#: ``segment_mean(src, ptr, backend=None)``.
segment_mean = Op("segment_mean", reference=segment_mean_reference,
                  triton="labkit.graphs._kernels:segment_mean_triton")

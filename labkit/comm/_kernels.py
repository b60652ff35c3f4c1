"""Triton pack and unpack for :mod:`labkit.comm.datatypes` (imported only when Triton is chosen).

One kernel does both directions, in the manner of TEMPI's single-launch packer: the grid has one
program per ``BLOCK_SIZE`` packed elements; each element ``i`` splits into its position ``e`` in
a contiguous block and the block's coordinates ``(i_1, ..., i_L)`` over the canonical levels
(innermost first, by division and remainder), and its source address is
``offset + sum_k i_k * stride_k + e``. Packing loads from those addresses and stores contiguously;
unpacking does the reverse. Up to four levels are handled (a canonical view of a tensor of up to
five dimensions); the level count is a ``tl.constexpr``, so a two-level layout compiles without
the unused divisions. Index arithmetic is in int32 when every index fits, else int64.

Order of the Triton tutorials: the kernel, then launchers that check their inputs, allocate the
output and compute the grid. Under ``TRITON_INTERPRET=1`` (set before this module is imported)
the same kernel runs on CPU tensors in Triton's interpreter, which the tests use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .datatypes import StridedLayout, _check_buf, _flat_base, canonicalize

__all__ = ["MAX_LEVELS", "pack_triton", "unpack_triton"]

#: The most canonical levels the kernel handles.
MAX_LEVELS = 4


@triton.jit
def _strided_copy_kernel(
    src_ptr, dst_ptr, n_elements, offset, block,
    count_1, stride_1, count_2, stride_2, count_3, stride_3, count_4, stride_4,
    N_LEVELS: tl.constexpr, PACK: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    # show: start inner
    pid = tl.program_id(axis=0)
    i = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)  # packed element index
    if INDEX_64:
        i = i.to(tl.int64)
    mask = i < n_elements
    # element i = (block coordinates..., e): peel e, then the levels,
    # innermost first: src = offset + sum_k i_k * stride_k + e
    src = offset + i % block
    b = i // block
    if N_LEVELS >= 1:
        src += (b % count_1) * stride_1  # level 1 is the innermost
        b = b // count_1
    if N_LEVELS >= 2:
        src += (b % count_2) * stride_2
        b = b // count_2
    if N_LEVELS >= 3:
        src += (b % count_3) * stride_3
        b = b // count_3
    if N_LEVELS >= 4:
        src += (b % count_4) * stride_4
    if PACK:
        tl.store(dst_ptr + i, tl.load(src_ptr + src, mask=mask), mask=mask)
    else:
        tl.store(dst_ptr + src, tl.load(src_ptr + i, mask=mask), mask=mask)
    # show: end inner


def _launch(src: torch.Tensor, dst: torch.Tensor, layout: StridedLayout, *, pack: bool,
            block_size: int, num_warps: int, op: str) -> None:
    if not (src.is_cuda or triton_interpreting()):
        raise ValueError(f"{op}: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0 \
            or block_size & (block_size - 1):
        raise ValueError(f"{op}: block_size must be a positive power of two, got {block_size!r}")
    if src.dtype == torch.bool:
        raise TypeError(f"{op}: bool tensors are not supported; view them as torch.uint8")
    canon = canonicalize(layout)
    if len(canon.levels) > MAX_LEVELS:
        raise ValueError(f"{op}: the kernel handles at most {MAX_LEVELS} canonical levels, "
                         f"got {len(canon.levels)}: {canon.levels}")
    n = canon.numel
    if n == 0:
        return
    inner_first = list(reversed(canon.levels)) + [(1, 0)] * (MAX_LEVELS - len(canon.levels))
    args = [v for level in inner_first for v in level]
    index_64 = max(n, canon.extent) >= 2**31 - block_size
    grid = (triton.cdiv(n, block_size),)
    _strided_copy_kernel[grid](src, dst, n, canon.offset, canon.block, *args,
                               N_LEVELS=len(canon.levels), PACK=pack, INDEX_64=index_64,
                               BLOCK_SIZE=block_size, num_warps=num_warps)


def pack_triton(base: torch.Tensor, layout: StridedLayout, *, block_size: int = 1024,
                num_warps: int = 4) -> torch.Tensor:
    """Triton launcher with :func:`~labkit.comm.datatypes.pack_reference`'s signature, plus the
    fixed configuration (``block_size`` elements per program, a power of two; ``num_warps``)."""
    flat = _flat_base(base, layout, op="pack")
    out = torch.empty(layout.numel, dtype=flat.dtype, device=flat.device)
    _launch(flat, out, layout, pack=True, block_size=block_size, num_warps=num_warps, op="pack_triton")
    return out


def unpack_triton(buf: torch.Tensor, layout: StridedLayout, out: torch.Tensor, *, block_size: int = 1024,
                  num_warps: int = 4) -> torch.Tensor:
    """Triton launcher with :func:`~labkit.comm.datatypes.unpack_reference`'s signature: scatters
    ``buf`` into ``out`` in place and returns ``out``."""
    flat = _flat_base(out, layout, op="unpack", name="out")
    _check_buf(buf, layout, out, op="unpack")
    _launch(buf.contiguous(), flat, layout, pack=False, block_size=block_size, num_warps=num_warps,
            op="unpack_triton")
    return out

"""Triton kernel for :func:`labkit.intro.axpy.scaled_add` (imported only when Triton is chosen).

Order of the Triton tutorials: the kernel, then a launcher that checks its inputs, allocates the
output and computes the grid. Under ``TRITON_INTERPRET=1`` (set before this module is imported)
the same kernel runs on CPU tensors in Triton's interpreter, which the tests use.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .axpy import _check

__all__ = ["scaled_add_triton"]


@triton.jit
def _scaled_add_kernel(x_ptr, y_ptr, out_ptr, alpha, n_elements,
                       BLOCK_SIZE: tl.constexpr):
    # The launch starts ceil(n / BLOCK_SIZE) copies of this function, the
    # programs; program_id says which one runs here (0, 1, 2, ...).
    pid = tl.program_id(axis=0)
    # arange gives the vector [0, 1, ..., BLOCK_SIZE - 1]: a whole block of
    # lanes at once (BLOCK_SIZE is a compile-time constant, a power of two).
    # Program pid covers the block that starts at element pid * BLOCK_SIZE.
    offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    # The last block may run past the end of the tensor: mask switches those
    # lanes off, so their loads read nothing and their stores write nothing.
    mask = offsets < n_elements
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    # out = alpha * x + y: one read of each input, one write, no temporary
    tl.store(out_ptr + offsets, alpha * x + y, mask=mask)


def scaled_add_triton(x: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0, block_size: int = 1024) -> torch.Tensor:
    """Triton launcher with the reference's signature (plus ``block_size``, a power of two)."""
    _check(x, y, alpha)
    if not (x.is_cuda or triton_interpreting()):
        raise ValueError("scaled_add_triton: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")
    if block_size <= 0 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a positive power of two, got {block_size}")
    x_c, y_c = x.contiguous(), y.contiguous()
    out = torch.empty_like(x_c)
    n = out.numel()
    if n == 0:
        return out
    # show: start launch
    grid = (triton.cdiv(n, block_size),)  # one program per block
    _scaled_add_kernel[grid](x_c, y_c, out, float(alpha), n,
                             BLOCK_SIZE=block_size)
    # show: end launch
    return out

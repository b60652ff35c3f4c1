"""Triton kernels for 1-bit Adam's compressor with error feedback (imported only when Triton is chosen).

:func:`~labkit.comm.onebit.compress_with_feedback` reads the momentum ``x`` and the error ``e``,
forms ``c = x + e``, and needs the norm of all of ``c`` before it can write a single
compressed entry. Eagerly that is about ten passes over memory (the sum, the comparison, the
signs as floats, the packing, the new error, the copy back). Here it is two launches:

1. ``_sum_squares_kernel``: each of ``P`` programs walks blocks ``pid, pid + P, pid + 2P, ...``
   and writes one partial sum of ``c^2`` (``P`` at most :data:`MAX_PROGRAMS`; a fixed order,
   so the result does not change from run to run);
2. ``_sign_pack_kernel``: each program adds up the ``P`` partials itself (a few KiB, from the
   L2 cache), takes ``s = sqrt(sum) / sqrt(d)``, then walks the same blocks again: it packs the
   signs of ``c`` eight to a byte in :func:`~labkit.quant.bitstack.pack_signs`' order (bit ``k``
   of byte ``b`` set where ``c[8 b + k] < 0``, so ``sign(0) = +1``) and writes
   ``e <- c - s sign(c)`` in place.

Traffic per element: ``x`` and ``e`` read twice (16 bytes), ``e`` written (4 bytes), an eighth
of a byte of signs: 20.125 bytes. The new error equals the reference's bit for bit whenever the
scales agree (``c - s`` and ``c + s`` are single roundings on both sides); the scale itself is a
sum in another order, equal to float32 rounding.

Order of the Triton tutorials: the kernels, then the launcher that checks its inputs, allocates
the outputs and computes the grid. Under ``TRITON_INTERPRET=1`` (set before this module is
imported) the same kernels run on CPU tensors in Triton's interpreter, which the tests use.

Section: chapter 12, "1-bit Adam".
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from .onebit import check_feedback_args

__all__ = ["BLOCK_SIZE", "MAX_PROGRAMS", "NUM_WARPS", "compress_with_feedback_triton"]

#: Elements per block (a multiple of 8: whole bytes of signs), the launch default.
BLOCK_SIZE = 2048
#: The most programs of either pass (and partial sums): one wave of 4-warp programs on an H100.
MAX_PROGRAMS = 1024
#: Warps per program, the launch default.
NUM_WARPS = 4


@triton.jit
def _sum_squares_kernel(x_ptr, e_ptr, partial_ptr, n_elements, n_programs, n_iters,
                        INDEX_64: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(axis=0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    offs = tl.arange(0, BLOCK_SIZE)
    acc = tl.zeros((BLOCK_SIZE,), dtype=tl.float32)
    for k in range(0, n_iters):  # blocks pid, pid + P, pid + 2P, ...
        i = (pid + k * n_programs) * BLOCK_SIZE + offs
        mask = i < n_elements
        c = tl.load(x_ptr + i, mask=mask, other=0.0) + tl.load(e_ptr + i, mask=mask, other=0.0)
        acc += c * c
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _sign_pack_kernel(x_ptr, e_ptr, partial_ptr, packed_ptr, scale_ptr, n_elements, n_bytes, n_programs,
                      n_iters, sqrt_d, INDEX_64: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                      PARTIALS: tl.constexpr):
    pid = tl.program_id(axis=0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    # show: start sign-pack
    p = tl.arange(0, PARTIALS)  # every program adds up the P partials
    partial = tl.load(partial_ptr + p, mask=p < n_programs, other=0.0)
    s = tl.div_rn(tl.sqrt_rn(tl.sum(partial, axis=0)), sqrt_d)  # ||c|| / sqrt(d)
    if pid == 0:
        tl.store(scale_ptr, s)
    rows = tl.arange(0, BLOCK_SIZE // 8)  # a block as rows of 8 entries
    bit = tl.arange(0, 8)
    for k in range(0, n_iters):  # blocks pid, pid + P, ... as in pass 1
        byte = (pid + k * n_programs) * (BLOCK_SIZE // 8) + rows
        i = byte[:, None] * 8 + bit[None, :]  # entry 8 b + k: bit k of byte b
        mask = i < n_elements
        c = (tl.load(x_ptr + i, mask=mask, other=0.0)
             + tl.load(e_ptr + i, mask=mask, other=0.0))
        negative = c < 0  # sign(0) = +1; padding (0) leaves its bit clear
        # e <- c - s sign(c)
        tl.store(e_ptr + i, tl.where(negative, c + s, c - s), mask=mask)
        # the 8 bits of a row are disjoint: their sum is the packed byte
        packed = tl.sum(negative.to(tl.int32) << bit[None, :], axis=1)
        tl.store(packed_ptr + byte, packed.to(tl.uint8), mask=byte < n_bytes)
    # show: end sign-pack


def _power_of_two(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value & (value - 1):
        raise ValueError(f"compress_with_feedback_triton: {name} must be a power of two >= {low}, got {value!r}")
    return value


def compress_with_feedback_triton(x: torch.Tensor, error: torch.Tensor, *, block_size: int = BLOCK_SIZE,
                                  max_programs: int = MAX_PROGRAMS,
                                  num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher with :func:`~labkit.comm.onebit.compress_with_feedback_reference`'s
    signature, plus the fixed configuration (``block_size`` elements per block, a power of two
    of at least 8; at most ``max_programs`` programs, a power of two; ``num_warps``).

    ``x`` and ``error`` must be contiguous float32 tensors of one shape on a CUDA device (or on
    the CPU under ``TRITON_INTERPRET=1``). Returns ``(packed, scale)`` and overwrites ``error``.
    """
    op = "compress_with_feedback_triton"
    check_feedback_args(x, error, op=op)
    if x.dtype != torch.float32:
        raise TypeError(f"{op}: the kernel takes float32 tensors, got {x.dtype}")
    if not (x.is_cuda or triton_interpreting()):
        raise ValueError(f"{op}: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU), got {x.device}")
    for name, t in (("x", x), ("error", error)):
        if not t.is_contiguous():
            raise ValueError(f"{op}: {name} must be contiguous (the kernel writes error in place; "
                             f"pass .contiguous() copies and keep the one it updates)")
    block_size = _power_of_two("block_size", block_size, 8)
    max_programs = _power_of_two("max_programs", max_programs)
    n = x.numel()
    n_bytes = -(-n // 8)
    n_blocks = triton.cdiv(n, block_size)
    programs = min(n_blocks, max_programs)
    n_iters = triton.cdiv(n_blocks, programs)
    index_64 = (n_iters * programs + 1) * block_size >= 2**31
    partials = torch.empty(programs, dtype=torch.float32, device=x.device)
    packed = torch.empty(n_bytes, dtype=torch.uint8, device=x.device)
    scale = torch.empty(1, dtype=torch.float32, device=x.device)
    grid = (programs,)
    _sum_squares_kernel[grid](x, error, partials, n, programs, n_iters, INDEX_64=index_64, BLOCK_SIZE=block_size,
                              num_warps=num_warps)
    _sign_pack_kernel[grid](x, error, partials, packed, scale, n, n_bytes, programs, n_iters, math.sqrt(n),
                            INDEX_64=index_64, BLOCK_SIZE=block_size, PARTIALS=triton.next_power_of_2(programs),
                            num_warps=num_warps)
    return packed, scale

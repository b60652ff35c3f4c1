"""Triton ring matmul for :mod:`labkit.mpc.ringmm`: int64 products mod 2^64 on int8 tensor cores.

What. :func:`ring_matmul_triton` computes ``a @ b`` mod 2^64 for int64 matrices, bit for bit
equal to the CPU's int64 matmul, from int8 x int8 -> int32 ``tl.dot`` s, in two launches:

1. ``_digit_planes_kernel`` writes every entry's eight balanced base-256 digits,
   ``x = sum_i d_i 256^i (mod 2^64)`` with ``d_i`` in [-128, 127] (the digits of
   :func:`~labkit.mpc.ringmm.balanced_bytes`: add 128 to every byte, subtract it from every
   digit), as int8 planes laid side by side along K: ``A = [A_0 | A_1 | ... | A_7]`` (M, 8P) for
   ``a`` and, for ``b``, its transpose in reverse order, ``[B_7 | ... | B_0]`` (N, 8P). Each plane
   is K columns of digits padded with zeros to P, the next multiple of 16 (TMA tiles must start
   on 16-byte boundaries); zero digits add nothing to any product.
2. ``_ring_mm_kernel`` uses

       a @ b = sum_{s=0}^{7} 256^s C_s (mod 2^64),   C_s = sum_{i+j=s} A_i @ B_j          (1)

   (pairs with ``i + j >= 8`` are multiples of 2^64: 36 int8 GEMMs instead of 64), and with the
   layout of step 1 a whole shift class is ONE contiguous product over (s+1) P columns,

       C_s = A[:, 0:(s+1)P] @ B[:, (7-s)P:8P]^T,                                         (2)

   one K loop with a single int32 accumulator (column ``iP + k`` of A meets column
   ``(7-s+i)P + k`` of B, which holds digit ``s - i`` of the same k). After each class the
   program widens the accumulator to int64, shifts it by ``8 s`` (bits past 63 fall off: the
   reduction mod 2^64) and adds it to an int64 accumulator, which wraps around like the ring.

Why this design.
- int8 dots run on tensor cores (on an H100 at about 2x the float16 rate and ~30x the float64
  rate), so 36 of them should beat CrypTen's ten float64 GEMMs of 16-bit limbs, and plain int64
  multiply-adds, which CUDA cores emulate with several 32-bit instructions each
  (``benchmarks/mpc_ring_gemm.py`` measures the first claim).
- Balanced digits, not unsigned bytes 0..255, because ``tl.dot`` takes signed int8; adding
  0x80 to every byte before the split turns the sign bookkeeping into a single int64 add.
- Layout (2) keeps one int32 accumulator live at a time (one per class, eight, would not fit in
  registers at 128 x 128 tiles) and gives each K loop (s+1) P / BLOCK_K steps to pipeline.
- Tiles are read through tensor descriptors (TMA on Hopper): no address registers, and the
  ragged ends cost no masks. Reads past row M, past column N or past column 8P come back as
  zeros; the only other over-read, ``A``'s tile running past (s+1)P into plane s+1, meets
  ``B``'s tile running past column 8P, i.e. zeros, so it adds nothing.
- Exactness. A digit product has magnitude at most 128 * 128 = 2^14, so an int32 sum of n of
  them is exact while n < 2^17. Class 7 sums 8P products: the loop widens the int32
  accumulator every ``chunk`` terms (a multiple of BLOCK_K below 2^17; 65536 by default), so no
  K overflows, and K <= 8192 never needs a second chunk.

What the miniature leaves out: autotuning (one fixed tile config, :data:`RING_MM_CONFIG`), a
persistent or warp-specialised kernel, spreading the classes of one tile over several programs
when there are fewer tiles than SMs (classes s and 7 - s together are 9 of the 36 digit GEMMs,
so four programs would share a tile evenly), fusing the digit split into the GEMM's loads,
tricks that need fewer than 36 digit products (Karatsuba), and the small rings (Z_2, Z_2^k for
k < 64) some protocols use for comparisons.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) both kernels run on CPU
tensors in Triton's interpreter, which the tests use with small tiles.

Shapes: M rows of ``a`` (after flattening its batch dimensions), K shared width, N columns of
``b``, R rows of a matrix being split, P = K rounded up to a multiple of 16.
Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..backend import triton_interpreting
from .ringmm import check_ring_operands

__all__ = ["DIGIT_SPLIT_CONFIG", "MAX_CHUNK", "RING_MM_CONFIG", "digit_planes", "ring_matmul_triton"]

N_DIGITS = 8  # base-256 digits of a 64-bit entry
MAX_CHUNK = 2**17 - 1  # int32 sums of fewer than 2^17 digit products (each <= 2^14) are exact

#: Launch parameters (no autotuning): block_m, block_n, block_k (<= 128: one 128-byte TMA row),
#: group_m (row tiles sharing a column band, for L2 reuse), num_warps, num_stages, and chunk
#: (int32 terms summed before widening). 128 x 128 x 128 with 8 warps: two Hopper warpgroups,
#: 96 KiB of shared memory for 3 stages; ptxas spills a few registers of the int64 accumulator
#: at class boundaries only, never inside the K loop.
RING_MM_CONFIG: dict[str, int] = dict(
    block_m=128, block_n=128, block_k=128, group_m=8, num_warps=8, num_stages=3, chunk=65536,
)
#: Tile of the digit split (block_r rows x block_k columns of int64) and its num_warps.
DIGIT_SPLIT_CONFIG: dict[str, int] = dict(block_r=32, block_k=64, num_warps=4)


@triton.jit
def _digit_planes_kernel(
    x_ptr, out_ptr,
    n_rows, width, plane_width,
    stride_xr, stride_xk, stride_or,
    REVERSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(axis=0) * BLOCK_R + tl.arange(0, BLOCK_R)
    ks = tl.program_id(axis=1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xr + ks[None, :] * stride_xk,
                mask=(rows < n_rows)[:, None] & (ks < width)[None, :], other=0)  # pad columns: x = 0
    y = x + (-0x7F7F7F7F7F7F7F80)  # + 0x8080808080808080 mod 2^64: 128 added to every byte
    out = out_ptr + rows64[:, None] * stride_or + ks[None, :]
    mask = (rows < n_rows)[:, None] & (ks < plane_width)[None, :]
    for i in tl.static_range(8):
        digit = (((y >> (8 * i)) & 0xFF) - 128).to(tl.int8)  # byte i minus 128; all 0 when x = 0
        if REVERSE:
            tl.store(out + (7 - i) * plane_width, digit, mask=mask)
        else:
            tl.store(out + i * plane_width, digit, mask=mask)


@triton.jit
def _ring_mm_kernel(
    a_desc, b_desc, out_ptr,
    n_rows, n_cols, plane_width,
    stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    CHUNK: tl.constexpr,
):
    # program -> (row tile, column tile), GROUP_M row tiles per column band (Triton tutorial order)
    pid = tl.program_id(axis=0)
    n_tiles_m = tl.cdiv(n_rows, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(n_cols, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_tiles_m - first_m, GROUP_M)
    off_m = (first_m + (pid % per_group) % group_rows) * BLOCK_M
    off_n = ((pid % per_group) // group_rows) * BLOCK_N

    # show: start inner-loop
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int64)
    for s in range(0, 8):  # shift class s = i + j, eq. (1)
        n_terms = (s + 1) * plane_width
        # eq. (2): columns [(7-s)P, 8P) of b's reversed planes
        b_start = (7 - s) * plane_width
        for c0 in range(0, n_terms, CHUNK):
            # exact: fewer than 2^17 terms of at most 2^14
            part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
            for k0 in range(c0, tl.minimum(c0 + CHUNK, n_terms), BLOCK_K):
                # int8 tiles, zeros past the edges
                a = a_desc.load([off_m, k0])  # (BLOCK_M, BLOCK_K)
                b = b_desc.load([off_n, b_start + k0])  # (BLOCK_N, BLOCK_K)
                # int8 x int8 -> int32 on tensor cores
                part = tl.dot(a, b.T, part, out_dtype=tl.int32)
            # widen, shift; bits past 63 fall off (mod 2^64)
            acc += part.to(tl.int64) << (8 * s)
    # show: end inner-loop

    rows = off_m + tl.arange(0, BLOCK_M)
    cols = off_n + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on, acc, mask=mask)


def digit_planes(x: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
    """The balanced base-256 digit planes of ``x``, side by side along K, in one Triton launch.

    Args:
        x: int64 (R, K), any strides: ``a`` as (M, K), or ``b.t()`` as (N, K).
        reverse: most significant plane first (``b``'s layout in eq. (2)).

    Returns:
        int8 (R, 8P), P = K rounded up to a multiple of 16: ``out[r, i P + k]`` is digit i of
        ``x[r, k]`` (digit 7 - i if ``reverse``) for k < K, and 0 for K <= k < P.

    Shapes:
        x (R, K) -> (R, 8P).
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 2:
        raise ValueError(f"digit_planes: x must be a 2-D int64 tensor, got {getattr(x, 'shape', type(x).__name__)}")
    n_rows, width = x.shape
    plane_width = max(16, -(-width // 16) * 16)  # TMA: tiles start at multiples of 16 bytes
    out = torch.empty(n_rows, N_DIGITS * plane_width, dtype=torch.int8, device=x.device)
    if n_rows:
        block_r, block_k = DIGIT_SPLIT_CONFIG["block_r"], DIGIT_SPLIT_CONFIG["block_k"]
        grid = (triton.cdiv(n_rows, block_r), triton.cdiv(plane_width, block_k))
        _digit_planes_kernel[grid](x, out, n_rows, width, plane_width, x.stride(0), x.stride(1), out.stride(0),
                                   REVERSE=bool(reverse), BLOCK_R=block_r, BLOCK_K=block_k,
                                   num_warps=DIGIT_SPLIT_CONFIG["num_warps"])
    return out


def ring_matmul_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` mod 2^64 from int8 tensor-core dots; signature of :func:`~labkit.mpc.ringmm.ring_matmul_reference`.

    Bit for bit equal to the CPU's int64 matmul for every K (see the module docstring). ``a`` and
    ``b`` may be strided views; the result is a new contiguous tensor. Launch parameters come
    from :data:`RING_MM_CONFIG`. CPU tensors need ``TRITON_INTERPRET=1``; under the ``auto``
    backend a call with CPU shares never comes here (:class:`labkit.backend.Op` sends it to the
    CPU's own int64 GEMM, which is exact and native).

    Shapes:
        a (..., M, K) int64, b (K, N) int64 -> (..., M, N) int64.
    """
    check_ring_operands(a, b)
    if not (a.is_cuda or triton_interpreting()):
        raise ValueError("ring_matmul: tensors must be on CUDA (or set TRITON_INTERPRET=1 for CPU)")
    cfg = RING_MM_CONFIG
    block_m, block_n, block_k, chunk = cfg["block_m"], cfg["block_n"], cfg["block_k"], cfg["chunk"]
    if chunk % block_k or not block_k <= chunk <= MAX_CHUNK:
        raise ValueError(f"RING_MM_CONFIG: chunk={chunk} must be a multiple of block_k={block_k} and at most "
                         f"{MAX_CHUNK} (int32 sums of more digit products could overflow)")
    batch, width, n_cols = a.shape[:-2], a.shape[-1], b.shape[1]
    n_rows = a.shape[:-1].numel()
    out = torch.empty(n_rows, n_cols, dtype=torch.int64, device=a.device)
    if n_rows == 0 or n_cols == 0 or width == 0:
        return out.zero_().reshape(*batch, a.shape[-2], n_cols)
    a_planes = digit_planes(a.reshape(n_rows, width))  # (M', 8P): [A_0 | ... | A_7]
    b_planes = digit_planes(b.t(), reverse=True)  # (N, 8P): [B_7 | ... | B_0], K-contiguous
    # TMA tiles; reads past the last row or column come back as zeros
    a_desc = TensorDescriptor.from_tensor(a_planes, [block_m, block_k])
    b_desc = TensorDescriptor.from_tensor(b_planes, [block_n, block_k])
    grid = (triton.cdiv(n_rows, block_m) * triton.cdiv(n_cols, block_n),)
    _ring_mm_kernel[grid](
        a_desc, b_desc, out,
        n_rows, n_cols, a_planes.shape[1] // N_DIGITS,
        out.stride(0), out.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=cfg["group_m"], CHUNK=chunk,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out.reshape(*batch, a.shape[-2], n_cols)

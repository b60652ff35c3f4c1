"""Two signed 4-bit integers per byte: the storage format of W4A4 weights and activations.

A 4-bit quantizer (SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion
Models, section 4, W4A4) produces integers in ``[-8, 7]``. Stored one per ``int8`` they take as
much memory as 8-bit values; the point of 4 bits is to halve memory traffic, so two of them share
a byte. The layout here is the common "little-endian nibble" one: along the last dimension,
byte ``j`` holds element ``2j`` in its low nibble (bits 0-3) and element ``2j + 1`` in its high
nibble (bits 4-7), each as a 4-bit two's-complement number (``-1`` is ``0b1111``, ``-8`` is
``0b1000``). Packing along the reduction dimension ``K`` of a GEMM keeps a row's bytes
contiguous, so a kernel reads ``K / 2`` bytes per row and unpacks them in registers
(:mod:`labkit.quant._kernels`).

Unpacking a nibble ``v`` in ``[0, 15]`` back to a signed value is ``((v ^ 8) - 8)``, or, on a
whole byte ``b``: low = ``(b << 4) >> 4`` and high = ``b >> 4`` with arithmetic (sign-filling)
shifts on the byte read as ``int8``, which is what the kernels do.

What the miniature leaves out: no other layouts (interleaved for tensor-core fragments, as real
W4A4 engines use to load operands straight into MMA registers), no unsigned/asymmetric 4-bit
(zero points), no packing of 2- or 3-bit values.

Shapes: ``...`` any leading dimensions, K the packed (last) dimension, even.
Section: chapter 10, "SVDQuant: 4-bit weights and activations with a low-rank branch".
"""

from __future__ import annotations

import torch

from labkit.validation import check_tensor

__all__ = ["INT4_MAX", "INT4_MIN", "pack_int4", "unpack_int4"]

#: The range of a signed 4-bit integer.
INT4_MIN: int = -8
INT4_MAX: int = 7


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit integers two per byte along the last dimension.

    Args:
        q: integers in ``[-8, 7]`` of any integer dtype (``int8`` is usual).

    Returns:
        ``uint8`` bytes; byte ``j`` of a row is ``(q[2j] & 0xF) | (q[2j + 1] & 0xF) << 4``.

    Shapes:
        q (..., K) with K even -> (..., K / 2).

    Raises:
        TypeError: ``q`` is not an integer tensor.
        ValueError: no dimension, odd K, or a value outside ``[-8, 7]``.

    >>> pack_int4(torch.tensor([1, -1, -8, 7], dtype=torch.int8)).tolist()  # 0xF1, 0x78
    [241, 120]
    """
    check_tensor("q", q, dtype="integer", shape="(..., K)")
    if q.dim() == 0:
        raise ValueError("q must have at least one dimension (the packed dimension K is the last)")
    if q.shape[-1] % 2:
        raise ValueError(f"the last dimension K of q must be even to pack two values per byte, got K={q.shape[-1]}")
    if q.numel():
        lo, hi = int(q.min()), int(q.max())
        if lo < INT4_MIN or hi > INT4_MAX:
            raise ValueError(f"q must hold signed 4-bit values in [{INT4_MIN}, {INT4_MAX}], got values in [{lo}, {hi}]")
    nibbles = q.to(torch.int16) & 0xF  # two's-complement nibble of each value, in [0, 15]
    # byte j = element 2j (low nibble) | element 2j+1 (high nibble)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)  # (..., K/2)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    """Unpack bytes written by :func:`pack_int4` into signed 4-bit values, one per ``int8``.

    Args:
        p: packed bytes, ``uint8``.

    Returns:
        ``int8`` values in ``[-8, 7]``: ``unpack_int4(pack_int4(q)) == q`` for every valid ``q``.

    Shapes:
        p (..., K / 2) -> (..., K).

    Raises:
        TypeError: ``p`` is not a ``uint8`` tensor.
        ValueError: ``p`` has no dimension.

    >>> unpack_int4(torch.tensor([241, 120], dtype=torch.uint8)).tolist()
    [1, -1, -8, 7]
    """
    check_tensor("p", p, dtype=torch.uint8, shape="of packed int4 values")
    if p.dim() == 0:
        raise ValueError("p must have at least one dimension (the packed dimension is the last)")
    wide = p.to(torch.int16)
    lo = ((wide & 0xF) ^ 8) - 8  # sign-extend the low nibble: 0..7 -> 0..7, 8..15 -> -8..-1
    hi = ((wide >> 4) ^ 8) - 8
    # interleave back: element 2j = low nibble of byte j, element 2j+1 = its high nibble
    return torch.stack((lo, hi), dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1]).to(torch.int8)  # (..., K)

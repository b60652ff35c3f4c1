"""The ring Z_2^64 and fixed-point numbers in it: the arithmetic under every share.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), which, like
most MPC frameworks for neural networks (SecretFlow-SPU, CrypTen, ABY3), computes on integers
modulo 2^64 and encodes real numbers as fixed-point integers.

Intuition: secret sharing needs a finite group in which "add a uniformly random element"
hides everything. Integers modulo 2^64 are that group, and a CPU or GPU already implements
them: ``torch.int64`` addition, subtraction and multiplication wrap around in two's
complement, which *is* arithmetic modulo 2^64 (with representatives in [-2^63, 2^63)).
Reals enter the ring as fixed point: ``v`` is stored as the integer ``round(v * 2^f)``; sums
of encodings are encodings of sums; a product carries ``2f`` fractional bits and must be
shifted right by ``f`` (truncation, see :mod:`labkit.mpc.beaver`).

Here: uniform ring elements (from a party's private :class:`~labkit.mpc.prg.PRG`, or from a
seeded ``torch.Generator`` for reproducible demonstrations on plain tensors), conversion to
and from Python integers (to check wrap-around against exact arithmetic mod 2^64),
fixed-point encode/decode with ``f`` fractional bits (default 16), and the top byte / bit
extraction that the notebooks use to test that shares look uniform.

Ranges: :func:`encode` accepts ``|v| < 2^(62 - f)`` (:func:`representable_range`), so that a sum
of two encodings still fits in 63 bits. A *product* of two secrets is far tighter: before
truncation it carries ``2f`` fractional bits, and SecureML's local truncation
(:mod:`labkit.mpc.beaver`) is only right modulo ``2^(64 - 2f)``: each element comes out
shifted by that much with probability ``|x y| / 2^(64 - 2f)`` (:func:`product_range`: 2^32 =
4.3e9 at f = 16). Reliable products stay orders of magnitude below it: ``x * x`` for
``x = 4e4`` (1.6e9) comes out as ``1.6e9 - 2^32 = -2.69e9`` for about 37% of the elements.

What the miniature leaves out: rings of other sizes (Z_2^32 halves traffic, PUMA/SPU use
both), fields (Shamir sharing), and fixed-point overflow detection on shared values: the
caller keeps the ranges above in mind.

Shapes: any; every function works elementwise on int64 (ring) or float (plain) tensors.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import math

import torch

from ..validation import check_int
from .prg import PRG

__all__ = [
    "DEFAULT_FRAC_BITS",
    "MAX_FRAC_BITS",
    "RING_BITS",
    "broadcast_shape",
    "check_frac_bits",
    "check_ring",
    "decode",
    "encode",
    "from_int",
    "random_ring",
    "representable_range",
    "product_range",
    "ring_mm",
    "to_int",
    "top_byte",
]

RING_BITS = 64  # the ring is Z_2^RING_BITS, stored as torch.int64
DEFAULT_FRAC_BITS = 16  # fractional bits f of the fixed-point encoding (resolution 2^-16 ~ 1.5e-5)
MAX_FRAC_BITS = 30  # products carry 2f bits: 2 * 30 = 60 leaves 3 bits of integer range


def check_frac_bits(frac_bits: object) -> int:
    """Return ``frac_bits`` if it is an int in ``[1, MAX_FRAC_BITS]``, else raise.

    Why the range: a fixed-point product holds ``2f`` fractional bits before truncation,
    and it must fit in 63 bits with room for the integer part.
    """
    return check_int("frac_bits", frac_bits, 1, MAX_FRAC_BITS)


def broadcast_shape(*shapes: tuple[int, ...] | torch.Size, what: str = "operands") -> tuple[int, ...]:
    """PyTorch's broadcasting rule in plain Python: the shape of ``a op b``.

    (``torch.broadcast_shapes`` imports ``torch._refs`` on first use, seconds in a fresh
    process: each spawned party would pay it.)

    Raises:
        ValueError: the shapes do not broadcast; the message names ``what``.
    """
    ndim = max(len(s) for s in shapes)
    out = []
    for i in range(ndim):
        dims = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0} - {1}
        if len(dims) > 1:
            listed = " and ".join(str(tuple(s)) for s in shapes)
            raise ValueError(f"mismatched shapes for {what}: {listed} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def check_ring(name: str, tensor: object) -> torch.Tensor:
    """Return ``tensor`` if it is an int64 tensor (a ring element), else raise ``TypeError``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of dtype int64 (ring Z_2^64), got {type(tensor).__name__}")
    if tensor.dtype != torch.int64:
        raise TypeError(f"{name} must have dtype torch.int64 (ring Z_2^64), got {tensor.dtype}")
    return tensor


def random_ring(shape: tuple[int, ...] | torch.Size, *, generator: PRG | torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform elements of Z_2^64, drawn from ``generator``.

    A :class:`~labkit.mpc.prg.PRG` (a party's private randomness) gives whole 64-bit words.
    A ``torch.Generator`` (plain-tensor demonstrations and tests, reproducible but not secret)
    cannot draw the whole int64 range at once, so two independent uniform 32-bit halves are
    glued: ``hi * 2^32 + lo``, uniform over all 2^64 words.

    Args:
        shape: output shape.
        generator: a party's :class:`~labkit.mpc.prg.PRG`, or a seeded ``torch.Generator``.
        device: where the tensor lives.

    Returns:
        An int64 tensor of ``shape``.
    """
    if isinstance(generator, PRG):
        return generator.words(tuple(shape)).to(device)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a labkit.mpc.PRG or a torch.Generator, got {type(generator).__name__}")
    shape = tuple(shape)
    hi = torch.randint(0, 2**32, shape, generator=generator, dtype=torch.int64)
    lo = torch.randint(0, 2**32, shape, generator=generator, dtype=torch.int64)
    return ((hi << 32) | lo).to(device)  # hi << 32 wraps into the sign bit: all 2^64 words


def from_int(values: list[int] | int) -> torch.Tensor:
    """Python integers (any size) reduced mod 2^64, as int64 ring elements.

    Used by the tests to compare tensor arithmetic with exact arithmetic mod 2^64.
    """
    items = values if isinstance(values, list) else [values]
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"from_int takes Python ints, got {type(v).__name__}")
        v %= 2**RING_BITS
        out.append(v - 2**RING_BITS if v >= 2 ** (RING_BITS - 1) else v)  # signed representative
    return torch.tensor(out, dtype=torch.int64)


def to_int(tensor: torch.Tensor) -> list[int]:
    """Ring elements as Python integers in ``[0, 2^64)`` (the unsigned representatives)."""
    check_ring("tensor", tensor)
    return [int(v) % 2**RING_BITS for v in tensor.reshape(-1).tolist()]


def encode(values: torch.Tensor | float | int, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """Fixed-point encoding: ``round(v * 2^f)`` as a ring element.

    The rounding error is at most ``2^-(f+1)`` per value (half a step of ``2^-f``).

    Args:
        values: real numbers (float tensor or Python number); ``|v| < 2^(62 - f)``.
        frac_bits: ``f``, fractional bits (1..30).

    Returns:
        int64 tensor of the same shape.

    Raises:
        ValueError: a value is not finite or too large for the ring.
    """
    f = check_frac_bits(frac_bits)
    if isinstance(values, bool) or not isinstance(values, (torch.Tensor, int, float)):
        raise TypeError(f"encode takes a tensor or a number, got {type(values).__name__}")
    x = torch.as_tensor(values, dtype=torch.float64) if not isinstance(values, torch.Tensor) else values
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("encode: values must be finite (no NaN or inf)")
    limit = 2.0 ** (RING_BITS - 2 - f)
    if x.numel() and float(x.abs().max()) >= limit:
        raise ValueError(f"encode: |value| must be < 2^{RING_BITS - 2 - f} = {limit:.3g} with frac_bits={f}, "
                         f"got {float(x.abs().max()):.3g}")
    return torch.round(x * 2.0**f).to(torch.int64)


def decode(ring: torch.Tensor, frac_bits: int = DEFAULT_FRAC_BITS) -> torch.Tensor:
    """Fixed-point decoding: the signed ring element divided by ``2^f``, as float64.

    Args:
        ring: int64 tensor (signed representatives, so negative values come back negative).
        frac_bits: fractional bits of the value: 0 (an integer), ``f``, or up to 62 (e.g.
            ``2f`` for an untruncated product).

    Returns:
        float64 tensor of the same shape.
    """
    check_ring("ring", ring)
    f = check_int("frac_bits", frac_bits, 0, RING_BITS - 2)
    return ring.to(torch.float64) / 2.0**f


def top_byte(ring: torch.Tensor) -> torch.Tensor:
    """The 8 most significant bits of each ring element, as integers 0..255.

    A share of a secret should have a uniform top byte; the encoding of a small secret has
    top byte 0 or 255 (its sign extension), which is what the statistical tests contrast.
    """
    check_ring("ring", ring)
    return (ring >> (RING_BITS - 8)) & 0xFF  # arithmetic shift, then keep 8 bits


def representable_range(frac_bits: int = DEFAULT_FRAC_BITS) -> float:
    """Largest magnitude :func:`encode` accepts: ``2^(62 - f)``."""
    return math.ldexp(1.0, RING_BITS - 2 - check_frac_bits(frac_bits))


def product_range(frac_bits: int = DEFAULT_FRAC_BITS) -> float:
    """The scale ``R = 2^(64 - 2f)`` that bounds a product of two fixed-point secrets.

    The untruncated product carries ``x y 2^(2f)``; SecureML's truncation
    (:func:`labkit.mpc.beaver.truncate_share`) returns ``x y`` or ``x y - R`` (sign-adjusted),
    the wrong one with probability ``|x y| / R`` per element. So ``|x y|`` must stay far
    below ``R`` (``2^-k R`` for a failure rate of ``2^-k``); at ``R`` every element is wrong.
    """
    return math.ldexp(1.0, RING_BITS - 2 * check_frac_bits(frac_bits))


def ring_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matrix product mod 2^64 with broadcast batch dimensions on both sides.

    Every product goes through :func:`labkit.mpc.ringmm.ring_matmul` (the chapter's ring
    GEMM: reference or kernel); a batched right operand is looped over, one ring GEMM per
    batch entry.

    Shapes:
        a: (..., M, K) int64; b: (K, N) or (..., K, N) int64 -> (broadcast ..., M, N).
    """
    from .ringmm import ring_matmul

    check_ring("a", a)
    check_ring("b", b)
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"ring_mm needs operands with >= 2 dims, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"ring_mm: inner dimensions differ: {tuple(a.shape)} @ {tuple(b.shape)}")
    if b.dim() == 2:
        return ring_matmul(a.contiguous(), b.contiguous())
    batch = broadcast_shape(tuple(a.shape[:-2]), tuple(b.shape[:-2]), what="@ (batch dimensions)")
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])  # (B, M, K)
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])  # (B, K, N)
    out = torch.stack([ring_matmul(a3[i].contiguous(), b3[i].contiguous()) for i in range(a3.shape[0])])
    return out.reshape(*batch, a.shape[-2], b.shape[-1])

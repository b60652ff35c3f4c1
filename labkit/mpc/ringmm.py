"""Matrix product over the ring Z_2^64: the GEMM behind every secret-shared linear layer.

Paper: "PUMA: Secure Inference of LLaMA-7B in Five Minutes". PUMA, like most MPC frameworks,
keeps additive secret shares in the ring Z_2^64: a share is an int64 whose sums and products
wrap around modulo 2^64, so reconstructing ``x = x0 + x1`` needs no carry handling and a
fixed-point matmul of shares is just an int64 matmul. Linear layers dominate the local work of
secure inference, so this one product is where a GPU should help most.

Intuition. The CPU multiplies int64 matrices natively (two's-complement wrap-around is exactly
arithmetic mod 2^64), but cuBLAS has no int64 GEMM and float64 holds only 53 bits. So an exact
GPU product cuts every entry into narrow limbs, multiplies the limbs on a unit that is exact for
them, and recombines with shifts, dropping every piece that lands at or above bit 64. Here:

- :func:`ring_matmul_reference` is the CPU int64 product (the definition), and on a GPU falls
  back to
- :func:`ring_matmul_limbs`, CrypTen's trick: unsigned ``limb_bits``-wide limbs as float64,
  one float64 GEMM per pair of limbs whose shift stays below 64 bits, each exact because its
  sums stay below 2^53, then shifted and added in int64;
- the Triton path (:mod:`labkit.mpc._kernels`) uses eight balanced 8-bit digits
  (:func:`balanced_bytes`) and int8 tensor-core dots, 36 of the 64 digit pairs.

What the miniature leaves out: rings other than Z_2^64 (SecretFlow-SPU, PUMA's framework, also
computes in Z_2^32 and Z_2^128), a batched ``b``, autotuned tiles, and fusing the truncation that
follows a fixed-point product into the GEMM's epilogue.

Shapes: M rows of ``a``, K the shared width, N columns of ``b``, L limbs per entry.
Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

import sys

import torch

from labkit.backend import Op
from labkit.validation import check_int

__all__ = [
    "balanced_bytes",
    "check_ring_operands",
    "ring_matmul",
    "ring_matmul_limbs",
    "ring_matmul_reference",
]

#: 0x8080808080808080 as an int64: 128 added to every byte of an entry.
_BYTE_BIAS = 0x8080808080808080 - 2**64
_FLOAT64_EXACT = 2**53  # float64 represents every integer of magnitude <= 2^53


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return type(x).__name__


def check_ring_operands(a: torch.Tensor, b: torch.Tensor, *, op: str = "ring_matmul") -> None:
    """Raise unless ``a`` (..., M, K) and ``b`` (K, N) are int64 tensors on one device.

    Raises:
        TypeError: an operand is not a tensor or not int64 (ring elements are int64 shares;
            encode floats to fixed point first).
        ValueError: ``a`` has fewer than 2 dimensions, ``b`` is not 2-D, their K differ, or they
            live on different devices.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {_describe(x)}")
        if x.dtype != torch.int64:
            raise TypeError(f"{op}: {name} must be int64 (ring Z_2^64 elements; encode floats to fixed "
                            f"point first), got {x.dtype}")
    if a.dim() < 2:
        raise ValueError(f"{op}: a must have shape (..., M, K) with at least 2 dimensions, got {tuple(a.shape)}")
    if b.dim() != 2:
        raise ValueError(f"{op}: b must be a 2-D (K, N) tensor, got shape {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"{op}: a is (..., M, K) with K={a.shape[-1]} but b is (K, N) with K={b.shape[0]}")
    if a.device != b.device:
        raise ValueError(f"{op}: a and b must be on one device, got {a.device} and {b.device}")


def balanced_bytes(x: torch.Tensor) -> torch.Tensor:
    """Eight signed digits ``d_i`` in [-128, 127] with ``x = sum_i d_i * 256**i (mod 2^64)``.

    Add 128 to every byte (one wrapping int64 add of 0x8080...80), read the 8 bytes ``u_i`` of the
    sum, and take ``d_i = u_i - 128``: the 128s added and removed cancel, so the digits still spell
    ``x`` modulo 2^64, and each fits an int8 without the carries a sign-by-sign split would need.

    Args:
        x: int64 ring elements (any shape).

    Returns:
        int8 digits, least significant first.

    Shapes:
        x (...) -> (..., 8).
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise TypeError(f"balanced_bytes: x must be an int64 tensor, got {_describe(x)}")
    y = x.contiguous() + _BYTE_BIAS  # wraps mod 2^64
    if sys.byteorder == "little":  # the bytes of y in memory, least significant first
        u = y.view(torch.uint8).reshape(*x.shape, 8)  # (..., 8)
        return torch.bitwise_xor(u, 0x80).view(torch.int8)  # u - 128 as a signed byte
    shifts = torch.arange(0, 64, 8, device=x.device)
    return (((y.unsqueeze(-1) >> shifts) & 0xFF) - 128).to(torch.int8)


def _limb_chunk(n_limbs: int, limb_bits: int) -> int:
    """Largest K whose limb-pair sums, over all pairs of one shift class, stay exact in float64."""
    return (_FLOAT64_EXACT - 1) // (n_limbs * ((1 << limb_bits) - 1) ** 2)


def ring_matmul_limbs(a: torch.Tensor, b: torch.Tensor, *, limb_bits: int = 16) -> torch.Tensor:
    """``a @ b`` mod 2^64 from float64 GEMMs of limbs (CrypTen's way), exact on any device.

    Each entry is cut into L = ceil(64 / limb_bits) unsigned limbs, ``x = sum_i x_i 2^(w i)`` with
    w = ``limb_bits`` and 0 <= x_i < 2^w, so (eq. 1)

        a @ b = sum_s 2^(w s) C_s  (mod 2^64),   C_s = sum_{i + j = s} A_i @ B_j,

    and every class with ``w s >= 64`` vanishes: L (L + 1) / 2 limb GEMMs instead of L^2. One
    class is a single batched float64 matmul over its pairs summed in float64; it is exact while
    ``L K (2^w - 1)^2 < 2^53`` (each sum is an integer below float64's 53-bit mantissa), so K is cut
    into chunks that respect it (no chunking at w = 16 until K > 2^19). Then ``C_s`` is cast to
    int64, shifted left by ``w s`` (bits past 63 fall off: the reduction mod 2^64) and added with
    int64 wrap-around.

    Args:
        a: int64 ring elements, any leading batch dimensions.
        b: int64 ring elements.
        limb_bits: width w of a limb, in [1, 25]; 16 gives 4 limbs and 10 GEMMs, 22 gives
            CrypTen's 3 limbs and 6 GEMMs but K chunks of only 170.

    Returns:
        int64, equal bit for bit to the CPU's int64 ``a @ b``.

    Shapes:
        a (..., M, K), b (K, N) -> (..., M, N).
    """
    check_ring_operands(a, b, op="ring_matmul_limbs")
    width = check_int("limb_bits", limb_bits, 1, 25)
    n_limbs = -(-64 // width)
    chunk = _limb_chunk(n_limbs, width)
    mask = (1 << width) - 1
    shifts = torch.arange(n_limbs, device=a.device) * width  # (L,)
    batch = a.shape[:-2]
    out = torch.zeros(*batch, a.shape[-2], b.shape[1], dtype=torch.int64, device=a.device)
    for k0 in range(0, a.shape[-1], chunk):
        a_k, b_k = a[..., k0:k0 + chunk], b[k0:k0 + chunk]
        # unsigned limbs as float64: (L, ..., M, K) and (L, K, N); the arithmetic shift's sign bits
        # above bit 63 are masked off or fall off in the product
        a_l = ((a_k.unsqueeze(0) >> shifts.view(-1, *[1] * a.dim())) & mask).double()
        b_l = ((b_k.unsqueeze(0) >> shifts.view(-1, 1, 1)) & mask).double()
        for s in range(n_limbs):
            # eq. 1: pairs (i, s - i), one batched GEMM, summed exactly in float64
            b_rev = b_l[:s + 1].flip(0).reshape(s + 1, *[1] * len(batch), *b_l.shape[1:])  # (s+1, 1.., K, N)
            c_s = torch.matmul(a_l[:s + 1], b_rev).sum(0)  # (..., M, N)
            out += c_s.to(torch.int64) << (width * s)  # wraps mod 2^64
    return out


def ring_matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` mod 2^64: the CPU's int64 matmul, or :func:`ring_matmul_limbs` elsewhere.

    On CPU, PyTorch's int64 matmul wraps around on overflow, which is exactly arithmetic in
    Z_2^64 (the tests check it against Python integers). CUDA has no int64 GEMM ("addmm_cuda
    not implemented for 'Long'"), so other devices take the exact float64 limb product.

    Shapes:
        a (..., M, K), b (K, N) -> (..., M, N), int64.
    """
    check_ring_operands(a, b)
    if a.device.type != "cpu":
        return ring_matmul_limbs(a, b)
    return torch.matmul(a, b)


#: ``ring_matmul(a, b, backend=None)``: the product of ring elements mod 2^64. The Triton path,
#: :func:`labkit.mpc._kernels.ring_matmul_triton`, runs its kernel on CUDA tensors (or in the
#: interpreter); under ``auto``, shares held on the CPU take the reference, so it suits shares anywhere.
ring_matmul = Op("ring_matmul", reference=ring_matmul_reference, triton="labkit.mpc._kernels:ring_matmul_triton")

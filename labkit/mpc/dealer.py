"""The dealer: correlated randomness for the computing parties, made before any input exists.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). PUMA runs on
SecretFlow-SPU's 3-party replicated sharing (ABY3), where the third party computes too. We
teach the other classic layout, as CrypTen's "trusted third party" mode does: two computing
parties P0, P1 hold additive shares, and a third party P2, the *dealer*, only hands out
correlated randomness. Beaver triples are the clearest object of MPC: with a shared triple
``c = a * b`` the parties multiply shared values by opening only uniformly masked numbers.
The dealer never sees an input, so its traffic could all be sent ahead of time (offline).

Each generator returns the two parties' pieces: ``(pieces for P0, pieces for P1)``, every
piece an int64 tensor, every secret value additively (or XOR) shared between them:

- :func:`mul_triple`: ``a, b, c = a * b`` (broadcasting) for elementwise products;
- :func:`square_pair`: ``a, a^2`` for squares (half the opening of a product);
- :func:`matmul_triple`: ``A, B, C = A @ B`` for matrix products (ring GEMM);
- :func:`and_triple`: XOR-shared words ``u, v, w = u AND v`` for bitwise AND gates;
- :func:`random_bits`: a random bit ``r`` shared both ways (XOR and additive), for turning
  a XOR-shared bit into an additive one.

The dealer draws with its own private generator (:class:`~labkit.mpc.prg.PRG`, seeded from
the OS in its own process): P1 receives raw draws of it (its piece of each value is one), so a
weak or public seed would let P1 replay the dealer, learn ``a`` and unmask ``e = x - a``.
Chapter 14, section 2, runs that attack.

What the miniature leaves out: the dealer is trusted and must not collude with either party
(a colluding dealer hands P1 the other pieces: the same attack); a real deployment replaces it
by oblivious transfer or homomorphic encryption, as SecureML/Delphi do, or by a third
computing party as ABY3/PUMA do. Seed compression (a seed shared with one party replacing
that party's pieces) is left out too.

Shapes: ``shape_x`` and ``shape_y`` are the operands' shapes; the third piece has the
broadcast (or matrix product) shape.

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

import torch

from .prg import PRG
from .ring import broadcast_shape, random_ring, ring_mm
from .sharing import share, share_xor

__all__ = ["and_triple", "matmul_triple", "mul_triple", "random_bits", "square_pair"]

Pieces = tuple[list[torch.Tensor], list[torch.Tensor]]
Generator = PRG | torch.Generator


def _split(values: list[torch.Tensor], generator: Generator, *, xor: bool = False) -> Pieces:
    """Share each of ``values`` between P0 and P1; return the two lists of pieces."""
    p0, p1 = [], []
    for v in values:
        s0, s1 = (share_xor if xor else share)(v, n_parties=2, generator=generator)
        p0.append(s0)
        p1.append(s1)
    return p0, p1


def _shape(name: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TypeError(f"{name} must be a shape (tuple of non-negative ints), got {shape!r}")
    return tuple(shape)


def mul_triple(shape_x: tuple[int, ...], shape_y: tuple[int, ...], *, generator: Generator) -> Pieces:
    """Beaver triple for ``x * y``: uniform ``a`` (shape of x), ``b`` (shape of y), ``c = a * b``.

    Returns:
        ``([a0, b0, c0], [a1, b1, c1])`` with ``a0 + a1 = a`` etc. mod 2^64.
    """
    sx, sy = _shape("shape_x", shape_x), _shape("shape_y", shape_y)
    broadcast_shape(sx, sy, what="*")  # raises if the operands cannot be multiplied
    a = random_ring(sx, generator=generator)
    b = random_ring(sy, generator=generator)
    return _split([a, b, a * b], generator)  # c = a * b, wrapping


def square_pair(shape: tuple[int, ...], *, generator: Generator) -> Pieces:
    """Pair for ``x^2``: uniform ``a`` and ``a^2``.

    Returns:
        ``([a0, s0], [a1, s1])`` with ``a0 + a1 = a``, ``s0 + s1 = a^2``.
    """
    a = random_ring(_shape("shape", shape), generator=generator)
    return _split([a, a * a], generator)


def matmul_triple(shape_x: tuple[int, ...], shape_y: tuple[int, ...], *, generator: Generator) -> Pieces:
    """Beaver triple for ``X @ Y``: uniform ``A``, ``B`` and ``C = A @ B`` mod 2^64.

    Shapes:
        shape_x (..., M, K), shape_y (K, N) or (..., K, N); C is (..., M, N).
    """
    sx, sy = _shape("shape_x", shape_x), _shape("shape_y", shape_y)
    a = random_ring(sx, generator=generator)
    b = random_ring(sy, generator=generator)
    return _split([a, b, ring_mm(a, b)], generator)


def and_triple(shape_x: tuple[int, ...], shape_y: tuple[int, ...], *, generator: Generator) -> Pieces:
    """Bitwise AND triple on 64-bit words: uniform ``u``, ``v`` and ``w = u AND v``, XOR-shared.

    Each of the 64 bit positions is an independent Boolean Beaver triple: one word carries
    64 AND gates at once (bit slicing).

    Returns:
        ``([u0, v0, w0], [u1, v1, w1])`` with ``u0 ^ u1 = u`` etc.
    """
    sx, sy = _shape("shape_x", shape_x), _shape("shape_y", shape_y)
    broadcast_shape(sx, sy, what="AND")
    u = random_ring(sx, generator=generator)
    v = random_ring(sy, generator=generator)
    return _split([u, v, u & v], generator, xor=True)


def random_bits(shape: tuple[int, ...], *, generator: Generator) -> Pieces:
    """A uniform bit ``r`` per element, shared twice: as XOR shares and as additive shares.

    Returns:
        ``([rx0, ra0], [rx1, ra1])`` with ``rx0 ^ rx1 = r`` (words 0/1) and ``ra0 + ra1 = r``.
    """
    s = _shape("shape", shape)
    r = random_ring(s, generator=generator) & 1
    x0 = random_ring(s, generator=generator) & 1
    a0, a1 = share(r, n_parties=2, generator=generator)
    return [x0, a0], [x0 ^ r, a1]

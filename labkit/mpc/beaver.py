"""Multiplying in secret: Beaver triples for products and matmuls, and fixed-point truncation.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023): most of a
transformer's secure cost is its matrix products, each a secret-times-secret product
(prompt activations times private weights). PUMA gets them from SPU's ABY3 protocol; we
use Beaver's triples from a dealer (Beaver, "Efficient multiparty protocols using circuit
randomization", CRYPTO 1991), which have the same one-round shape.

Intuition: to multiply shared ``x`` and ``y``, the dealer hands out a shared triple
``a, b, c = a b`` (uniform ``a, b``). The parties open ``e = x - a`` and ``f = y - b``:
both are uniformly masked, so they reveal nothing. Then

    x y = (e + a)(f + b) = e f + e b + a f + c,

and each term is local: ``e, f`` are public, ``a, b, c`` shared, so party i holds
``z_i = c_i + e b_i + a_i f + [i = 0] e f``. The same identity with ``@`` gives a matrix
product from a matrix triple ``C = A @ B`` (one round, traffic ``|X| + |Y|`` per party).

Truncation: a product of two fixed-point numbers carries ``2f`` fractional bits. SecureML
(Mohassel and Zhang, 2017) shows that each party may shift its own share: P0 takes
``x0 >> f``, P1 takes ``-((-x1) >> f)``. The result is ``floor(x / 2^f)`` or one more
(off by at most one unit of ``2^-f``), except when the two shares wrap around 2^64 in
opposite directions, which for ``|x| < 2^l`` happens with probability at most
``2^(l + 1 - 64)`` and then the result is off by about ``2^(64 - f)``: a rare, huge error.
With ``f = 16``, operands below 8 in magnitude give products below ``2^(2f + 6) = 2^38``
in the ring, which fail with probability at most ``2^-25`` per element.

What the miniature leaves out: ABY3's exact truncation with correlated pairs, the 2-party
protocols that replace the dealer (OT/HE triple generation), and batching several products
into one round.

Shapes: ``x`` and ``y`` broadcast for ``*``; ``(..., M, K) @ (K, N)`` or batched
``(..., M, K) @ (..., K, N)`` for ``@``.

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch

from ..validation import check_int
from .dealer import matmul_triple, mul_triple, square_pair
from .ring import RING_BITS, broadcast_shape, check_ring, encode, ring_mm

if TYPE_CHECKING:  # annotations only: results are built through the operand (x.wrap), no import cycle
    from .shared import Shared

__all__ = ["beaver_matmul", "beaver_mul", "beaver_square", "finish_product", "public_matmul", "public_mul",
           "truncate", "truncate_share"]


def truncate_share(share: torch.Tensor, bits: int, *, party: int) -> torch.Tensor:
    """SecureML's local truncation of one party's share by ``bits``.

    Args:
        share: int64 share.
        bits: how many bits to drop (divide by ``2^bits``).
        party: 0 (computes ``share >> bits``) or 1 (computes ``-((-share) >> bits)``).

    Returns:
        The new share; the two new shares add up to ``floor(x / 2^bits)`` or one more, except
        with probability at most ``2^(l + 1 - 64)`` for ``|x| < 2^l``.
    """
    check_ring("share", share)
    b = check_int("bits", bits, 0, RING_BITS - 2)
    party = check_int("party", party, 0, 1)
    return share >> b if party == 0 else -((-share) >> b)  # arithmetic shifts on signed words


def finish_product(x: Shared, z: torch.Tensor, frac_bits: int) -> Shared:
    """Wrap this party's share ``z`` of a product as a ``Shared``, truncating when needed.

    Args:
        x: an operand of the product (gives the party context).
        z: this party's int64 share of the product.
        frac_bits: fractional bits ``z`` carries: the sum of the operands' (0, f or 2f);
            with ``2f`` the share is truncated by ``f`` (SecureML, local).

    Returns:
        A ``Shared`` with ``frac_bits`` 0 or ``f``.
    """
    ctx = x.ctx
    if frac_bits > ctx.frac_bits:  # fixed x fixed: 2f bits, drop f of them
        if ctx.audit is not None and not ctx.is_dealer:
            ctx.audit.append(z.reshape(-1).clone())
        z = z if ctx.is_dealer else truncate_share(z, frac_bits - ctx.frac_bits, party=ctx.rank)
        frac_bits = ctx.frac_bits
    return x.wrap(z, frac_bits)


def truncate(x: Shared, bits: int) -> Shared:
    """Divide a shared value by ``2^bits`` locally (SecureML truncation, no message).

    Returns:
        A share of ``x / 2^bits`` (same ``frac_bits``), off by at most one unit.
    """
    b = check_int("bits", bits, 0, RING_BITS - 2)
    ctx = x.ctx
    if ctx.audit is not None and not ctx.is_dealer:
        ctx.audit.append(x.share.reshape(-1).clone())
    z = x.share >> b if ctx.is_dealer else truncate_share(x.share, b, party=ctx.rank)
    return x.wrap(z)


def _shapes_broadcast(x: Shared, y: Shared, op: str) -> tuple[int, ...]:
    return broadcast_shape(tuple(x.shape), tuple(y.shape), what=op)


def beaver_mul(x: Shared, y: Shared) -> Shared:
    """Elementwise ``x * y`` of two shared tensors with a dealer triple (one round).

    Opens ``e = x - a`` and ``f = y - b`` together, then computes
    ``z_i = c_i + e b_i + a_i f + [i = 0] e f`` (Beaver's identity) and truncates when both
    operands are fixed point.

    Shapes:
        x, y broadcastable; result has the broadcast shape.
    """
    ctx = x.ctx
    ctx.check_owns(y)
    sx, sy = tuple(x.shape), tuple(y.shape)
    sz = _shapes_broadcast(x, y, "*")
    # show: start beaver-round
    with ctx.scope("mul"):
        # this party's pieces of the dealer's triple c = a * b (offline)
        a, b, c = ctx.correlated(partial(mul_triple, sx, sy), [sx, sy, sz])
        # the one round: open e = x - a and f = y - b (one-time pads)
        e, f = ctx.open_shares(x.share - a, y.share - b)
        z = c + e * b + a * f  # Beaver: xy = ef + eb + af + ab
        if ctx.rank == 0:
            z = z + e * f  # the public term, added once
        # 2f fractional bits -> f: SecureML's local truncation
        return finish_product(x, z, x.frac_bits + y.frac_bits)
    # show: end beaver-round


def beaver_square(x: Shared) -> Shared:
    """``x * x`` with a dealer pair ``(a, a^2)``: open only ``e = x - a`` (one round).

    ``x^2 = e^2 + 2 e a + a^2``, so ``z_i = s_i + 2 e a_i + [i = 0] e^2``.
    """
    ctx = x.ctx
    s = tuple(x.shape)
    with ctx.scope("square"):
        a, a2 = ctx.correlated(partial(square_pair, s), [s, s])
        (e,) = ctx.open_shares(x.share - a)
        z = a2 + 2 * e * a
        if ctx.rank == 0:
            z = z + e * e
        return finish_product(x, z, 2 * x.frac_bits)


def beaver_matmul(x: Shared, y: Shared) -> Shared:
    """Matrix product ``x @ y`` of two shared tensors with a dealer matrix triple (one round).

    Opens ``E = X - A`` and ``F = Y - B``; party i computes
    ``Z_i = C_i + E @ B_i + A_i @ F + [i = 0] E @ F`` with the ring GEMM
    (:func:`labkit.mpc.ringmm.ring_matmul`), then truncates.

    Shapes:
        x (..., M, K), y (K, N) or (..., K, N) -> (..., M, N).
    """
    ctx = x.ctx
    ctx.check_owns(y)
    sx, sy = tuple(x.shape), tuple(y.shape)
    if len(sx) < 2 or len(sy) < 2 or sx[-1] != sy[-2]:
        raise ValueError(f"mismatched shapes for @: {sx} and {sy} (need (..., M, K) @ (..., K, N))")
    batch = broadcast_shape(sx[:-2], sy[:-2], what="@ (batch dimensions)")
    sz = batch + (sx[-2], sy[-1])
    with ctx.scope("matmul"):
        a, b, c = ctx.correlated(partial(matmul_triple, sx, sy), [sx, sy, sz])
        e, f = ctx.open_shares(x.share - a, y.share - b)
        if ctx.is_dealer:  # placeholders: skip three GEMMs on zeros
            return finish_product(x, torch.zeros(sz, dtype=torch.int64), x.frac_bits + y.frac_bits)
        z = c + ring_mm(e, b) + ring_mm(a, f)  # Beaver with @: XY = EF + EB + AF + AB
        if ctx.rank == 0:
            z = z + ring_mm(e, f)
        return finish_product(x, z, x.frac_bits + y.frac_bits)


def public_mul(x: Shared, t: torch.Tensor, *, fractional: bool) -> Shared:
    """``x * t`` for a public tensor ``t``: local. A float ``t`` is encoded (and truncated).

    Shapes:
        x, t broadcastable.
    """
    ctx = x.ctx
    broadcast_shape(tuple(x.shape), tuple(t.shape), what="* (shared and public)")
    if not fractional:
        return x.wrap(x.share * ctx.public(t.to(torch.int64)))
    enc = ctx.public(encode(t.to(torch.float64), ctx.frac_bits))
    return finish_product(x, x.share * enc, x.frac_bits + ctx.frac_bits)


def public_matmul(x: Shared, t: torch.Tensor, *, fractional: bool, left: bool) -> Shared:
    """``x @ t`` (or ``t @ x`` when ``left``) for a public matrix ``t``: local ring GEMM."""
    ctx = x.ctx
    enc = encode(t.to(torch.float64), ctx.frac_bits) if fractional else t.to(torch.int64)
    enc = ctx.public(enc)
    a, b = (enc, x.share) if left else (x.share, enc)
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"mismatched shapes for @: {tuple(a.shape)} and {tuple(b.shape)}")
    if ctx.is_dealer:  # placeholders: the shape is all the dealer needs
        batch = broadcast_shape(tuple(a.shape[:-2]), tuple(b.shape[:-2]), what="@")
        z = torch.zeros(batch + (a.shape[-2], b.shape[-1]), dtype=torch.int64)
    else:
        z = ring_mm(a, b)
    return finish_product(x, z, x.frac_bits + (ctx.frac_bits if fractional else 0))

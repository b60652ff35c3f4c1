"""Comparing in secret: the sign bit by an adder circuit on shared bits, then ReLU, <, max.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). Every
non-linearity of a transformer that PUMA evaluates (the pieces of GeLU, the max inside
softmax) rests on a secure comparison, and comparisons are where MPC pays in rounds.

Intuition: in two's complement the sign of ``x`` is its most significant bit (MSB). The
parties hold ``x = x0 + x1 mod 2^64``, but the MSB of a sum is not a function of the two
MSBs: it depends on the carry out of the 63 lower bits. So, in CrypTen's style:

1. A2B: each party's arithmetic share *is* a 64-bit word it knows in the clear, i.e. a
   XOR-sharing of that word where the other party's piece is 0;
2. the two words are added by a Kogge-Stone (parallel prefix) adder on XOR-shared,
   bit-sliced int64 words: generate ``G = a AND b`` and propagate ``P = a XOR b``, then
   ``log2(64) = 6`` levels of ``G <- G XOR (P AND (G << s))``, ``P <- P AND (P << s)`` for
   ``s = 1, 2, 4, ..., 32``. XOR is free; every AND is a Boolean Beaver triple from the
   dealer (:func:`labkit.mpc.dealer.and_triple`), one round per level, 64 gates per word;
3. the sum's bit 63 is ``P_63 XOR G_62``; B2A turns this XOR-shared bit into an additive
   share with a dealer random bit ``r`` (open ``c XOR r``; ``c = d + r - 2 d r``).

Rounds: 1 (generate) + 6 (prefix) + 1 (B2A) = 8; see :mod:`labkit.mpc.cost` for bytes.
From the sign: ``relu(x) = x (1 - msb(x))``, ``x < y = msb(x - y)`` (valid while
``|x - y| < 2^63`` in the ring), ``where(c, a, b) = b + c (a - b)``, and the max (and the
index of the max) along a dimension by a tree of ``ceil(log2 n)`` compare-and-select levels.

What the miniature leaves out: PUMA/ABY3's 3-party bit decomposition, comparison
protocols with fewer rounds (log-depth trees with larger fan-in, function secret sharing),
and sending single bits as bits (our opened bits travel in 64-bit words).

Shapes: ``x`` any shape S; bits and results have shape S (``max_along`` drops ``dim``).

Section: chapter 14, "Multiplying in secret".
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from .cost import ADDER_LEVELS
from .dealer import and_triple, random_bits
from .ring import broadcast_shape
from .shared import Shared, cat, stack

__all__ = ["and_gates", "argmax_along", "b2a", "greater_than", "less_than", "max_along", "msb", "relu", "where"]


def and_gates(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bitwise AND of XOR-shared words ``x`` and ``y`` (this party's shares), one round.

    Open ``d = x ^ u`` and ``e = y ^ v`` for a dealer triple ``w = u & v``; then
    ``x & y = (d & e) ^ (d & v) ^ (u & e) ^ w``, the first term added by P0 only.

    Shapes:
        x, y broadcastable int64; result has the broadcast shape.
    """
    sx, sy = tuple(x.shape), tuple(y.shape)
    sz = broadcast_shape(sx, sy, what="AND")
    with ctx.scope("and"):
        u, v, w = ctx.correlated(partial(and_triple, sx, sy), [sx, sy, sz])
        d, e = ctx.open_xor(x ^ u, y ^ v)  # uniformly masked words
        z = w ^ (d & v) ^ (u & e)
        return z ^ (d & e) if ctx.rank == 0 else z


def b2a(ctx: Any, bit: torch.Tensor) -> Shared:
    """Turn a XOR-shared bit (words 0/1) into an additive integer share, one round.

    With a dealer bit ``r`` shared both ways: open ``d = c XOR r``, then
    ``c = d + r - 2 d r`` is linear in the additive shares of ``r``.
    """
    s = tuple(bit.shape)
    with ctx.scope("b2a"):
        rx, ra = ctx.correlated(partial(random_bits, s), [s, s])
        (d,) = ctx.open_xor(bit ^ rx)
        z = ra - 2 * d * ra
        if ctx.rank == 0:
            z = z + d
        return Shared(ctx, z, 0)


def msb(x: Shared) -> Shared:
    """Most significant bit of each shared value (1 where negative), as an integer share.

    A2B (each party's share as a word), Kogge-Stone addition of the two words with
    ``1 + log2(64)`` rounds of AND gates, then B2A: 8 rounds in all.

    Returns:
        ``Shared`` with ``frac_bits=0`` holding 0 or 1, shape of ``x``.
    """
    if not isinstance(x, Shared):
        raise TypeError(f"msb takes a Shared value, got {type(x).__name__}")
    ctx = x.ctx
    # show: start adder
    with ctx.scope("msb"):
        zero = torch.zeros_like(x.share)
        a = x.share if ctx.rank == 0 else zero  # A2B: word x0 as (x0, 0)
        b = zero if ctx.rank == 0 else x.share  # and word x1 as (0, x1)
        p0 = a ^ b  # propagate bits P = a XOR b (local)
        g = and_gates(ctx, a, b)  # generate bits G = a AND b
        p = p0
        for level in range(ADDER_LEVELS):
            s = 1 << level
            if level < ADDER_LEVELS - 1:
                # G and P updates share the left operand P: one opening
                both = and_gates(ctx, p, torch.stack([g << s, p << s]))
                g, p = g ^ both[0], both[1]
            else:  # the last level needs only G
                g = g ^ and_gates(ctx, p, g << s)
        # sum bit 63 = P_63 XOR carry into 63 (= G_62)
        bit = ((p0 ^ (g << 1)) >> 63) & 1
        return b2a(ctx, bit)
    # show: end adder


def relu(x: Shared) -> Shared:
    """``max(x, 0) = x * (1 - msb(x))``: 9 rounds (8 for the sign, 1 for the product)."""
    if not isinstance(x, Shared):
        raise TypeError(f"relu takes a Shared value, got {type(x).__name__}")
    with x.ctx.scope("relu"):
        return x * (1 - msb(x))


def less_than(x: Shared, y: Any) -> Shared:
    """``x < y`` as a shared 0/1 integer (``y`` shared or public): ``msb(x - y)``.

    Correct while ``|x - y|`` is below ``2^63`` in the ring (``2^(63 - f)`` as a real).
    """
    if not isinstance(x, Shared):
        raise TypeError(f"less_than takes a Shared first operand, got {type(x).__name__}")
    with x.ctx.scope("lt"):
        return msb(x - y)


def greater_than(x: Shared, y: Any) -> Shared:
    """``x > y`` as a shared 0/1 integer: ``msb(y - x)``."""
    if not isinstance(x, Shared):
        raise TypeError(f"greater_than takes a Shared first operand, got {type(x).__name__}")
    with x.ctx.scope("gt"):
        return msb((-x) + y)


def where(cond: Any, a: Any, b: Any) -> Shared:
    """Oblivious select: ``a`` where ``cond`` is 1, else ``b``, as ``b + cond (a - b)``.

    Args:
        cond: a shared 0/1 integer (from a comparison) or a public bool/0-1 tensor.
        a, b: shared or public values (at least one of ``cond``, ``a``, ``b`` shared).

    Returns:
        A ``Shared``; one Beaver product when ``cond`` and ``a - b`` are both shared.
    """
    shared = [v for v in (cond, a, b) if isinstance(v, Shared)]
    if not shared:
        raise TypeError("where needs at least one Shared operand (else use torch.where)")
    if isinstance(cond, Shared) and cond.is_fixed:
        raise ValueError("where: cond must be a 0/1 integer share (a comparison result), not fixed point")
    if not isinstance(cond, Shared):
        cond = torch.as_tensor(cond)
        if cond.is_floating_point():
            raise TypeError("where: a public cond must be a bool or integer 0/1 tensor")
    with shared[0].ctx.scope("where"):
        diff = a - b if isinstance(a, Shared) else (-b) + a if isinstance(b, Shared) else torch.as_tensor(a) - b
        picked = cond * diff if isinstance(cond, Shared) else diff * cond.to(torch.int64)
        return picked + b


def _check_reduce(x: Any, dim: Any, what: str) -> int:
    if not isinstance(x, Shared):
        raise TypeError(f"{what} takes a Shared value, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{what} needs a tensor with at least one dimension")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise ValueError(f"dim must be an int in [{-x.ndim}, {x.ndim - 1}], got {dim!r}")
    d = dim % x.ndim
    if x.shape[d] == 0:
        raise ValueError(f"{what}: dimension {d} is empty")
    return d


def max_along(x: Shared, *, dim: int = -1, keepdim: bool = False) -> Shared:
    """Maximum along ``dim`` by a tree of compare-and-select steps.

    A level of size ``m`` compares the first ``m // 2`` entries with the next ``m // 2``
    (``greater_than`` then ``where``) and carries the odd one over: ``ceil(log2 m)`` levels
    of 9 rounds each.

    Shapes:
        x (..., m, ...) -> without ``dim`` (or size 1 there when ``keepdim``).
    """
    d = _check_reduce(x, dim, "max_along")
    cur = x
    with x.ctx.scope("max"):
        while cur.shape[d] > 1:
            m = cur.shape[d]
            p = m // 2
            first, second = cur.narrow(d, 0, p), cur.narrow(d, p, p)
            top = where(greater_than(first, second), first, second)
            cur = cat([top, cur.narrow(d, 2 * p, 1)], dim=d) if m % 2 else top
    return cur if keepdim else cur.squeeze(d)


def argmax_along(x: Shared, *, dim: int = -1) -> Shared:
    """Index of the maximum along ``dim``, still secret: the tree of :func:`max_along` carrying
    each candidate's index beside its value.

    The indices start as a public ``0 .. m-1`` (a sharing of a public value is free: P0 holds
    it, P1 zero); at every level one Beaver product multiplies the comparison bit by the value
    difference and the index difference together, so the rounds are those of the maximum
    (9 per level). On ties the tree keeps one of the tied indices.

    Returns:
        A fixed-point ``Shared`` holding integers in ``[0, m)``: reveal and round.

    Shapes:
        x (..., m, ...) -> without ``dim``.
    """
    d = _check_reduce(x, dim, "argmax_along")
    m = x.shape[d]
    view = [1] * x.ndim
    view[d] = m
    with x.ctx.scope("argmax"):
        index = x.wrap(torch.zeros_like(x.share), 0) + torch.arange(m).reshape(view)  # public 0..m-1, shape S (free)
        pair = stack([x, index], dim=0)  # (2, *S): value and index travel together
        dd = d + 1
        while pair.shape[dd] > 1:
            size = pair.shape[dd]
            p = size // 2
            first, second = pair.narrow(dd, 0, p), pair.narrow(dd, p, p)
            bit = greater_than(first[0], second[0])  # (..., p, ...)
            top = where(bit, first, second)  # one product: the bit times both differences
            pair = cat([top, pair.narrow(dd, 2 * p, 1)], dim=dd) if size % 2 else top
    return pair[1].squeeze(d)

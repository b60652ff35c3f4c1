"""``Shared``: one party's share of a secret tensor, with the operators of secure arithmetic.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023). PUMA writes a
transformer as ordinary tensor code that its runtime executes on shares; here ``Shared``
plays that role for one party of the engine.

Intuition: which operations are free decides how secure inference is written. Linear maps
that involve one secret are local: adding two shares, adding a public value (P0 alone adds
it), multiplying by a public integer, summing, reshaping, indexing, concatenating, and the
SecureML truncation after a product. Products of two secrets (``*``, ``@``, ``square``)
need one round with a Beaver triple (:mod:`labkit.mpc.beaver`); signs and comparisons need
the adder circuit (:mod:`labkit.mpc.compare`).

Fixed point: a ``Shared`` carries ``frac_bits``, either the run's ``f`` (a real number
encoded as ``round(v 2^f)``) or 0 (an integer such as a comparison bit). A product of two
fixed-point values carries ``2f`` bits and is truncated by ``f``; a product with an integer
is not. A public float operand is encoded with ``f`` (and the product truncated); a public
integer (Python int or integer tensor) is used as is, for free.

What the miniature leaves out: in-place operators, autograd, dtypes other than the ring.

Shapes: a ``Shared`` has the shape of its secret; broadcasting follows PyTorch.

Section: chapter 14, "Sharing secrets".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .beaver import (beaver_matmul, beaver_mul, beaver_square, public_matmul, public_mul, truncate)
from .engine import Party
from .ring import broadcast_shape, check_ring, encode

__all__ = ["Shared", "cat", "stack"]


@Party.register_value_type
class Shared:
    """This party's additive share of a secret tensor.

    Args:
        ctx: the :class:`~labkit.mpc.engine.Party` of the run that owns the share.
        share: int64 tensor (this party's share; zeros at the dealer, which holds no share).
        frac_bits: ``ctx.frac_bits`` (fixed point) or 0 (integer).

    Raises:
        TypeError: ``ctx`` is not a Party or ``share`` is not an int64 tensor.
        ValueError: ``frac_bits`` is neither 0 nor ``ctx.frac_bits``.
    """

    __slots__ = ("ctx", "frac_bits", "share")

    def __init__(self, ctx: Party, share: torch.Tensor, frac_bits: int) -> None:
        if not isinstance(ctx, Party):
            raise TypeError(f"Shared needs a Party context, got {type(ctx).__name__}")
        check_ring("share", share)
        if frac_bits not in (0, ctx.frac_bits):
            raise ValueError(f"frac_bits must be 0 (integer) or the run's {ctx.frac_bits}, got {frac_bits}")
        self.ctx, self.share, self.frac_bits = ctx, share, frac_bits

    # ----- description --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    @property
    def ndim(self) -> int:
        return self.share.dim()

    def dim(self) -> int:
        return self.share.dim()

    def numel(self) -> int:
        return self.share.numel()

    def __len__(self) -> int:
        return len(self.share)

    @property
    def session(self) -> str:
        return self.ctx.session

    @property
    def is_fixed(self) -> bool:
        """Whether the value is a fixed-point real (``frac_bits == f``) rather than an integer."""
        return self.frac_bits > 0

    def __repr__(self) -> str:
        kind = f"fixed point f={self.frac_bits}" if self.frac_bits else "integer"
        return f"Shared(shape={tuple(self.shape)}, party=P{self.ctx.rank}, {kind}, session={self.session!r})"

    def __bool__(self) -> bool:
        raise TypeError("a secret-shared value has no truth value: secure programs may not branch on secrets "
                        "(compute both branches and use labkit.mpc.where)")

    def reveal(self, *, to: int | None = None) -> torch.Tensor | None:
        """Shorthand for ``self.ctx.reveal(self, to=to)``."""
        return self.ctx.reveal(self, to=to)

    # ----- coercion ---------------------------------------------------------------------
    def wrap(self, share: torch.Tensor, frac_bits: int | None = None) -> Shared:
        """A value of the same party holding ``share`` (``frac_bits`` defaults to this value's).

        Protocol functions return their results this way, through their operand.
        """
        return Shared(self.ctx, share, self.frac_bits if frac_bits is None else frac_bits)

    def to_fixed(self) -> Shared:
        """The same value with ``f`` fractional bits (an integer times ``2^f``: local, free)."""
        if self.is_fixed:
            return self
        return self.wrap(self.share << self.ctx.frac_bits, self.ctx.frac_bits)

    def _align(self, other: Shared) -> tuple[Shared, Shared]:
        self.ctx.check_owns(other)
        if self.frac_bits == other.frac_bits:
            return self, other
        return self.to_fixed(), other.to_fixed()

    def _public(self, value: Any) -> tuple[torch.Tensor, bool]:
        """A public operand as a tensor and whether it is fractional (float) rather than integer."""
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            raise TypeError(f"public operands must be Python numbers or torch tensors, got {type(value).__name__}")
        t = torch.as_tensor(value)
        if t.is_complex():
            raise TypeError(f"public operands must be real, got dtype {t.dtype}")
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bool:
            t = t.to(torch.int64)
        return t, t.is_floating_point()

    def _encode_public(self, value: Any) -> tuple[Shared, torch.Tensor]:
        """Encode a public addend at this value's scale (a float promotes an integer share)."""
        t, fractional = self._public(value)
        x = self.to_fixed() if fractional else self
        enc = encode(t.to(torch.float64), x.frac_bits) if x.frac_bits else t.to(torch.int64)
        return x, self.ctx.public(enc)

    # ----- addition (free) ----------------------------------------------------------------
    def __add__(self, other: Any) -> Shared:
        if isinstance(other, Shared):
            a, b = self._align(other)
            _check_broadcast(a.shape, b.shape, "+")
            return a.wrap(a.share + b.share)
        x, enc = self._encode_public(other)
        _check_broadcast(x.shape, enc.shape, "+")
        # only P0 adds a public value; P1 adds zeros so both shares take the broadcast shape
        return x.wrap(x.share + (enc if self.ctx.rank == 0 else torch.zeros_like(enc)))

    __radd__ = __add__

    def __neg__(self) -> Shared:
        return self.wrap(-self.share)

    def __sub__(self, other: Any) -> Shared:
        if isinstance(other, Shared):
            return self + (-other)
        t, _ = self._public(other)
        return self + (-t)

    def __rsub__(self, other: Any) -> Shared:
        return (-self) + other

    # ----- products -------------------------------------------------------------------------
    def __mul__(self, other: Any) -> Shared:
        if isinstance(other, Shared):
            return beaver_mul(self, other)
        t, fractional = self._public(other)
        return public_mul(self, t, fractional=fractional)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Shared:
        if isinstance(other, Shared):
            raise TypeError("dividing by a secret is not a local operation: use labkit.mpc.approx.reciprocal")
        t, _ = self._public(other)
        return public_mul(self, 1.0 / t.to(torch.float64), fractional=True)

    def __rtruediv__(self, other: Any) -> Shared:
        raise TypeError("dividing by a secret is not a local operation: use labkit.mpc.approx.reciprocal")

    def __matmul__(self, other: Any) -> Shared:
        if isinstance(other, Shared):
            return beaver_matmul(self, other)
        t, fractional = self._public(other)
        return public_matmul(self, t, fractional=fractional, left=False)

    def __rmatmul__(self, other: Any) -> Shared:
        t, fractional = self._public(other)
        return public_matmul(self, t, fractional=fractional, left=True)

    def square(self) -> Shared:
        """``x * x`` with a square pair: one round, half the opening of a product."""
        return beaver_square(self)

    def truncate(self, bits: int) -> Shared:
        """Divide by ``2^bits`` (SecureML's local truncation, off by at most one unit)."""
        return truncate(self, bits)

    # ----- reductions and views (free) ----------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Shared:
        if dim is None:
            return self.wrap(self.share.sum())
        return self.wrap(self.share.sum(dim=dim, keepdim=keepdim))

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Shared:
        """Sum, then a public multiplication by ``1 / count`` (fixed point, truncated)."""
        dims = range(self.ndim) if dim is None else [dim] if isinstance(dim, int) else dim
        count = math.prod(self.shape[d] for d in dims)
        return self.sum(dim, keepdim) * (1.0 / count)

    def reshape(self, *shape: Any) -> Shared:
        return self.wrap(self.share.reshape(*shape))

    def view(self, *shape: Any) -> Shared:
        return self.wrap(self.share.view(*shape))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Shared:
        return self.wrap(self.share.flatten(start_dim, end_dim))

    def transpose(self, dim0: int, dim1: int) -> Shared:
        return self.wrap(self.share.transpose(dim0, dim1))

    def permute(self, *dims: Any) -> Shared:
        return self.wrap(self.share.permute(*dims))

    def unsqueeze(self, dim: int) -> Shared:
        return self.wrap(self.share.unsqueeze(dim))

    def squeeze(self, dim: int | None = None) -> Shared:
        return self.wrap(self.share.squeeze() if dim is None else self.share.squeeze(dim))

    def expand(self, *sizes: Any) -> Shared:
        return self.wrap(self.share.expand(*sizes))

    def narrow(self, dim: int, start: int, length: int) -> Shared:
        return self.wrap(self.share.narrow(dim, start, length))

    @property
    def mT(self) -> Shared:  # noqa: N802 - mirrors torch.Tensor.mT
        """Transpose of the last two dimensions."""
        return self.wrap(self.share.mT)

    def __getitem__(self, index: Any) -> Shared:
        return self.wrap(self.share[index])

    # ----- comparisons (adder circuit) ------------------------------------------------------------
    def msb(self) -> Shared:
        """The sign bit (1 where the value is negative) as an integer share."""
        from .compare import msb

        return msb(self)

    def relu(self) -> Shared:
        from .compare import relu

        return relu(self)

    def __lt__(self, other: Any) -> Shared:
        from .compare import less_than

        return less_than(self, other)

    def __gt__(self, other: Any) -> Shared:
        from .compare import greater_than

        return greater_than(self, other)

    def __le__(self, other: Any) -> Shared:
        return 1 - (self > other)

    def __ge__(self, other: Any) -> Shared:
        return 1 - (self < other)

    def max(self, dim: int = -1, keepdim: bool = False) -> Shared:
        """Maximum along ``dim`` by a tree of comparisons (ceil(log2 n) levels)."""
        from .compare import max_along

        return max_along(self, dim=dim, keepdim=keepdim)


def _check_broadcast(a: torch.Size, b: torch.Size, op: str) -> None:
    broadcast_shape(tuple(a), tuple(b), what=op)


def _check_many(values: Sequence[Shared], what: str) -> list[Shared]:
    if isinstance(values, Shared) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{what} takes a non-empty list of Shared values")
    for v in values:
        if not isinstance(v, Shared):
            raise TypeError(f"{what} takes Shared values, got {type(v).__name__}")
        values[0].ctx.check_owns(v)
    if any(v.frac_bits != values[0].frac_bits for v in values):
        values = [v.to_fixed() for v in values]
    return list(values)


def cat(values: Sequence[Shared], dim: int = 0) -> Shared:
    """Concatenate shares (free: each party concatenates its own)."""
    vs = _check_many(values, "cat")
    return vs[0].wrap(torch.cat([v.share for v in vs], dim=dim))


def stack(values: Sequence[Shared], dim: int = 0) -> Shared:
    """Stack shares along a new dimension (free)."""
    vs = _check_many(values, "stack")
    return vs[0].wrap(torch.stack([v.share for v in vs], dim=dim))

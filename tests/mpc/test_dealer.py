"""Tests of labkit.mpc.dealer: every piece of correlated randomness satisfies its relation."""

from __future__ import annotations

import pytest
import torch

from labkit.mpc.dealer import and_triple, matmul_triple, mul_triple, random_bits, square_pair
from labkit.mpc.ring import ring_mm


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mul_triple_relation_and_broadcast() -> None:
    p0, p1 = mul_triple((3, 4), (4,), generator=_g())
    a, b, c = (u + v for u, v in zip(p0, p1))
    assert a.shape == (3, 4) and b.shape == (4,) and c.shape == (3, 4)
    assert torch.equal(c, a * b)
    assert not torch.equal(p0[0], a)  # shared, not handed out in the clear


def test_square_and_matmul() -> None:
    (a0, s0), (a1, s1) = square_pair((5,), generator=_g(1))
    assert torch.equal(s0 + s1, (a0 + a1) * (a0 + a1))
    p0, p1 = matmul_triple((2, 3, 4), (4, 5), generator=_g(2))
    a, b, c = (u + v for u, v in zip(p0, p1))
    assert c.shape == (2, 3, 5) and torch.equal(c, ring_mm(a, b))


def test_and_triple_and_random_bits() -> None:
    p0, p1 = and_triple((6,), (2, 6), generator=_g(3))
    u, v, w = (x ^ y for x, y in zip(p0, p1))
    assert torch.equal(w, u & v)
    (x0, a0), (x1, a1) = random_bits((1000,), generator=_g(4))
    r = x0 ^ x1
    assert set(r.unique().tolist()) == {0, 1}
    assert torch.equal(a0 + a1, r)
    assert 0.4 < r.double().mean() < 0.6


def test_seeded() -> None:
    first = mul_triple((3,), (3,), generator=_g(7))
    again = mul_triple((3,), (3,), generator=_g(7))
    assert all(torch.equal(x, y) for x, y in zip(first[0] + first[1], again[0] + again[1]))


def test_bad_shapes() -> None:
    with pytest.raises(TypeError):
        mul_triple(3, (3,), generator=_g())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mismatched shapes"):
        mul_triple((3,), (4,), generator=_g())
    with pytest.raises(TypeError):
        square_pair((-1,), generator=_g())

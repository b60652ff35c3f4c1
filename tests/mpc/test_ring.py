"""Tests of labkit.mpc.ring: wrap-around against exact arithmetic mod 2^64, fixed point, ring_mm."""

from __future__ import annotations

import pytest
import torch

from labkit.mpc.ring import (DEFAULT_FRAC_BITS, check_frac_bits, decode, encode, from_int, random_ring,
                             representable_range, ring_mm, to_int, top_byte)

EDGES = [0, 1, -1, 2**62, 2**63 - 1, -(2**63), 3 * 2**61 + 12345, -(2**62) - 7]


def test_int64_arithmetic_is_arithmetic_mod_2_64() -> None:
    a = from_int(EDGES)
    b = from_int(list(reversed(EDGES)))
    m = 2**64
    pa, pb = to_int(a), to_int(b)
    assert to_int(a + b) == [(x + y) % m for x, y in zip(pa, pb)]
    assert to_int(a - b) == [(x - y) % m for x, y in zip(pa, pb)]
    assert to_int(a * b) == [(x * y) % m for x, y in zip(pa, pb)]
    assert to_int(-a) == [(-x) % m for x in pa]


def test_from_int_reduces_big_integers() -> None:
    assert from_int([2**64 + 5, -(2**64) - 1, 2**63]).tolist() == [5, -1, -(2**63)]
    with pytest.raises(TypeError):
        from_int([1.5])


def test_random_ring_uses_all_64_bits_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    r = random_ring((4096,), generator=g)
    assert r.dtype == torch.int64
    bits = torch.stack([(r >> k) & 1 for k in range(64)]).double().mean(dim=1)
    assert float((bits - 0.5).abs().max()) < 0.05  # every bit, sign included, about half ones
    again = random_ring((4096,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(r, again)
    with pytest.raises(TypeError):
        random_ring((3,), generator=0)  # type: ignore[arg-type]


def test_encode_decode_hand_example_and_error_bound() -> None:
    assert encode(torch.tensor([1.5, -0.25]), 4).tolist() == [24, -4]
    assert decode(torch.tensor([24, -4]), 4).tolist() == [1.5, -0.25]
    g = torch.Generator().manual_seed(1)
    v = (torch.rand(10_000, generator=g, dtype=torch.float64) - 0.5) * 200
    for f in (1, 8, 16, 30):
        err = (decode(encode(v, f), f) - v).abs().max()
        assert float(err) <= 2.0 ** -(f + 1)


def test_encode_and_frac_bits_bad_input() -> None:
    for bad in (0, 31, -3):
        with pytest.raises(ValueError, match="frac_bits"):
            check_frac_bits(bad)
    with pytest.raises(TypeError):
        check_frac_bits(16.0)
    with pytest.raises(TypeError):
        check_frac_bits(True)
    with pytest.raises(ValueError, match="finite"):
        encode(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="< 2"):
        encode(torch.tensor([representable_range(DEFAULT_FRAC_BITS)]))
    with pytest.raises(TypeError):
        encode("1.0")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int64"):
        decode(torch.tensor([1.0]))


def test_broadcast_shape_follows_torch() -> None:
    from labkit.mpc.ring import broadcast_shape

    for a, b in [((3, 1), (4,)), ((2, 1, 5), (3, 1)), ((), (2,)), ((0,), (1,)), ((1,), (0,))]:
        assert broadcast_shape(a, b) == tuple(torch.broadcast_shapes(a, b))
    with pytest.raises(ValueError, match="mismatched shapes for \\*"):
        broadcast_shape((3,), (4,), what="*")


def test_top_byte() -> None:
    assert top_byte(torch.tensor([0, -1, 2**56, -(2**63)])).tolist() == [0, 255, 1, 128]


def test_ring_mm_matches_python_integers_and_broadcasts() -> None:
    g = torch.Generator().manual_seed(2)
    a = random_ring((2, 3, 4), generator=g)
    b = random_ring((4, 5), generator=g)
    out = ring_mm(a, b)
    pa, pb = a.tolist(), b.tolist()
    for t in range(2):
        for i in range(3):
            for j in range(5):
                exact = sum(pa[t][i][k] * pb[k][j] for k in range(4)) % 2**64
                assert int(out[t, i, j]) % 2**64 == exact
    bb = random_ring((2, 4, 5), generator=g)  # batched right operand
    outb = ring_mm(a, bb)
    assert torch.equal(outb[1], ring_mm(a[1], bb[1]))
    with pytest.raises(ValueError, match="inner"):
        ring_mm(a, random_ring((3, 5), generator=g))
    with pytest.raises(TypeError):
        ring_mm(a.double(), b)

"""XOR and Reed-Solomon over byte columns, against hand-checked values and reedsolo."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reedsolo

from labkit.comm.erasure import (generator_poly, gf_inv, gf_mul, parity_matrix, rs_decode,
                                 rs_encode, xor_parity, xor_rebuild)


def _shards(k: int, length: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(k)]


def test_field_by_hand() -> None:
    assert gf_mul(2, 128) == 0x1D  # x^8 = x^4 + x^3 + x^2 + 1 modulo 0x11d
    assert gf_mul(3, 3) == 5  # (x + 1)^2 = x^2 + 1
    assert gf_mul(0, 77) == 0 and gf_mul(1, 77) == 77
    assert generator_poly(1) == [1, 1]
    assert generator_poly(2) == [1, 3, 2]  # (x + 1)(x + 2)
    assert all(gf_mul(a, gf_inv(a)) == 1 for a in range(1, 256))


def test_xor_by_hand() -> None:
    assert xor_parity([b"\x0f\xf0", b"\xff\x00"]) == b"\xf0\xf0"
    assert xor_rebuild([b"\x0f\xf0"], b"\xf0\xf0") == b"\xff\x00"


@pytest.mark.parametrize("k, m", [(2, 1), (2, 2), (3, 2), (5, 3), (1, 4)])
def test_matches_reedsolo(k: int, m: int) -> None:
    data = _shards(k, 23, seed=k * 10 + m)
    parity = rs_encode(data, m)
    codec = reedsolo.RSCodec(nsym=m)
    for j in range(23):
        column = bytes(d[j] for d in data)
        word = bytes(codec.encode(column))
        assert word[k:] == bytes(p[j] for p in parity)
        lost = [0, k + m - 1][:m]
        damaged = bytearray(word)
        for i in lost:
            damaged[i] = 0
        decoded = bytes(codec.decode(damaged, erase_pos=lost)[0])
        ours = rs_decode([None if i in lost else s for i, s in enumerate(data + parity)], k)
        assert decoded == bytes(d[j] for d in ours) == column


def test_rs_with_one_parity_is_xor() -> None:
    data = _shards(4, 31)
    assert rs_encode(data, 1) == [xor_parity(data)]
    assert parity_matrix(4, 1).tolist() == [[1, 1, 1, 1]]


def test_any_m_losses_decode() -> None:
    k, m = 3, 3
    data = _shards(k, 17, seed=5)
    pieces = data + rs_encode(data, m)
    for lost in itertools.combinations(range(k + m), m):
        assert rs_decode([None if i in lost else p for i, p in enumerate(pieces)], k) == data


def test_bad_inputs() -> None:
    data = _shards(2, 8)
    with pytest.raises(ValueError, match="equal lengths"):
        rs_encode([data[0], data[1][:5]], 2)
    with pytest.raises(ValueError, match="k \\+ m"):
        rs_encode(_shards(250, 1), 6)
    with pytest.raises(ValueError, match="m must be >= 1"):
        rs_encode(data, 0)
    with pytest.raises(TypeError, match="m must be an int"):
        rs_encode(data, 1.5)
    with pytest.raises(ValueError, match="at most m = 2"):
        rs_decode([None, None, None, b"\x00" * 8], 2)
    with pytest.raises(ValueError, match="at least one shard"):
        xor_parity([])
    with pytest.raises(TypeError, match="uint8"):
        xor_parity([np.zeros(3, dtype=np.int32)])
    with pytest.raises(ValueError, match="gf_inv"):
        gf_inv(0)

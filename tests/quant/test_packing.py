"""labkit.quant.packing: int4 nibble order by hand, exhaustive round trips, extremes, errors."""

from __future__ import annotations

import pytest
import torch

from labkit.quant.packing import INT4_MAX, INT4_MIN, pack_int4, unpack_int4


def test_pack_by_hand() -> None:
    # element 2j in the low nibble, 2j+1 in the high one, two's complement: 1 -> 0x1, -1 -> 0xF
    q = torch.tensor([1, -1, -8, 7, 0, 3], dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0xF1, 0x78, 0x30]
    assert unpack_int4(packed).tolist() == [1, -1, -8, 7, 0, 3]


def test_every_byte_round_trips() -> None:
    every_byte = torch.arange(256, dtype=torch.int16).to(torch.uint8)
    values = unpack_int4(every_byte)
    assert values.dtype == torch.int8 and values.shape == (512,)
    assert int(values.min()) == INT4_MIN and int(values.max()) == INT4_MAX
    assert torch.equal(pack_int4(values), every_byte)
    # byte b = lo + 16 * hi with lo, hi read as signed nibbles
    lo, hi = values[0::2].int(), values[1::2].int()
    assert torch.equal((lo & 0xF) + 16 * (hi & 0xF), torch.arange(256, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_round_trip_keeps_leading_dims(dtype: torch.dtype) -> None:
    q = torch.randint(INT4_MIN, INT4_MAX + 1, (2, 3, 10), generator=torch.Generator().manual_seed(0)).to(dtype)
    packed = pack_int4(q)
    assert packed.shape == (2, 3, 5)
    assert torch.equal(unpack_int4(packed), q.to(torch.int8))
    assert torch.equal(unpack_int4(packed[1]), q[1].to(torch.int8))  # rows pack independently


def test_extremes_and_empty() -> None:
    assert pack_int4(torch.full((4,), -8, dtype=torch.int8)).tolist() == [0x88, 0x88]
    assert pack_int4(torch.full((4,), 7, dtype=torch.int8)).tolist() == [0x77, 0x77]
    assert unpack_int4(torch.tensor([0x88, 0x77], dtype=torch.uint8)).tolist() == [-8, -8, 7, 7]
    assert pack_int4(torch.zeros(3, 0, dtype=torch.int8)).shape == (3, 0)
    assert unpack_int4(torch.zeros(3, 0, dtype=torch.uint8)).shape == (3, 0)


def test_pack_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="must be even"):
        pack_int4(torch.zeros(2, 5, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\], got values in \[-9, 0\]"):
        pack_int4(torch.tensor([0, -9], dtype=torch.int8))
    with pytest.raises(ValueError, match=r"got values in \[0, 8\]"):
        pack_int4(torch.tensor([8, 0], dtype=torch.int32))
    with pytest.raises(TypeError, match="integer tensor"):
        pack_int4(torch.zeros(4))
    with pytest.raises(TypeError, match="integer tensor"):
        pack_int4(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="integer tensor"):
        pack_int4([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one dimension"):
        pack_int4(torch.tensor(3, dtype=torch.int8))


def test_unpack_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(TypeError, match="uint8"):
        unpack_int4(torch.zeros(4))
    with pytest.raises(ValueError, match="at least one dimension"):
        unpack_int4(torch.tensor(3, dtype=torch.uint8))

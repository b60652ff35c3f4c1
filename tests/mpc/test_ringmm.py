"""labkit.mpc.ringmm (reference paths): CPU int64 matmul is arithmetic mod 2^64, the digit split,
the float64 limb product (CrypTen's way) bit for bit, share linearity, and the errors."""

from __future__ import annotations

import pytest
import torch

from labkit.mpc.ringmm import (
    balanced_bytes,
    check_ring_operands,
    ring_matmul,
    ring_matmul_limbs,
    ring_matmul_reference,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ALL_MINUS_128 = 0x7F7F7F7F7F7F7F80  # every balanced digit is -128: the largest digit products


def ring(*shape: int, seed: int) -> torch.Tensor:
    """Uniform full-range int64 with the extremes planted in the first entries."""
    x = torch.randint(INT64_MIN, INT64_MAX, shape, dtype=torch.int64, generator=torch.Generator().manual_seed(seed))
    flat = x.view(-1)
    flat[: min(3, flat.numel())] = torch.tensor([INT64_MIN, INT64_MAX, -1])[: min(3, flat.numel())]
    return x


def wrap(v: int) -> int:
    """A Python integer reduced to Z_2^64, written as a signed int64."""
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def exact_product(a: torch.Tensor, b: torch.Tensor) -> list[list[int]]:
    """``a @ b`` mod 2^64 in unbounded Python integers, the ground truth."""
    al, bl = a.tolist(), b.tolist()
    return [[wrap(sum(x * bl[t][j] for t, x in enumerate(row))) for j in range(len(bl[0]))] for row in al]


def test_ring_product_by_hand() -> None:
    a = torch.tensor([[2**62, 3], [INT64_MAX, INT64_MIN]])
    b = torch.tensor([[4], [5]])
    # 4 * 2^62 + 15 = 2^64 + 15 = 15; 4 (2^63 - 1) - 5 * 2^63 = -2^63 - 4 = 2^63 - 4 (mod 2^64)
    expected = [[15], [2**63 - 4]]
    assert expected[1][0] == wrap(4 * INT64_MAX + 5 * INT64_MIN)
    assert ring_matmul(a, b, backend="reference").tolist() == expected
    assert ring_matmul_limbs(a, b).tolist() == expected


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 7, 5), (7, 33, 4), (40, 257, 30)])
def test_cpu_int64_matmul_wraps_mod_2_64(m: int, k: int, n: int) -> None:
    """The premise of the reference: torch's CPU int64 matmul is exact arithmetic in Z_2^64."""
    a, b = ring(m, k, seed=m + k), ring(k, n, seed=k + n + 1)
    assert (a @ b).tolist() == exact_product(a, b)


def test_balanced_bytes_digits_spell_the_entry() -> None:
    x = torch.cat([torch.tensor([0, 1, -1, 127, 128, -128, -129, INT64_MIN, INT64_MAX, ALL_MINUS_128]),
                   ring(50, seed=1)])
    d = balanced_bytes(x)
    assert d.dtype == torch.int8 and d.shape == (60, 8)
    for value, digits in zip(x.tolist(), d.tolist()):
        assert wrap(sum(di * 256**i for i, di in enumerate(digits))) == value
    assert d[:7].tolist() == [[0] * 8, [1] + [0] * 7, [-1] + [0] * 7, [127] + [0] * 7,
                              [-128, 1] + [0] * 6, [-128] + [0] * 7, [127, -1] + [0] * 6]
    assert d[7].tolist() == [0] * 7 + [-128] and d[9].tolist() == [-128] * 8
    assert balanced_bytes(ring(2, 3, 4, seed=2)).shape == (2, 3, 4, 8)


@pytest.mark.parametrize("limb_bits", [16, 8, 22, 25, 13, 3])
def test_limbs_equal_cpu_product_bit_for_bit(limb_bits: int) -> None:
    """Every limb width, full-range entries; 22 and 25 bits cut K = 200 into float64-exact chunks
    (of 170 and of 2 columns)."""
    a, b = ring(7, 200, seed=limb_bits), ring(200, 9, seed=limb_bits + 100)
    assert torch.equal(ring_matmul_limbs(a, b, limb_bits=limb_bits), a @ b)


def test_limbs_overflow_cases_and_batches() -> None:
    big = torch.full((3, 40), ALL_MINUS_128)
    extremes = torch.tensor([[INT64_MIN, INT64_MAX], [INT64_MAX, INT64_MIN]]).repeat(20, 1)  # (40, 2)
    assert torch.equal(ring_matmul_limbs(big, extremes), big @ extremes)
    mins = torch.full((2, 5), INT64_MIN)
    assert torch.equal(ring_matmul_limbs(mins, mins.t().contiguous()), torch.zeros(2, 2, dtype=torch.int64))
    a, b = ring(2, 3, 5, 33, seed=7), ring(33, 6, seed=8)  # batched a, shared b
    out = ring_matmul_limbs(a, b)
    assert out.shape == (2, 3, 5, 6) and torch.equal(out, a @ b)
    assert torch.equal(ring_matmul_limbs(a[..., 1::2, :], b[:, ::2]), a[..., 1::2, :] @ b[:, ::2])  # strided


def test_empty_products_are_zero() -> None:
    assert torch.equal(ring_matmul_limbs(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.int64)),
                       torch.zeros(3, 4, dtype=torch.int64))
    assert ring_matmul_reference(torch.zeros(0, 5, dtype=torch.int64), ring(5, 2, seed=0)).shape == (0, 2)


def test_product_of_shares_is_share_of_product() -> None:
    """Linearity in Z_2^64: additive shares of a multiply into additive shares of a @ b."""
    a, b = ring(5, 17, seed=3), ring(17, 4, seed=4)
    a0 = ring(5, 17, seed=5)
    a1 = a - a0  # shares of a, wrapping
    for backend_fn in (lambda x, y: ring_matmul(x, y, backend="reference"), ring_matmul_limbs):
        assert torch.equal(backend_fn(a0, b) + backend_fn(a1, b), a @ b)


def test_limbs_on_the_test_device(device: str) -> None:
    """On a GPU the limb product is the only exact reference: check it against the CPU's int64."""
    a, b = ring(2, 33, 65, seed=9), ring(65, 31, seed=10)
    assert torch.equal(ring_matmul_limbs(a.to(device), b.to(device)).cpu(), a @ b)
    assert torch.equal(ring_matmul(a.to(device), b.to(device), backend="reference").cpu(), a @ b)


def test_bad_inputs_get_clear_errors() -> None:
    a, b = ring(3, 4, seed=0), ring(4, 2, seed=1)
    with pytest.raises(TypeError, match="a must be int64 .* got torch.float32"):
        ring_matmul(a.float(), b, backend="reference")
    with pytest.raises(TypeError, match="b must be int64 .* got torch.int32"):
        ring_matmul_limbs(a, b.int())
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got list"):
        check_ring_operands(a, [[1, 2]] * 4)
    with pytest.raises(ValueError, match=r"a must have shape \(\.\.\., M, K\).*got \(4,\)"):
        ring_matmul(a[0], b, backend="reference")
    with pytest.raises(ValueError, match=r"b must be a 2-D \(K, N\) tensor, got shape \(1, 4, 2\)"):
        ring_matmul_limbs(a, b[None])
    with pytest.raises(ValueError, match="K=4 but b is .* K=3"):
        ring_matmul(a, b[:3], backend="reference")
    with pytest.raises(ValueError, match="one device, got cpu and meta"):
        check_ring_operands(a, b.to("meta"))
    with pytest.raises(ValueError, match=r"limb_bits must be in \[1, 25\], got 26"):
        ring_matmul_limbs(a, b, limb_bits=26)
    with pytest.raises(TypeError, match="limb_bits must be an int, got bool"):
        ring_matmul_limbs(a, b, limb_bits=True)
    with pytest.raises(TypeError, match="balanced_bytes: x must be an int64 tensor"):
        balanced_bytes(torch.zeros(3, dtype=torch.int32))

"""labkit.mpc._kernels: the int8-digit Triton ring matmul equals the CPU's int64 matmul bit for bit.

Compiled on a GPU, under TRITON_INTERPRET=1 on CPU (slow), so the shapes stay small and awkward
(1, 7, 33, 65, 130). Most tests shrink the tiles through ``RING_MM_CONFIG`` so that a product
spans several row and column tiles, ragged K steps and several int32 chunks; one runs the
default 128 x 128 x 128 tiles as a GPU would.
"""

from __future__ import annotations

import pytest
import torch

from labkit.mpc.ringmm import balanced_bytes, ring_matmul

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.mpc._kernels"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ALL_MINUS_128 = 0x7F7F7F7F7F7F7F80  # every balanced digit is -128: digit products of +2^14
SMALL = dict(block_m=16, block_n=16, block_k=32, group_m=2, num_warps=1, num_stages=1, chunk=64)


def ring(*shape: int, seed: int) -> torch.Tensor:
    """Uniform full-range int64 (on CPU) with INT64_MIN, INT64_MAX and -1 planted first."""
    x = torch.randint(INT64_MIN, INT64_MAX, shape, dtype=torch.int64, generator=torch.Generator().manual_seed(seed))
    flat = x.view(-1)
    flat[: min(3, flat.numel())] = torch.tensor([INT64_MIN, INT64_MAX, -1])[: min(3, flat.numel())]
    return x


def small_tiles(kernels, monkeypatch: pytest.MonkeyPatch, **changes: int) -> None:
    for key, value in dict(SMALL, **changes).items():
        monkeypatch.setitem(kernels.RING_MM_CONFIG, key, value)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 1), (1, 130, 7), (65, 7, 33), (33, 65, 17)])
def test_matches_cpu_int64_on_awkward_shapes(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch,
                                             m: int, k: int, n: int) -> None:
    """16 x 16 tiles, K steps of 32 (ragged unless 32 | K), int32 widened every 64 terms."""
    kernels = triton_kernels(KERNELS)
    small_tiles(kernels, monkeypatch)
    a, b = ring(m, k, seed=m * k), ring(k, n, seed=k * n + 1)
    out = kernels.ring_matmul_triton(a.to(device), b.to(device))
    assert out.dtype == torch.int64 and out.shape == (m, n)
    assert torch.equal(out.cpu(), a @ b)


def test_default_tiles(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    a, b = ring(7, 33, seed=1), ring(33, 5, seed=2)
    assert torch.equal(kernels.ring_matmul_triton(a.to(device), b.to(device)).cpu(), a @ b)


def test_batched_strided_and_even_k(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    small_tiles(kernels, monkeypatch)
    a, b = ring(2, 3, 5, 64, seed=3), ring(64, 17, seed=4)  # K = 64: every step full (EVEN_K)
    out = kernels.ring_matmul_triton(a.to(device), b.to(device))
    assert out.shape == (2, 3, 5, 17) and torch.equal(out.cpu(), a @ b)
    a_t = ring(33, 9, seed=5).t()  # (9, 33) view with strides (1, 9)
    b_t = ring(17, 33, seed=6).t()  # (33, 17) view
    assert torch.equal(kernels.ring_matmul_triton(a_t.to(device), b_t.to(device)).cpu(), a_t @ b_t)


def test_overflow_cases(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries whose every digit is -128, INT64_MIN/MAX rows: sums wrap many times around 2^64."""
    kernels = triton_kernels(KERNELS)
    small_tiles(kernels, monkeypatch)
    a = torch.full((17, 70), ALL_MINUS_128)
    a[1::3] = INT64_MIN
    a[2::3] = INT64_MAX
    b = torch.full((70, 18), ALL_MINUS_128)
    b[:, 1::2] = INT64_MIN
    assert torch.equal(kernels.ring_matmul_triton(a.to(device), b.to(device)).cpu(), a @ b)


def test_long_k_needs_the_int32_chunks(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """K = 32768 of digit products +2^14: class 3 sums 4K terms = 2^31, one past int32. With the
    default chunk (65536 terms) the product is exact; let one chunk hold a whole class and it is not."""
    kernels = triton_kernels(KERNELS)
    if device == "cpu":  # few, long interpreted steps
        small_tiles(kernels, monkeypatch, block_k=2048, chunk=65536)
        monkeypatch.setitem(kernels.DIGIT_SPLIT_CONFIG, "block_k", 4096)
    else:
        small_tiles(kernels, monkeypatch, block_k=128, chunk=65536)
    a = torch.full((1, 32768), ALL_MINUS_128)
    b = torch.full((32768, 2), ALL_MINUS_128)
    b[:, 1] = -1
    expected = a @ b
    assert torch.equal(kernels.ring_matmul_triton(a.to(device), b.to(device)).cpu(), expected)
    monkeypatch.setattr(kernels, "MAX_CHUNK", 2**19)  # lift the guard to show what it prevents
    monkeypatch.setitem(kernels.RING_MM_CONFIG, "chunk", 2**18)
    assert not torch.equal(kernels.ring_matmul_triton(a.to(device), b.to(device)).cpu(), expected)


def test_empty_shapes(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    zeros_k = kernels.ring_matmul_triton(torch.zeros(3, 0, dtype=torch.int64, device=device),
                                         torch.zeros(0, 4, dtype=torch.int64, device=device))
    assert torch.equal(zeros_k.cpu(), torch.zeros(3, 4, dtype=torch.int64))
    no_rows = kernels.ring_matmul_triton(ring(2, 0, 5, seed=0).to(device), ring(5, 3, seed=1).to(device))
    assert no_rows.shape == (2, 0, 3)


def test_digit_planes_layout(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    x = torch.tensor([[1 + 2 * 256, 3], [-1, 0]])  # digits (1, 2, 0, ..), (3, 0, ..), (-1, 0, ..), (0, ..)
    planes = kernels.digit_planes(x.to(device)).cpu()  # K = 2 padded to P = 16 columns per plane
    assert planes.shape == (2, 128) and planes.dtype == torch.int8
    assert planes[0, :2].tolist() == [1, 3] and planes[0, 16:18].tolist() == [2, 0]
    assert planes[1, :2].tolist() == [-1, 0] and planes[:, 2:16].abs().sum() == 0
    rev = kernels.digit_planes(x.to(device), reverse=True).cpu()
    assert rev[0, 112:114].tolist() == [1, 3] and rev[0, 96:98].tolist() == [2, 0]
    x = torch.randint(-(2**63), 2**63 - 1, (5, 33), dtype=torch.int64, generator=torch.Generator().manual_seed(0))
    planes = kernels.digit_planes(x.t().contiguous().t().to(device)).cpu().view(5, 8, 48)  # strided x, P = 48
    digits = balanced_bytes(x)  # (5, 33, 8), the reference split
    assert torch.equal(planes[:, :, :33], digits.permute(0, 2, 1)) and planes[:, :, 33:].abs().sum() == 0
    rev = kernels.digit_planes(x.to(device), reverse=True).cpu().view(5, 8, 48)
    assert torch.equal(rev.flip(1), planes)


def test_through_the_dispatcher(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    small_tiles(kernels, monkeypatch)
    a, b = ring(2, 9, 40, seed=11).to(device), ring(40, 6, seed=12).to(device)
    out = ring_matmul(a, b, backend="triton")
    assert torch.equal(out.cpu(), ring_matmul(a, b, backend="reference").cpu())
    a0 = ring(2, 9, 40, seed=13).to(device)  # shares of a multiply into shares of a @ b
    assert torch.equal((ring_matmul(a0, b, backend="triton") + ring_matmul(a - a0, b, backend="triton")).cpu(),
                       out.cpu())


def test_triton_rejects_bad_inputs(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    a, b = ring(3, 4, seed=0).to(device), ring(4, 2, seed=1).to(device)
    with pytest.raises(TypeError, match="a must be int64 .* got torch.float64"):
        kernels.ring_matmul_triton(a.double(), b)
    with pytest.raises(ValueError, match="K=4 but b is .* K=3"):
        kernels.ring_matmul_triton(a, b[:3])
    with pytest.raises(ValueError, match=r"b must be a 2-D \(K, N\) tensor"):
        kernels.ring_matmul_triton(a, b[None])
    with pytest.raises(ValueError, match="one device"):
        kernels.ring_matmul_triton(a, b.to("meta"))
    monkeypatch.setitem(kernels.RING_MM_CONFIG, "chunk", 2**17)
    with pytest.raises(ValueError, match="chunk=131072 must be a multiple of block_k=128 and at most 131071"):
        kernels.ring_matmul_triton(a, b)


def test_cpu_tensors_take_the_cpu_product(triton_kernels, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the interpreter (read per call) there is no kernel for CPU tensors: asked directly,
    the kernel refuses them; under ``auto`` on a GPU machine the dispatcher gives CPU shares to the
    CPU's int64 GEMM and never launches a kernel."""
    kernels = triton_kernels(KERNELS)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(kernels.RING_MM_CONFIG, "block_k", 7)  # would fail if a kernel were launched
    a, b = ring(2, 3, 40, seed=20), ring(40, 5, seed=21)
    with pytest.raises(ValueError, match="must be on CUDA"):
        kernels.ring_matmul_triton(a, b)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch.equal(ring_matmul(a, b), a @ b)

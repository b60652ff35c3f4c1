"""labkit.quant._kernels: the W8A8 and W4A4 (+ low-rank) Triton GEMMs against the references.

Compiled on a GPU, under TRITON_INTERPRET=1 on CPU (slow), so the shapes stay tiny and awkward:
M in {1, 3, 17} (one row, fewer rows than a tile, a ragged second tile), N in {24, 40} (ragged
column tiles), several quantization groups per row. The interpreter's 16 x 16 tiles give several
programs per problem; on a GPU the tests pin one small tile (``FIXED_TILES``: compiling every
autotuning candidate for every tiny shape would take minutes), except the dispatcher test, which
takes the autotuned path. Integer parts are checked exactly (unit scales, results below 2^24); the
scaled results against the float64 references within float32 rounding of the largest output.
"""

from __future__ import annotations

import pytest
import torch

from labkit.quant.gemm import w4a4_gemm, w4a4_gemm_reference, w8a8_gemm, w8a8_gemm_reference
from labkit.quant.packing import pack_int4
from labkit.testing import assert_close

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.quant._kernels"


@pytest.fixture
def kernels(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch):
    """The kernel module, freshly imported, with small tiles pinned (on a GPU: valid int8 dot shapes)."""
    module = triton_kernels(KERNELS)
    if device == "cuda":
        monkeypatch.setitem(module.FIXED_TILES, "w8a8", module.GemmTile(16, 32, 32, 2, 4, 2))
        monkeypatch.setitem(module.FIXED_TILES, "w4a4", module.GemmTile(16, 32, 0, 2, 4, 2))
    return module


def assert_near(out: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 kernel vs float64 reference: 1e-5 relative, plus 1e-5 of the largest output for cancellation."""
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    torch.testing.assert_close(out.cpu().double(), ref.cpu().double(), rtol=1e-5, atol=1e-5 * scale + 1e-6)


def w8a8_inputs(m: int, n: int, k: int, device: str, *, seed: int):
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    x_scale, w_scale = torch.rand(m, generator=g) / 50, torch.rand(n, generator=g) / 50
    bias = torch.randn(n, generator=g)
    return [t.to(device) for t in (xq, x_scale, wq, w_scale, bias)]


def w4a4_inputs(m: int, n: int, k: int, group_size: int, device: str, *, seed: int, rank: int = 0,
                lora_dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    xq = pack_int4(torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8))
    wq = pack_int4(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8))
    x_scale = torch.rand(m, k // group_size, generator=g) / 4
    w_scale = torch.rand(n, k // group_size, generator=g) / 4
    down = torch.randn(m, rank, generator=g).to(lora_dtype).to(device) if rank else None
    up = torch.randn(rank, n, generator=g).to(lora_dtype).to(device) if rank else None
    bias = torch.randn(n, generator=g).to(device)
    return [t.to(device) for t in (xq, x_scale, wq, w_scale)], down, up, bias


@pytest.mark.parametrize("m,n,k", [(1, 24, 64), (3, 40, 96), (17, 24, 100), (17, 40, 32)])
def test_w8a8_matches_reference(kernels, device: str, m: int, n: int, k: int) -> None:
    xq, x_scale, wq, w_scale, bias = w8a8_inputs(m, n, k, device, seed=m + n + k)
    for b in (None, bias):
        out = kernels.w8a8_gemm_triton(xq, x_scale, wq, w_scale, bias=b)
        assert out.shape == (m, n) and out.dtype == torch.float32
        assert_near(out, w8a8_ref64(xq, x_scale, wq, w_scale, b))
        assert_close(out, w8a8_gemm_reference(xq, x_scale, wq, w_scale, bias=b), backend="triton")
    # the integer part alone (unit scales) is exact
    ones_m, ones_n = torch.ones(m, device=device), torch.ones(n, device=device)
    exact = kernels.w8a8_gemm_triton(xq, ones_m, wq, ones_n)
    assert torch.equal(exact.cpu(), (xq.cpu().double() @ wq.cpu().double().T).float())


def w8a8_ref64(xq, x_scale, wq, w_scale, bias) -> torch.Tensor:
    """The reference's math before its final rounding (float64), for tight comparisons."""
    out = (xq.double() @ wq.double().T) * x_scale.double()[:, None] * w_scale.double()[None, :]
    return out if bias is None else out + bias.double()


def test_w8a8_extremes_strides_and_half_output(kernels, device: str) -> None:
    ones_m, ones_n = torch.ones(17, device=device), torch.ones(24, device=device)
    for value in (-128, 127):  # |sum| = 128 * 128 * 96 = 1 572 864 < 2^24: exact in float32
        xq = torch.full((17, 96), value, dtype=torch.int8, device=device)
        wq = torch.full((24, 96), value, dtype=torch.int8, device=device)
        out = kernels.w8a8_gemm_triton(xq, ones_m, wq, ones_n)
        assert torch.equal(out.cpu(), torch.full((17, 24), float(value * value * 96)))
    xq, x_scale, wq, w_scale, bias = w8a8_inputs(17, 24, 96, device, seed=4)
    strided_w = wq.T.contiguous().T  # same values, (K, N) storage: a transposed view
    assert_near(kernels.w8a8_gemm_triton(xq, x_scale, strided_w, w_scale, bias=bias),
                w8a8_ref64(xq, x_scale, wq, w_scale, bias))
    half = kernels.w8a8_gemm_triton(xq, x_scale, wq, w_scale, bias=bias, out_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert_close(half, w8a8_gemm_reference(xq, x_scale, wq, w_scale, bias=bias, out_dtype=torch.float16),
                 backend="triton")


@pytest.mark.parametrize("m,n,k,group_size,rank", [
    (1, 24, 128, 64, 0),  # one row, two groups
    (3, 40, 192, 64, 5),  # three groups, rank below the 16-wide low-rank tile
    (17, 24, 128, 32, 8),  # G = 32: the interleaved (tl.join) path, four groups
    (17, 40, 512, 256, 70),  # two groups of two 128-byte steps, rank over one 64-wide tile
])
def test_w4a4_matches_reference(kernels, device: str, m: int, n: int, k: int, group_size: int,
                                rank: int) -> None:
    (xq, x_scale, wq, w_scale), down, up, bias = w4a4_inputs(m, n, k, group_size, device, seed=k + rank, rank=rank)
    cases = [dict(), dict(bias=bias)] + ([dict(lora_down_out=down, lora_up=up, bias=bias)] if rank else [])
    for extra in cases:
        out = kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=group_size, **extra)
        assert out.shape == (m, n) and out.dtype == torch.float32
        ref = w4a4_gemm_reference(xq.cpu(), x_scale.cpu(), wq.cpu(), w_scale.cpu(), group_size=group_size,
                                  **{key: v.cpu() for key, v in extra.items()})
        assert_near(out, ref)


def test_w4a4_integer_part_is_exact_and_groups_stay_apart(kernels, device: str) -> None:
    (xq, x_scale, wq, w_scale), _, _, _ = w4a4_inputs(17, 40, 192, 64, device, seed=9)
    ones_x, ones_w = torch.ones_like(x_scale), torch.ones_like(w_scale)
    exact = kernels.w4a4_gemm_triton(xq, ones_x, wq, ones_w, group_size=64)
    assert torch.equal(exact.cpu(), w4a4_gemm_reference(xq.cpu(), ones_x.cpu(), wq.cpu(), ones_w.cpu(),
                                                        group_size=64))
    for group in range(3):  # only one group's scale is non-zero: a group boundary off by one shows here
        only = torch.zeros_like(x_scale)
        only[:, group] = x_scale[:, group]
        out = kernels.w4a4_gemm_triton(xq, only, wq, w_scale, group_size=64)
        assert_near(out, w4a4_gemm_reference(xq.cpu(), only.cpu(), wq.cpu(), w_scale.cpu(), group_size=64))
    for value in (-8, 7):  # |sum| = 64 * 192 per output: exact
        full = pack_int4(torch.full((17, 192), value, dtype=torch.int8)).to(device)
        out = kernels.w4a4_gemm_triton(full, ones_x, full[:3], torch.ones(3, 3, device=device), group_size=64)
        assert torch.equal(out.cpu(), torch.full((17, 3), float(value * value * 192)))


def test_w4a4_half_precision_low_rank_and_output(kernels, device: str) -> None:
    (xq, x_scale, wq, w_scale), down, up, bias = w4a4_inputs(17, 24, 128, 64, device, seed=2, rank=32,
                                                             lora_dtype=torch.float16)
    ref = w4a4_gemm_reference(xq.cpu(), x_scale.cpu(), wq.cpu(), w_scale.cpu(), group_size=64,
                              lora_down_out=down.cpu(), lora_up=up.cpu(), bias=bias.cpu())
    out = kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=64, lora_down_out=down, lora_up=up,
                                   bias=bias)
    assert_near(out, ref)  # float16 operands, exact products, float32 sums
    half = kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=64, lora_down_out=down, lora_up=up,
                                    bias=bias, out_dtype=torch.float16)
    assert half.dtype == torch.float16
    assert_close(half, ref.half(), backend="triton")


def test_other_tiles(kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other tile shapes and program groupings give the same results (the GPU path autotunes them)."""
    monkeypatch.setitem(kernels.FIXED_TILES, "w8a8", kernels.GemmTile(32, 16, 64, 1, 1, 1))
    monkeypatch.setitem(kernels.FIXED_TILES, "w4a4", kernels.GemmTile(16, 32, 0, 3, 1, 1))
    xq, x_scale, wq, w_scale, bias = w8a8_inputs(40, 40, 160, device, seed=6)
    assert_near(kernels.w8a8_gemm_triton(xq, x_scale, wq, w_scale, bias=bias),
                w8a8_ref64(xq, x_scale, wq, w_scale, bias))
    (xq, x_scale, wq, w_scale), down, up, bias = w4a4_inputs(40, 40, 128, 64, device, seed=6, rank=4)
    out = kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=64, lora_down_out=down, lora_up=up)
    assert_near(out, w4a4_gemm_reference(xq, x_scale, wq, w_scale, group_size=64, lora_down_out=down, lora_up=up))


def test_ops_dispatch_to_triton(triton_kernels, device: str) -> None:
    triton_kernels(KERNELS)
    xq, x_scale, wq, w_scale, bias = w8a8_inputs(3, 24, 64, device, seed=1)
    assert_near(w8a8_gemm(xq, x_scale, wq, w_scale, bias=bias, backend="triton"),
                w8a8_ref64(xq, x_scale, wq, w_scale, bias))
    (xq, x_scale, wq, w_scale), down, up, bias = w4a4_inputs(3, 24, 64, 32, device, seed=1, rank=2)
    out = w4a4_gemm(xq, x_scale, wq, w_scale, group_size=32, lora_down_out=down, lora_up=up, backend="triton")
    ref = w4a4_gemm(xq, x_scale, wq, w_scale, group_size=32, lora_down_out=down, lora_up=up, backend="reference")
    assert_near(out, ref)
    empty = w4a4_gemm(xq[:0], x_scale[:0], wq, w_scale, group_size=32, backend="triton")
    assert empty.shape == (0, 24)


def test_triton_rejects_bad_inputs(kernels, device: str) -> None:
    (xq, x_scale, wq, w_scale), _, _, _ = w4a4_inputs(3, 24, 96, 16, device, seed=0)
    with pytest.raises(ValueError, match="group_size 32, 64, 128, 256 or a multiple of 256"):
        kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=16)  # valid for the reference
    with pytest.raises(ValueError, match="group_size=64 must divide the unpacked width K=96"):
        kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=64)
    with pytest.raises(ValueError, match="lora_down_out and lora_up come together"):
        kernels.w4a4_gemm_triton(xq, x_scale, wq, w_scale, group_size=16, lora_up=torch.zeros(2, 24))
    with pytest.raises(TypeError, match="xq must be a 2-D int8 tensor"):
        kernels.w8a8_gemm_triton(xq, x_scale[:, 0].contiguous(), wq, w_scale[:, 0].contiguous())
    assert kernels.w4a4_step_bytes(64) == (32, 1) and kernels.w4a4_step_bytes(1024) == (128, 4)
    for group_size in (96, 384):
        with pytest.raises(ValueError, match="the Triton path takes group_size"):
            kernels.w4a4_step_bytes(group_size)

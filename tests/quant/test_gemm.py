"""labkit.quant.gemm (reference paths): examples by hand, dequantize-then-multiply, extremes, errors."""

from __future__ import annotations

import pytest
import torch

from labkit.quant.gemm import (
    check_w4a4,
    check_w8a8,
    w4a4_gemm,
    w4a4_gemm_reference,
    w8a8_gemm,
    w8a8_gemm_reference,
)
from labkit.quant.packing import pack_int4, unpack_int4
from labkit.testing import assert_close


def w4a4_inputs(m: int, n: int, k: int, group_size: int, *, seed: int, rank: int = 0):
    """Random int4 operands (packed), positive group scales and an optional low-rank pair."""
    g = torch.Generator().manual_seed(seed)
    xq = torch.randint(-8, 8, (m, k), generator=g, dtype=torch.int8)
    wq = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    x_scale = torch.rand(m, k // group_size, generator=g) + 0.1
    w_scale = torch.rand(n, k // group_size, generator=g) + 0.1
    lora = (torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)) if rank else (None, None)
    return xq, wq, x_scale, w_scale, lora


def test_w8a8_by_hand() -> None:
    xq = torch.tensor([[1, 2], [-3, 4]], dtype=torch.int8)
    wq = torch.tensor([[1, 0], [1, 1], [-1, 2]], dtype=torch.int8)  # 3 output channels
    x_scale = torch.tensor([0.5, 2.0])
    w_scale = torch.tensor([1.0, 0.25, 4.0])
    bias = torch.tensor([0.0, 1.0, -1.0])
    # integer product [[1, 3, 3], [-3, 1, 11]], rows x (0.5, 2), columns x (1, 0.25, 4), + bias
    out = w8a8_gemm_reference(xq, x_scale, wq, w_scale, bias=bias)
    assert out.dtype == torch.float32
    assert out.tolist() == [[0.5, 1.375, 5.0], [-6.0, 1.5, 87.0]]


def test_w8a8_equals_dequantized_matmul_and_is_exact_at_the_extremes() -> None:
    g = torch.Generator().manual_seed(1)
    xq = torch.randint(-128, 128, (5, 48), generator=g, dtype=torch.int8)
    wq = torch.randint(-128, 128, (7, 48), generator=g, dtype=torch.int8)
    x_scale, w_scale, bias = torch.rand(5, generator=g), torch.rand(7, generator=g), torch.randn(7, generator=g)
    expected = (xq.double() * x_scale.double()[:, None]) @ (wq.double() * w_scale.double()[:, None]).T + bias.double()
    out = w8a8_gemm(xq, x_scale, wq, w_scale, bias=bias, out_dtype=torch.float32, backend="reference")
    assert_close(out, expected.float())
    ones_m, ones_n = torch.ones(3), torch.ones(2)
    for value, total in ((-128, 128 * 128 * 1000), (127, 127 * 127 * 1000)):
        full = w8a8_gemm_reference(torch.full((3, 1000), value, dtype=torch.int8), ones_m,
                                   torch.full((2, 1000), value, dtype=torch.int8), ones_n, out_dtype=torch.float32)
        assert torch.equal(full, torch.full((3, 2), float(total)))  # 16 384 000 < 2^24: exact in float32


def test_w4a4_by_hand() -> None:
    # K = 4, G = 2: groups {0, 1} and {2, 3}
    xq = pack_int4(torch.tensor([[1, 2, -1, 3]], dtype=torch.int8))
    wq = pack_int4(torch.tensor([[2, 1, 4, -8], [7, 0, 0, 1]], dtype=torch.int8))
    x_scale = torch.tensor([[1.0, 0.5]])
    w_scale = torch.tensor([[0.25, 2.0], [1.0, 1.0]])
    # channel 0: group 0 (1*2 + 2*1) * 1 * 0.25 = 1; group 1 (-4 - 24) * 0.5 * 2 = -28
    # channel 1: group 0 7 * 1 * 1 = 7; group 1 3 * 0.5 * 1 = 1.5
    out = w4a4_gemm_reference(xq, x_scale, wq, w_scale, group_size=2)
    assert out.tolist() == [[-27.0, 8.5]]
    down, up = torch.tensor([[2.0]]), torch.tensor([[1.0, -0.5]])  # rank 1
    out = w4a4_gemm_reference(xq, x_scale, wq, w_scale, group_size=2, lora_down_out=down, lora_up=up,
                              bias=torch.tensor([1.0, 0.0]))
    assert out.tolist() == [[-24.0, 7.5]]


@pytest.mark.parametrize("m,n,k,group_size,rank", [(3, 5, 16, 4, 0), (4, 6, 24, 8, 3), (1, 2, 8, 8, 2)])
def test_w4a4_equals_dequantized_matmul(m: int, n: int, k: int, group_size: int, rank: int) -> None:
    xq, wq, x_scale, w_scale, (down, up) = w4a4_inputs(m, n, k, group_size, seed=k + rank, rank=rank)
    x_deq = xq.double() * x_scale.double().repeat_interleave(group_size, dim=1)  # (M, K)
    w_deq = wq.double() * w_scale.double().repeat_interleave(group_size, dim=1)  # (N, K)
    expected = x_deq @ w_deq.T
    if rank:
        expected += down.double() @ up.double()
    for out_dtype in (torch.float32, torch.float16):
        out = w4a4_gemm(pack_int4(xq), x_scale, pack_int4(wq), w_scale, group_size=group_size, lora_down_out=down,
                        lora_up=up, out_dtype=out_dtype, backend="reference")
        assert out.dtype == out_dtype and out.shape == (m, n)
        assert_close(out, expected.to(out_dtype))


def test_w4a4_one_group_matches_w8a8_and_extremes_are_exact() -> None:
    xq, wq, x_scale, w_scale, _ = w4a4_inputs(4, 3, 32, 32, seed=7)
    as_w4a4 = w4a4_gemm_reference(pack_int4(xq), x_scale, pack_int4(wq), w_scale, group_size=32)
    as_w8a8 = w8a8_gemm_reference(xq, x_scale[:, 0], wq, w_scale[:, 0])
    assert_close(as_w4a4, as_w8a8)
    for value in (-8, 7):
        full = pack_int4(torch.full((2, 64), value, dtype=torch.int8))
        out = w4a4_gemm_reference(full, torch.ones(2, 4), full[:1], torch.ones(1, 4), group_size=16)
        assert torch.equal(out, torch.full((2, 1), float(value * value * 64)))


def test_w4a4_groups_are_separate() -> None:
    """A scale of zero switches a group off: the output is then the other groups' sum alone."""
    xq, wq, x_scale, w_scale, _ = w4a4_inputs(3, 4, 24, 8, seed=3)
    only_middle = x_scale.clone()
    only_middle[:, [0, 2]] = 0.0
    out = w4a4_gemm_reference(pack_int4(xq), only_middle, pack_int4(wq), w_scale, group_size=8)
    middle = (xq[:, 8:16].double() @ wq[:, 8:16].double().T) * x_scale[:, 1, None].double() * w_scale[None, :, 1]
    assert_close(out, middle.float())
    assert torch.equal(unpack_int4(pack_int4(xq)), xq)


def test_check_w8a8_rejects_bad_inputs() -> None:
    xq, wq = torch.zeros(3, 8, dtype=torch.int8), torch.zeros(5, 8, dtype=torch.int8)
    xs, ws = torch.ones(3), torch.ones(5)
    check_w8a8(xq, xs, wq, ws, bias=torch.zeros(5))  # the good case passes
    bad = [
        ((xq.float(), xs, wq, ws), {}, TypeError, "xq must be a 2-D int8 tensor"),
        ((xq, xs, wq.to(torch.uint8), ws), {}, TypeError, "wq must be a 2-D int8 tensor"),
        ((xq[0], xs, wq, ws), {}, ValueError, "xq must be a 2-D"),
        ((xq, xs, wq[:, :6], ws), {}, ValueError, "xq has K=8 columns but wq has K=6"),
        ((xq, xs[:2], wq, ws), {}, ValueError, r"x_scale must have shape \(3,\)"),
        ((xq, xs.double(), wq, ws), {}, TypeError, "x_scale must be a 1-D float32 tensor"),
        ((xq, xs, wq, ws[:, None]), {}, ValueError, "w_scale must be a 1-D"),
        ((xq, xs, wq, ws), {"bias": torch.zeros(4)}, ValueError, r"bias must have shape \(5,\)"),
        ((xq, xs, wq, ws), {"bias": torch.zeros(5, dtype=torch.int32)}, TypeError, "bias must be a 1-D float32/float16/bfloat16 tensor"),
        ((xq, xs, wq, ws), {"out_dtype": torch.int32}, TypeError, "out_dtype must be one of"),
        ((xq, xs, wq, ws), {"out_dtype": "float32"}, TypeError, "out_dtype must be one of"),
        ((xq, xs, wq, "ws"), {}, TypeError, "w_scale must be a 1-D float32 tensor.*got str"),
    ]
    for args, kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            w8a8_gemm_reference(*args, **kwargs)


def test_check_w4a4_rejects_bad_inputs() -> None:
    xq, wq = torch.zeros(3, 8, dtype=torch.uint8), torch.zeros(5, 8, dtype=torch.uint8)  # K = 16
    xs, ws = torch.ones(3, 2), torch.ones(5, 2)  # G = 8, two groups
    down, up = torch.zeros(3, 2), torch.zeros(2, 5)
    check_w4a4(xq, xs, wq, ws, group_size=8, lora_down_out=down, lora_up=up)  # the good case passes
    bad = [
        ((xq.to(torch.int8), xs, wq, ws), {}, TypeError, "xq must be a 2-D uint8 tensor"),
        ((xq, xs, wq[:, :6], ws), {}, ValueError, "xq has K/2=8 packed columns but wq has K/2=6"),
        ((xq, xs, wq, ws), {"group_size": 6}, ValueError, "group_size=6 must divide the unpacked width K=16"),
        ((xq, xs, wq, ws), {"group_size": 3}, ValueError, "group_size must be even"),
        ((xq, xs, wq, ws), {"group_size": 0}, ValueError, "group_size must be >= 2"),
        ((xq, xs, wq, ws), {"group_size": 8.0}, TypeError, "group_size must be an int"),
        ((xq, xs[:, :1], wq, ws), {}, ValueError, r"x_scale must have shape \(3, 2\)"),
        ((xq, xs, wq, ws.T), {}, ValueError, r"w_scale must have shape \(5, 2\)"),
        ((xq, xs.half(), wq, ws), {}, TypeError, "x_scale must be a 2-D float32 tensor"),
        ((xq, xs, wq, ws), {"lora_down_out": down}, ValueError, "pass both"),
        ((xq, xs, wq, ws), {"lora_up": up}, ValueError, "pass both"),
        ((xq, xs, wq, ws), {"lora_down_out": down[:2], "lora_up": up}, ValueError, "lora_down_out must have shape"),
        ((xq, xs, wq, ws), {"lora_down_out": down, "lora_up": up[:, :4]}, ValueError,
         r"lora_up must have shape \(2, 5\)"),
        ((xq, xs, wq, ws), {"lora_down_out": down, "lora_up": up.half()}, TypeError, "share a dtype"),
        ((xq, xs, wq, ws), {"lora_down_out": down.long(), "lora_up": up}, TypeError, "lora_down_out must be a 2-D float32/float16/bfloat16"),
        ((xq, xs, wq, ws), {"bias": torch.zeros(3)}, ValueError, r"bias must have shape \(5,\)"),
        ((xq, xs, wq, ws), {"out_dtype": torch.int8}, TypeError, "out_dtype must be one of"),
    ]
    for args, kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            w4a4_gemm_reference(*args, **{"group_size": 8, **kwargs})


def test_ops_dispatch_to_the_reference_on_request() -> None:
    xq, wq, x_scale, w_scale, _ = w4a4_inputs(2, 3, 16, 8, seed=0)
    out = w4a4_gemm(pack_int4(xq), x_scale, pack_int4(wq), w_scale, group_size=8, backend="reference")
    assert torch.equal(out, w4a4_gemm_reference(pack_int4(xq), x_scale, pack_int4(wq), w_scale, group_size=8))
    assert w8a8_gemm.implementation("reference") is w8a8_gemm_reference
    assert w4a4_gemm.implementation("reference") is w4a4_gemm_reference

"""Arithmetic intensity: counted FLOPs and bytes against closed forms, layers, placement, link."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.costs import H100_SXM, LLAMA_7B, Device, ModelShape
from labkit.inference.intensity import (OpCount, attention_ops, batching_factor, count_ops, decode_attention,
                                        dense_ops, gemm_intensity, layer_ops, make_layers, moe_forward, moe_ops,
                                        offload_link_bandwidth, place_layers, roofline_time,
                                        round_robin_experts, synthetic_ops, time_layers)
from labkit.runtime import Timing


def test_dense_by_hand() -> None:
    # (3, 4) @ (4, 5): 2 * 3 * 4 * 5 = 120 FLOPs; fp32 bytes 4 * (20 + 12 + 15) = 188
    assert dense_ops(3, 4, 5, bytes_per_value=4) == OpCount(120, 188)
    x, w = torch.randn(3, 4), torch.randn(4, 5)
    assert count_ops(lambda: x @ w) == OpCount(120.0, 188.0)
    assert gemm_intensity(3, 4, 5, bytes_per_value=4) == pytest.approx(120 / 188)


@pytest.mark.parametrize("batch", [1, 5, 16])
def test_counted_equals_closed_form(batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    d, n, e, k = 24, 40, 8, 2
    x = torch.randn(batch, d, generator=g, dtype=torch.float64).to(torch.bfloat16)
    w = torch.randn(d, n, generator=g).to(torch.bfloat16)
    assert count_ops(lambda: x @ w) == dense_ops(batch, d, n)
    router, experts = torch.randn(d, e).to(torch.bfloat16), torch.randn(e, d, n).to(torch.bfloat16)
    a = round_robin_experts(batch, e, k)
    assert count_ops(lambda: moe_forward(x, router, experts, k, assignment=a)) == moe_ops(
        batch, d, n, n_experts=e, top_k=k)
    q = torch.randn(batch, 6, 8).to(torch.bfloat16)
    kv = torch.randn(batch, 2, 37, 8).to(torch.bfloat16)
    assert count_ops(lambda: decode_attention(q, kv, kv)) == attention_ops(batch, 37, n_head=6, n_kv_head=2,
                                                                            head_dim=8)


def test_router_loads_are_counted() -> None:
    # a router's own top-k: the counted bytes follow the experts that actually got tokens
    g = torch.Generator().manual_seed(0)
    x, router, experts = torch.randn(7, 16, generator=g), torch.randn(16, 4, generator=g), torch.randn(4, 16, 8)
    chosen = torch.softmax(x @ router, -1).topk(2, -1).indices
    loads = [int((chosen == j).sum()) for j in range(4)]
    got = count_ops(lambda: moe_forward(x, router, experts, 2))
    assert got == moe_ops(7, 16, 8, n_experts=4, top_k=2, bytes_per_value=4, loads=loads)


def test_intensities_follow_batch_share_and_group() -> None:
    big = 1 << 14
    for b in (1, 8, 64):  # dense about B, expert about B k / E, attention about Hq / Hkv (BF16)
        assert gemm_intensity(b, big, big) == pytest.approx(b, rel=0.01)
        assert gemm_intensity(b * 2 / 8, big, big) == pytest.approx(b / 4, rel=0.01)
        att = attention_ops(b, 4096, n_head=32, n_kv_head=8, head_dim=128).intensity
        assert att == pytest.approx(4, rel=0.05)
    mha = attention_ops(4, 4096, n_head=32, n_kv_head=32, head_dim=128).intensity
    assert mha == pytest.approx(1, rel=0.05)


def test_moe_matches_a_loop_and_balanced_loads() -> None:
    g = torch.Generator().manual_seed(1)
    x, router, experts = torch.randn(5, 6, generator=g), torch.randn(6, 3, generator=g), torch.randn(3, 6, 4)
    out = moe_forward(x, router, experts, 2)
    probs = torch.softmax(x @ router, -1)
    top = probs.topk(2, -1).indices
    want = torch.stack([sum(probs[i, j] * x[i] @ experts[j] for j in top[i].tolist()) for i in range(5)])
    torch.testing.assert_close(out, want)
    a = round_robin_experts(6, 4, 2)
    assert torch.bincount(a.flatten(), minlength=4).tolist() == [3, 3, 3, 3]


def test_decode_attention_matches_sdpa_with_repeated_heads() -> None:
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 6, 8, generator=g), torch.randn(2, 2, 11, 8, generator=g), torch.randn(2, 2, 11, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))[:, :, 0]
    torch.testing.assert_close(decode_attention(q, k, v), ref)


def test_layers_and_timing() -> None:
    layers = make_layers(d_model=32, n_experts=4, top_k=2, n_head=4, n_kv_head=2, context=5, max_batch=4)
    assert layers["dense"](3)().shape == (3, 32) and layers["attention"](4)().shape == (4, 4, 8)
    assert layers["moe"](2)().shape == (2, 32)
    times = time_layers(layers, [1, 4], repeats=2, warmup=0)
    assert set(times) == {(n, b) for n in layers for b in (1, 4)}
    assert batching_factor(Timing((2.0, 4.0), "cpu"), Timing((4.0, 4.0), "cpu"), 4) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="batch"):
        layers["dense"](5)


def test_placement_and_link_by_hand() -> None:
    fast = Device("fast", flops=100.0, bandwidth=1.0, memory=1.0)  # ridge 100
    wide = Device("wide", flops=10.0, bandwidth=2.0, memory=1.0)  # ridge 5
    ops = {"low": OpCount(4.0, 1.0), "mid": OpCount(19.0, 1.0), "high": OpCount(50.0, 1.0)}
    # low: fast 1.0 s, wide 0.5 s; mid: fast 1.0 s, wide 1.9 s; high: fast 1.0, wide 5.0
    assert place_layers(ops, fast, wide) == {"low": "wide", "mid": "fast", "high": "fast"}
    assert roofline_time(ops["high"], wide) == 5.0
    # LLaMA-7B, batch 1: 1 MiB per token (32 layers x 2 B x 128 x (64 + 64)) within one weight read
    step = LLAMA_7B.n_params * 2 / H100_SXM.bandwidth
    assert offload_link_bandwidth(LLAMA_7B, 1, H100_SXM) == pytest.approx(2**20 / step)
    gqa = ModelShape(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=11008, vocab_size=32000)
    assert offload_link_bandwidth(gqa, 8, H100_SXM) < offload_link_bandwidth(LLAMA_7B, 8, H100_SXM)
    per = layer_ops(LLAMA_7B, 16, 1024)
    moe = layer_ops(LLAMA_7B, 16, 1024, n_experts=8, top_k=2)
    assert per["attention"] == moe["attention"] and moe["ffn"].intensity < per["ffn"].intensity
    assert place_layers(per, H100_SXM, Device("m", flops=1e14, bandwidth=6e12, memory=1.0))["attention"] == "m"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="divisible"):
        attention_ops(1, 8, n_head=6, n_kv_head=4, head_dim=8)
    with pytest.raises(ValueError, match="divisible"):
        decode_attention(torch.randn(1, 6, 8), torch.randn(1, 4, 3, 8), torch.randn(1, 4, 3, 8))
    with pytest.raises(ValueError, match="batch"):
        dense_ops(0, 4, 4)
    with pytest.raises(ValueError, match="batch"):
        attention_ops(0, 8, n_head=4, n_kv_head=2, head_dim=8)
    with pytest.raises(ValueError, match="batch"):
        offload_link_bandwidth(LLAMA_7B, 0, H100_SXM)
    with pytest.raises(ValueError, match="top_k"):
        moe_ops(2, 4, 4, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="loads"):
        moe_ops(2, 4, 4, n_experts=2, top_k=1, loads=[1, 0])
    with pytest.raises(ValueError, match="n_kv_head"):
        make_layers(d_model=32, n_experts=4, top_k=2, n_head=4, n_kv_head=3, context=5, max_batch=2)
    with pytest.raises(ValueError, match="nothing to count"):
        count_ops(lambda: torch.ones(3) + 1)
    with pytest.raises(TypeError, match="fn"):
        count_ops(3)
    with pytest.raises(TypeError, match="Device"):
        place_layers({}, H100_SXM, "pim")
    with pytest.raises(ValueError, match="rows"):
        gemm_intensity(0, 4, 4)


def test_synthetic_layers_count_as_their_closed_forms() -> None:
    shapes = dict(d_model=32, n_experts=4, top_k=2, n_head=8, n_kv_head=2, context=7)
    layers = make_layers(**shapes, max_batch=6)
    for name, make in layers.items():
        for b in (1, 3, 6):
            assert count_ops(make(b)) == synthetic_ops(name, b, **shapes)
    with pytest.raises(ValueError, match="name"):
        synthetic_ops("conv", 1, **shapes)

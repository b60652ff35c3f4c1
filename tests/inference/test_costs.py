"""Step costs: constant, fitted to measurements of the lab GPT, and the roofline of a 7B model."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.costs import (A100_80GB, LLAMA_7B, ConstantCost, Device, LinearCost, ModelShape,
                                    RooflineCost, StepCost, fit_linear_cost, measure_gpt_costs)
from labkit.lm import GPTConfig
from tests.inference._models import perturbed_gpt


def test_linear_cost_by_hand() -> None:
    c = LinearCost(1.0, 0.5, 2.0, 0.25, 0.01)
    assert c.prefill([2, 4]) == pytest.approx(1.0 + 0.5 * 6)
    assert c.decode(4, 100) == pytest.approx(2.0 + 0.25 * 4 + 0.01 * 100)
    assert isinstance(c, StepCost) and isinstance(ConstantCost(1.0, 2.0), StepCost)
    assert ConstantCost(1.0, 2.0).prefill([7, 9]) == 1.0 and ConstantCost(1.0, 2.0).decode(3, 5) == 2.0


def test_fit_recovers_a_line_and_clips_negative_slopes() -> None:
    truth = LinearCost(1e-3, 2e-5, 5e-4, 3e-5, 1e-7)
    pre = [(n, truth.prefill([n])) for n in (8, 32, 64)]
    dec = [(b, c, truth.decode(b, c)) for b, c in ((1, 8), (4, 64), (16, 32), (16, 512))]
    fit = fit_linear_cost(pre, dec, kv_bytes_per_token=7)
    for name in ("prefill_fixed", "prefill_per_token", "decode_fixed", "decode_per_request", "decode_per_context"):
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-12)
    assert fit.kv_bytes_per_token == 7
    falling = fit_linear_cost([(8, 2e-3), (64, 1e-3)], dec)  # time falls with tokens: slope clipped
    assert falling.prefill_per_token == 0.0


def test_llama_7b_shape_by_hand() -> None:
    # per layer: 4 * 4096^2 (attention) + 3 * 4096 * 11008 (SwiGLU) = 202,375,168; times 32,
    # plus embedding and head 2 * 32000 * 4096 = 262,144,000: 6,738,149,376 parameters
    assert LLAMA_7B.n_params == 6_738_149_376
    assert LLAMA_7B.kv_bytes_per_token == 2 * 32 * 4096 * 2  # K and V, 32 layers, BF16
    gqa = ModelShape(n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=11008, vocab_size=32000)
    assert gqa.kv_bytes_per_token == LLAMA_7B.kv_bytes_per_token // 4 and gqa.n_params < LLAMA_7B.n_params


def test_roofline_by_hand() -> None:
    cost = RooflineCost(LLAMA_7B, A100_80GB)
    p = LLAMA_7B.n_params
    # decode with an empty cache and one request: memory-bound, the weights read once
    assert cost.decode(1, 0) == pytest.approx(2 * p / 2.039e12)
    # a 2048-token prefill is compute-bound: 2 P T + 2 L d T^2 FLOPs at 312 TFLOP/s
    flops = 2 * p * 2048 + 2 * 32 * 4096 * 2048**2
    assert cost.prefill([2048]) == pytest.approx(flops / 312e12)
    assert RooflineCost(LLAMA_7B, A100_80GB, efficiency=0.5).prefill([2048]) == pytest.approx(2 * flops / 312e12)
    assert A100_80GB.ridge == pytest.approx(312e12 / 2.039e12)


def test_roofline_batching_helps_decode_not_prefill() -> None:
    cost = RooflineCost(LLAMA_7B, A100_80GB)
    per_token_1 = cost.decode(1, 1000)
    per_token_32 = cost.decode(32, 32 * 1000) / 32
    assert per_token_32 < per_token_1 / 2  # the weights' read is shared by the batch
    # prefill is compute-bound: batching prompts saves nothing
    assert cost.prefill([512, 512]) == pytest.approx(2 * cost.prefill([512]), rel=1e-3)


def test_measure_the_lab_gpt() -> None:
    torch.set_num_threads(1)
    model = perturbed_gpt(GPTConfig(n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=12))
    fit, pre, dec = measure_gpt_costs(model, prompt_lengths=[2, 8], batches=[1, 3], contexts=[2, 10], repeats=2)
    assert sorted(n for n, _ in pre) == [2, 6, 8, 24] and len(dec) == 4
    assert sorted((b, c) for b, c, _ in dec) == [(1, 2), (1, 10), (3, 6), (3, 30)]
    assert all(s > 0 for *_, s in pre + dec) and fit.prefill([8]) > 0 and fit.decode(1, 2) > 0
    assert fit.kv_bytes_per_token == 2 * 2 * 16 * 4  # K and V, 2 layers, width 16, fp32
    with pytest.raises(ValueError, match="block_size"):
        measure_gpt_costs(model, prompt_lengths=[13], batches=[1], contexts=[2])
    with pytest.raises(ValueError, match="block_size"):
        measure_gpt_costs(model, prompt_lengths=[2], batches=[1], contexts=[12])


def test_bad_input() -> None:
    cost = RooflineCost(LLAMA_7B, A100_80GB)
    with pytest.raises(ValueError, match="lengths entry"):
        cost.prefill([4, -1])
    with pytest.raises(TypeError, match="lengths"):
        cost.prefill(5)
    with pytest.raises(ValueError, match="batch"):
        cost.decode(0, 10)
    with pytest.raises(ValueError, match="context"):
        cost.decode(1, -3)
    with pytest.raises(ValueError, match="flops"):
        Device("x", flops=0.0, bandwidth=1.0, memory=1.0)
    with pytest.raises(ValueError, match="efficiency"):
        RooflineCost(LLAMA_7B, A100_80GB, efficiency=1.5)
    with pytest.raises(TypeError, match="ModelShape"):
        RooflineCost("7b", A100_80GB)
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelShape(n_layer=1, d_model=64, n_head=4, n_kv_head=3, d_ff=8, vocab_size=10)
    with pytest.raises(ValueError, match="prefill_s"):
        ConstantCost(0.0, 1.0)
    with pytest.raises(ValueError, match="decode_per_context"):
        LinearCost(1.0, 0.0, 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="two different token counts"):
        fit_linear_cost([(8, 1.0), (8, 1.1)], [(1, 1, 1.0)] * 3)
    with pytest.raises(ValueError, match="prompt_lengths entry"):
        measure_gpt_costs(perturbed_gpt(GPTConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=12)),
                          prompt_lengths=[-2], batches=[1], contexts=[2])


def test_h200_shares_h100_compute_with_more_bandwidth() -> None:
    from labkit.inference.costs import H100_SXM, H200_SXM

    assert H200_SXM.flops == H100_SXM.flops and H200_SXM.bandwidth == pytest.approx(4.8e12)
    # same FLOP/s over 4.8 / 3.35 times the bandwidth: the ridge point drops by that factor
    assert H100_SXM.ridge / H200_SXM.ridge == pytest.approx(4.8 / 3.35)
    assert RooflineCost(LLAMA_7B, H200_SXM).decode(1, 0) < RooflineCost(LLAMA_7B, H100_SXM).decode(1, 0)

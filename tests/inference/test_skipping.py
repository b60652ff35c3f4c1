"""Unified Layer Skipping's count and layer choice; FFN-SkipLLM's cosine and skipping forward."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.hooks import hooked_forward
from labkit.inference.skipping import (contiguous_layers, even_layers, ffn_cosines, ffn_skip_forward,
                                       predicted_speedup, skip_count)
from labkit.lm import GPT, GPTConfig
from tests.inference._models import perturbed_gpt

CFG = GPTConfig(n_layer=4, n_head=2, d_model=16, d_ff=32, block_size=12)


@pytest.fixture
def model() -> GPT:
    return perturbed_gpt(CFG)


def _idx(seed: int = 0) -> torch.Tensor:
    return torch.randint(256, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_speedup_and_count_by_hand() -> None:
    # f = 0.2, L = 10, k = 5: 1 / (0.2 + 0.8 * 0.5) = 1 / 0.6
    assert predicted_speedup(10, 5, 0.2) == pytest.approx(1 / 0.6)
    assert predicted_speedup(10, 0, 0.2) == 1.0
    assert skip_count(1 / 0.6, 10, 0.2) == 5
    assert skip_count(1.01, 10, 0.0) == 1
    for target in (1.1, 1.3, 1.7):  # the smallest k that reaches the target
        k = skip_count(target, 12, 0.1)
        assert predicted_speedup(12, k, 0.1) >= target - 1e-9 > predicted_speedup(12, k - 1, 0.1) - 1e-9 or k == 1


def test_count_errors() -> None:
    with pytest.raises(ValueError, match="target_speedup"):
        skip_count(1.0, 8, 0.1)
    with pytest.raises(ValueError, match="unreachable"):
        skip_count(5.0, 4, 0.3)  # skipping 3 of 4 gives 1 / (0.3 + 0.7 / 4) = 2.1
    with pytest.raises(ValueError, match="fixed_share"):
        predicted_speedup(4, 1, 1.0)


def test_layer_sets() -> None:
    assert even_layers(6, 1) == [3] and even_layers(10, 2) == [3, 7]
    for L, k in ((6, 2), (8, 3), (12, 5)):
        e, c = even_layers(L, k), contiguous_layers(L, k)
        assert len(e) == len(c) == k and 0 not in e + c and L - 1 not in e + c
        assert c == list(range(c[0], c[0] + k))
    with pytest.raises(ValueError, match="k"):
        even_layers(6, 5)
    with pytest.raises(ValueError, match="k"):
        contiguous_layers(6, 0)


def test_cosines_and_ffn_skip(model: GPT) -> None:
    x = _idx()
    cos = ffn_cosines(model, x)
    assert cos.shape == (2, 12, 4) and (cos <= 1 + 1e-6).all() and (cos >= -1 - 1e-6).all()
    full = hooked_forward(model, x)
    none, skipped = ffn_skip_forward(model, x, n_skip=0, warmup=4)
    torch.testing.assert_close(none, full)
    assert not skipped.any()
    logits, skipped = ffn_skip_forward(model, x, n_skip=2, warmup=4)
    assert skipped.sum(1).tolist() == [2, 2]
    torch.testing.assert_close(logits[:, :4], full[:, :4])  # warm-up tokens run in full (causal)
    assert not torch.allclose(logits[:, 4:], full[:, 4:])
    # the chosen FFNs are those of highest warm-up cosine
    best = ffn_cosines(model, x[:, :4]).mean(1).topk(2, dim=1).indices
    assert skipped.gather(1, best).all()
    # a batch whose windows skip the same FFN equals a whole-model skip mask after warm-up
    one, s1 = ffn_skip_forward(model, x[:1], n_skip=1, warmup=12)
    torch.testing.assert_close(one, full[:1])


def test_ffn_skip_errors(model: GPT) -> None:
    x = _idx()
    with pytest.raises(ValueError, match="threshold"):
        ffn_skip_forward(model, x, n_skip=1, warmup=2, threshold=1.5)
    with pytest.raises(ValueError, match="warmup"):
        ffn_skip_forward(model, x, n_skip=1, warmup=0)
    with pytest.raises(ValueError, match="n_skip"):
        ffn_skip_forward(model, x, n_skip=5, warmup=2)
    with pytest.raises(ValueError, match="choose"):
        ffn_skip_forward(model, x, n_skip=1, warmup=2, choose="oracle")

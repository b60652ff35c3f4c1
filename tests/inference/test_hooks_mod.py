"""GPT hooks (skip masks, manual attention) and the γ-MoD pieces (ARank, MoD blocks)."""

from __future__ import annotations

import pytest
import torch

from labkit.inference.hooks import attention_probs, hooked_forward
from labkit.inference.mod import MoDBlock, attention_rank, layer_aranks, mod_macs
from labkit.lm import GPT, GPTConfig
from tests.inference._models import perturbed_gpt

CFG = GPTConfig(n_layer=3, n_head=2, d_model=16, d_ff=32, block_size=12)


@pytest.fixture
def model() -> GPT:
    return perturbed_gpt(CFG)


def _idx(seed: int = 0, T: int = 12) -> torch.Tensor:
    return torch.randint(256, (2, T), generator=torch.Generator().manual_seed(seed))


def test_hooked_forward_equals_the_model(model: GPT) -> None:
    x = _idx()
    ref = model(x).logits
    torch.testing.assert_close(hooked_forward(model, x), ref)
    maps: list[torch.Tensor] = []
    torch.testing.assert_close(hooked_forward(model, x, probs=maps), ref, atol=1e-6, rtol=1e-6)
    assert len(maps) == 3 and maps[0].shape == (2, 2, 12, 12)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 12))
    assert (maps[0].triu(1) == 0).all()  # causal


def test_manual_attention_equals_sdpa(model: GPT) -> None:
    h = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    block = model.blocks[1]
    y, _ = attention_probs(block.attn, h)
    torch.testing.assert_close(y, block.attn(h), atol=1e-6, rtol=1e-6)


def test_skip_masks(model: GPT) -> None:
    x = _idx(2)
    full = hooked_forward(model, x)
    skipped = hooked_forward(model, x, skip_ffn=[False, True, False])
    assert not torch.allclose(full, skipped)
    # skipping by mask equals replacing the block with attention only
    def attn_only(_i: int, b: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
        return h + b.attn(b.ln1(h))
    torch.testing.assert_close(skipped, hooked_forward(model, x, block_fn={1: attn_only}))
    with pytest.raises(ValueError, match="skip_attn"):
        hooked_forward(model, x, skip_attn=[True])
    with pytest.raises(ValueError, match="block_fn"):
        hooked_forward(model, x, block_fn={5: attn_only})
    with pytest.raises(ValueError, match="block_size"):
        hooked_forward(model, _idx(0, 13))


def test_attention_rank_matches_matrix_rank() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 9, 3, generator=g) @ torch.randn(4, 3, 9, generator=g)  # rank 3
    a = torch.cat([a, torch.eye(9)[None]])
    for rtol in (1e-3, 0.1, 0.5):
        torch.testing.assert_close(attention_rank(a, rtol=rtol), torch.linalg.matrix_rank(a.double(), rtol=rtol))
    assert attention_rank(a, rtol=1e-6).tolist() == [3, 3, 3, 3, 9]
    with pytest.raises(ValueError, match="rtol"):
        attention_rank(a, rtol=1.5)
    with pytest.raises(ValueError, match="maps"):
        attention_rank(torch.ones(3, 4), rtol=0.1)


def test_layer_aranks_are_bounded(model: GPT) -> None:
    r = layer_aranks(model, [_idx(3)], rtol=0.05)
    assert r.shape == (3,) and (r >= 1).all() and (r <= 12).all()
    assert (layer_aranks(model, [_idx(3)], rtol=1e-9) == 12).all()  # causal maps: full rank exactly


def test_mod_block_full_capacity_is_the_block(model: GPT) -> None:
    h = torch.randn(2, 12, 16, generator=torch.Generator().manual_seed(4))
    block = model.blocks[0]
    full = MoDBlock(block, 16, capacity=1.0)
    torch.testing.assert_close(full(h), block(h, None)[0], atol=1e-6, rtol=1e-6)
    half = MoDBlock(block, 16, capacity=0.5)
    out = half(h)
    moved = (out - h).abs().sum(-1) > 0  # (B, T): tokens the block changed
    assert moved.sum(1).tolist() == [6, 6]
    with pytest.raises(ValueError, match="capacity"):
        MoDBlock(block, 16, capacity=0.0)


def test_mod_macs_by_hand() -> None:
    cfg = GPTConfig(n_layer=2, n_head=2, d_model=4, d_ff=8, block_size=4)
    block = lambda n: n * (4 * 16 + 2 * 4 * 8) + 4 * n * (n + 1)  # noqa: E731
    assert mod_macs(cfg, [], 1.0) == 2 * block(4) / 4
    assert mod_macs(cfg, [1], 0.5) == (block(4) + block(2)) / 4
    with pytest.raises(ValueError, match="capacity"):
        mod_macs(cfg, [0], 1.5)

"""Read-ME's single pre-gating router in the tiny GPT: one router, one choice for every layer."""

from __future__ import annotations

import pytest
import torch

from labkit.lm import GPT, GPTConfig


def _cfg(router: str) -> GPTConfig:
    return GPTConfig(n_layer=3, d_model=16, n_head=2, d_ff=8, block_size=8, ffn="moe", n_experts=4,
                     top_k=2, router=router)


def test_one_router_decides_every_layer() -> None:
    model = GPT(_cfg("pregate_shared"), init_seed=0)
    routers = {id(b.ffn.router) for b in model.blocks}
    assert len(routers) == 1  # the same module in every block
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    ahead = model.pregate_routes(idx)  # (N, L, k)
    assert all(torch.equal(ahead[:, 0], ahead[:, l]) for l in range(3))
    used = torch.stack([r.experts for r in model(idx).routing], dim=1)
    assert torch.equal(ahead, used)


def test_shared_router_counts_once_and_matches_per_layer_init() -> None:
    shared, per_layer = GPT(_cfg("pregate_shared"), init_seed=0), GPT(_cfg("pregate"), init_seed=0)
    gate = 16 * 4  # D x E weights of one router
    assert per_layer.n_params() - shared.n_params() == 2 * gate
    assert torch.equal(shared.blocks[0].ffn.router.gate.weight, per_layer.blocks[0].ffn.router.gate.weight)


def test_unknown_router_named() -> None:
    with pytest.raises(ValueError, match="router"):
        _cfg("pregate_once")

"""A small lab GPT shared by the inference tests."""

from __future__ import annotations

import torch

from labkit.lm import GPT, GPTConfig


def perturbed_gpt(cfg: GPTConfig) -> GPT:
    """A seeded lab GPT in eval mode whose weights are nudged off their initial values, so that
    skipped layers and routed tokens change its output measurably."""
    torch.manual_seed(0)
    m = GPT(cfg, init_seed=0).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m

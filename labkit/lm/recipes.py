"""The standard dense tiny GPT of each tier, shared by the chapters that reuse the lab animal.

Chapter 05 trains many variants; later chapters (10, quantization; 14, secure inference)
need *one* ordinary dense model to compress or to evaluate in secret. :func:`tiny_gpt_recipe`
names it, so every section of those chapters loads the same cached weights through
:func:`labkit.lm.pretrained_gpt` instead of inventing a recipe. The sizes are chapter 05
section 1's dense model, so a reader who built that chapter already has the weights.

:func:`deep_gpt_recipe` is a deeper, thin model for chapter 06 (adaptive depth), where skipping
one of four blocks costs too much to study which layers matter.

Section: chapter 05, "Top-k routing from scratch" (built there, reused by chapters 06, 10 and 14).
"""

from __future__ import annotations

from ..tiers import validate_tier
from .gpt import GPTConfig
from .train import TrainConfig

__all__ = ["deep_gpt_recipe", "tiny_gpt_recipe"]

_SIZES = {
    # n_layer, d_model, block_size, steps, batch_size, eval_batches
    "ci": (2, 64, 64, 150, 16, 8),
    "default": (4, 64, 64, 300, 32, 16),
    "gpu": (6, 256, 128, 1500, 64, 32),
}


def tiny_gpt_recipe(tier: str) -> tuple[GPTConfig, TrainConfig]:
    """The dense byte-level GPT and its training recipe at ``tier``.

    ``ci``: 2 blocks of width 64 (0.1M parameters), 150 steps of 16 windows, about 6 s on
    2 CPU cores. ``default``: 4 blocks, 300 steps of 32 windows, about 25 s. ``gpu``: 6 blocks
    of width 256, 1500 steps of 64 windows of 128 bytes.

    Returns:
        ``(config, recipe)`` for :func:`labkit.lm.pretrained_gpt`.
    """
    n_layer, d_model, block_size, steps, batch_size, eval_batches = _SIZES[validate_tier(tier)]
    cfg = GPTConfig(n_layer=n_layer, d_model=d_model, n_head=4, block_size=block_size, ffn="dense", d_ff=4 * d_model)
    recipe = TrainConfig(steps=steps, batch_size=batch_size, eval_every=max(steps // 6, 1), eval_batches=eval_batches)
    return cfg, recipe


_DEEP_SIZES = {
    # n_layer, d_model, block_size, steps, batch_size, eval_batches
    "ci": (6, 64, 64, 200, 16, 8),
    "default": (8, 64, 64, 400, 24, 16),
    "gpu": (12, 128, 128, 1500, 64, 32),
}


def deep_gpt_recipe(tier: str) -> tuple[GPTConfig, TrainConfig]:
    """A deeper dense byte GPT for studying layer skipping and mixture of depths at ``tier``.

    ``ci``: 6 blocks of width 64, 200 steps of 16 windows (about 20 s on 2 CPU cores).
    ``default``: 8 blocks of width 64, 400 steps of 24 windows. ``gpu``: 12 blocks of width 128.

    Returns:
        ``(config, recipe)`` for :func:`labkit.lm.pretrained_gpt`.
    """
    n_layer, d_model, block_size, steps, batch_size, eval_batches = _DEEP_SIZES[validate_tier(tier)]
    cfg = GPTConfig(n_layer=n_layer, d_model=d_model, n_head=4, block_size=block_size, ffn="dense",
                    d_ff=4 * d_model)
    recipe = TrainConfig(steps=steps, batch_size=batch_size, eval_every=max(steps // 4, 1), eval_batches=eval_batches)
    return cfg, recipe

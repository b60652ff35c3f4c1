"""Layer skipping: the same layers for every token (Unified Layer Skipping) or per-token FFN
skips from the cosine between a feed-forward network's input and output (FFN-SkipLLM).

Papers: *Accelerating Inference in Large Language Models with a Unified Layer Skipping
Strategy* (Liu et al., arXiv:2404.06954) and *FFN-SkipLLM: A Hidden Gem for Autoregressive
Decoding with Adaptive Feed Forward Skipping* (Jaiswal et al., arXiv:2404.03865).

Unified Layer Skipping turns a target speed-up into a number of layers k, then skips k layers
spread evenly through the middle of the stack, the same ones for every token, so batching and
the KV cache work as before. With a fixed share f of the time outside the blocks (embedding,
head), skipping k of L equal blocks predicts a speed-up of ``1 / (f + (1 - f)(L - k) / L)``.

FFN-SkipLLM keeps every attention layer (so the KV cache is complete) and skips feed-forward
networks that barely turn the residual stream: after a few warm-up tokens run in full, the FFNs
whose input and output streams are most similar (cosine) are skipped for the tokens that follow.

The miniature: a deep byte GPT of 6-8 blocks instead of 7B models; the cosine is measured on the
warm-up tokens of each window and the skipped FFNs chosen per window, not per token.

Shapes: B batch, T tokens, D width, L blocks.
Section: chapter 06, "Layer skipping: unified and FFN-SkipLLM".
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from labkit.lm import GPT
from labkit.validation import check_int, check_real, check_tokens

__all__ = ["contiguous_layers", "even_layers", "ffn_cosines", "ffn_skip_forward", "predicted_speedup",
           "skip_count"]


def predicted_speedup(n_layer: int, k: int, fixed_share: float) -> float:
    """``1 / (f + (1 - f)(L - k) / L)``: the speed-up of skipping k of L equal blocks."""
    check_int("n_layer", n_layer, 1)
    check_int("k", k, 0, n_layer)
    f = check_real("fixed_share", fixed_share, 0.0)
    if not f < 1:
        raise ValueError(f"fixed_share must be in [0, 1), got {fixed_share}")
    return 1 / (f + (1 - f) * (n_layer - k) / n_layer)


def skip_count(target_speedup: float, n_layer: int, fixed_share: float) -> int:
    """The fewest layers k to skip for ``target_speedup``, keeping at least one block.

    Raises:
        ValueError: a target <= 1, or one that skipping all but one block cannot reach.
    """
    target = check_real("target_speedup", target_speedup, 0.0)
    if not target > 1:
        raise ValueError(f"target_speedup must be > 1, got {target_speedup}")
    check_int("n_layer", n_layer, 2)
    # show: start count
    # solve 1 / (f + (1 - f)(L - k) / L) >= s for the smallest integer k
    f = fixed_share
    k = math.ceil(n_layer * (1 - (1 / target - f) / (1 - f)) - 1e-9)
    # show: end count
    best = predicted_speedup(n_layer, n_layer - 1, f)
    if k > n_layer - 1:
        raise ValueError(f"target_speedup {target} is unreachable: skipping {n_layer - 1} of {n_layer} blocks "
                         f"gives {best:.3f} with fixed share {f:.3f}")
    return max(k, 1)


def even_layers(n_layer: int, k: int) -> list[int]:
    """k blocks spread evenly over the middle (the first and last blocks are kept)."""
    check_int("n_layer", n_layer, 3)
    check_int("k", k, 1, n_layer - 2)
    # show: start even
    middle = n_layer - 2  # blocks 1 .. L-2
    return sorted({1 + round((i + 0.5) * middle / k - 0.5) for i in range(k)})
    # show: end even


def contiguous_layers(n_layer: int, k: int) -> list[int]:
    """k adjacent blocks centred in the stack (the control)."""
    check_int("n_layer", n_layer, 3)
    check_int("k", k, 1, n_layer - 2)
    start = max(1, (n_layer - k) // 2)
    return list(range(start, start + k))


def _blocks(model: GPT, idx: torch.Tensor):
    if not isinstance(model, GPT) or model.cfg.ffn != "dense":
        raise TypeError("model must be a dense labkit.lm.GPT")
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    T = idx.shape[1]
    if T > model.cfg.block_size:
        raise ValueError(f"sequence length {T} exceeds block_size={model.cfg.block_size}")
    return model.tok(idx) + model.pos(torch.arange(T, device=idx.device))


@torch.no_grad()
def ffn_cosines(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Cosine between each block's residual stream before and after its FFN, (B, T, L)."""
    x = _blocks(model, idx)
    out = []
    for block in model.blocks:
        x = x + block.attn(block.ln1(x))
        # show: start cosine
        after = x + block.ffn(block.ln2(x))[0]
        out.append(F.cosine_similarity(x, after, dim=-1))  # (B, T): near 1 = little turn
        # show: end cosine
        x = after
    return torch.stack(out, -1)


@torch.no_grad()
def ffn_skip_forward(model: GPT, idx: torch.Tensor, *, n_skip: int, warmup: int,
                     choose: str = "cosine", threshold: float | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with FFNs skipped after ``warmup`` full tokens; every attention layer runs.

    Per window, the FFNs with the highest mean cosine over the warm-up tokens (``choose="cosine"``)
    or ``n_skip`` random ones (``"random"``) are skipped for positions >= ``warmup``. With a
    ``threshold`` in [-1, 1], only the chosen FFNs whose mean cosine is above it are skipped.

    Returns:
        ``(logits (B, T, V), skipped (B, L) bool)``.
    """
    x = _blocks(model, idx)
    B, T = idx.shape
    L = model.cfg.n_layer
    check_int("n_skip", n_skip, 0, L)
    check_int("warmup", warmup, 1, T)
    if threshold is not None and not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    if choose not in ("cosine", "random"):
        raise ValueError(f"choose must be 'cosine' or 'random', got {choose!r}")
    cos = ffn_cosines(model, idx[:, :warmup]).mean(1)  # (B, L) over the warm-up tokens
    if choose == "cosine":
        order = cos.argsort(dim=1, descending=True)
    else:
        order = torch.stack([torch.randperm(L, generator=generator) for _ in range(B)])
    skipped = torch.zeros(B, L, dtype=torch.bool).scatter(1, order[:, :n_skip], True)
    if threshold is not None:
        skipped &= cos > threshold
    late = (torch.arange(T) >= warmup)[None, :]  # (1, T)
    for i, block in enumerate(model.blocks):
        x = x + block.attn(block.ln1(x))  # attention always runs: the cache stays complete
        keep = ~(skipped[:, i:i + 1] & late)  # (B, T)
        x = x + block.ffn(block.ln2(x))[0] * keep[..., None]
    return model.head(model.ln_f(x)), skipped

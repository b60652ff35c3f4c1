"""The tiny GPT's forward pass with hooks: skip masks and attention maps, without new weights.

:func:`hooked_forward` runs a dense :class:`labkit.lm.GPT` block by block, with per-block masks
that skip attention or the feed-forward network, an optional manual attention path that returns
the attention probabilities (equal to PyTorch's fused attention within float rounding), and an
optional replacement of chosen blocks. The hooks are arguments of the call, never fields of
:class:`labkit.lm.GPTConfig`, so committed weights keep their keys.

Shapes: B batch, T tokens, D width, H heads, L blocks.
Section: chapter 06, "γ-MoD: attention rank and mixture of depths" (where the attention maps
are read; the chapter's later sections reuse the skip masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

from labkit.lm import GPT
from labkit.validation import check_tokens

__all__ = ["attention_probs", "hooked_forward"]

#: a replacement for a whole block: (block index, block, x (B, T, D)) -> new x
BlockFn = Callable[[int, torch.nn.Module, torch.Tensor], torch.Tensor]


def _mask(name: str, mask: Sequence[bool] | None, n: int) -> list[bool]:
    if mask is None:
        return [False] * n
    mask = [bool(m) for m in (mask.tolist() if isinstance(mask, torch.Tensor) else mask)]
    if len(mask) != n:
        raise ValueError(f"{name} must have one entry per block ({n}), got {len(mask)}")
    return mask


def attention_probs(attn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The manual path of a GPT attention layer: its output and its probabilities.

    Args:
        attn: a block's ``attn`` (``CausalSelfAttention``).
        x: (B, T, D) the LayerNormed input.

    Returns:
        ``(y (B, T, D), probs (B, H, T, T))`` with ``probs`` = softmax(QK^T / sqrt(d) + causal mask).
    """
    B, T, D = x.shape
    q, k, v = attn.qkv(x).split(D, dim=2)  # (B, T, D) each
    q, k, v = (t.view(B, T, attn.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    y = (probs @ v).transpose(1, 2).reshape(B, T, D)
    return attn.proj(y), probs


def hooked_forward(model: GPT, idx: torch.Tensor, *, skip_attn: Sequence[bool] | None = None,
                   skip_ffn: Sequence[bool] | None = None, probs: list[torch.Tensor] | None = None,
                   block_fn: dict[int, BlockFn] | None = None) -> torch.Tensor:
    """Logits (B, T, V) of a dense GPT with blocks' parts skipped, replaced or observed.

    Args:
        model: a dense :class:`labkit.lm.GPT`.
        idx: (B, T) tokens.
        skip_attn, skip_ffn: one bool per block; True skips that sub-layer (its residual branch
            adds nothing).
        probs: if a list, the manual attention path runs and each block appends its
            probabilities (B, H, T, T).
        block_fn: block index -> a function that replaces the whole block.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if model.cfg.ffn != "dense":
        raise ValueError("hooked_forward needs a dense GPT (ffn='dense')")
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    B, T = idx.shape
    if T > model.cfg.block_size:
        raise ValueError(f"sequence length {T} exceeds block_size={model.cfg.block_size}")
    L = model.cfg.n_layer
    sa, sf = _mask("skip_attn", skip_attn, L), _mask("skip_ffn", skip_ffn, L)
    block_fn = block_fn or {}
    bad = [i for i in block_fn if not (isinstance(i, int) and 0 <= i < L)]
    if bad:
        raise ValueError(f"block_fn keys must be block indices in [0, {L}), got {bad}")
    x = model.tok(idx) + model.pos(torch.arange(T, device=idx.device))  # (B, T, D)
    for i, block in enumerate(model.blocks):
        if i in block_fn:
            x = block_fn[i](i, block, x)
            continue
        if not sa[i]:
            if probs is not None:
                y, p = attention_probs(block.attn, block.ln1(x))
                probs.append(p)
            else:
                y = block.attn(block.ln1(x))
            x = x + y
        if not sf[i]:
            x = x + block.ffn(block.ln2(x))[0]
    return model.head(model.ln_f(x))

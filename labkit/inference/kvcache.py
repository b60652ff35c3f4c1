"""A key/value cache for the lab GPT, driven from outside :meth:`labkit.lm.GPT.forward`.

Autoregressive decoding recomputes nothing that it has seen: every attention layer keeps the keys
and values of the positions already processed, and a new token only computes its own query, key
and value, then attends to the stored ones. This module runs a dense :class:`labkit.lm.GPT` block
by block with such a cache (the weights and :class:`labkit.lm.GPTConfig` are untouched, as in
:mod:`~labkit.inference.hooks`):

- :func:`prefill` runs a prompt (B, T) once and returns its logits and a filled :class:`KVCache`;
- :func:`decode_step` appends one token per sequence and returns its next-token logits (B, V);
- :func:`extend` appends several positions at once, with explicit positions and an explicit
  attention mask among them (context positions are always visible). With a causal mask it is
  chunked prefill; with a tree mask it verifies many candidate continuations in one pass;
- :meth:`KVCache.crop` and :meth:`KVCache.keep` roll the cache back after a rejected guess.

Every call checks that no position reaches ``block_size`` (the model has no position embedding
beyond it). The cache holds one (B, H, S, D/H) tensor of keys and one of values per block; its
memory is ``2 * L * B * S * D`` floats.

Example::

    logits, cache = prefill(model, prompt)           # prompt: (B, T) tokens
    for _ in range(n):
        nxt = logits.argmax(-1)                      # (B,)
        logits = decode_step(model, cache, nxt)      # (B, V)

Shapes: B batch, T prompt tokens, n new positions, S cached positions, D width, H heads, V vocab.
Section: chapter 06, "Hidden transfer" (tree verification; chapter 07 times its prefill and
decode steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from labkit.lm import GPT
from labkit.validation import check_int, check_tensor, check_tokens

__all__ = ["KVCache", "cached_attention", "decode_step", "extend", "prefill"]


class KVCache:
    """Keys and values of every block for the positions processed so far.

    Attributes:
        keys, values: one (B, H, S, D/H) tensor per block (``None`` before the first append).
        block_size: the model's longest context; appending past it raises ``ValueError``.
    """

    def __init__(self, n_layer: int, block_size: int) -> None:
        self.n_layer = check_int("n_layer", n_layer, 1)
        self.block_size = check_int("block_size", block_size, 1)
        self.keys: list[torch.Tensor | None] = [None] * self.n_layer
        self.values: list[torch.Tensor | None] = [None] * self.n_layer

    @property
    def length(self) -> int:
        """S, the number of cached positions (those of the last block appended to)."""
        k = self.keys[-1] if self.keys[-1] is not None else self.keys[0]
        return 0 if k is None else k.shape[2]

    def past(self, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(keys, values)`` cached for block ``layer`` (``None`` when empty)."""
        return self.keys[layer], self.values[layer]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Add (B, H, n, D/H) keys and values of new positions to block ``layer``."""
        old = self.keys[layer]
        if (0 if old is None else old.shape[2]) + k.shape[2] > self.block_size:
            raise ValueError(f"the cache would hold {(0 if old is None else old.shape[2]) + k.shape[2]} "
                             f"positions, past block_size={self.block_size}")
        self.keys[layer] = k if old is None else torch.cat([old, k], dim=2)
        self.values[layer] = v if old is None else torch.cat([self.values[layer], v], dim=2)

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (keep the first ``length``)."""
        check_int("length", length, 0, self.length)
        for i in range(self.n_layer):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i][:, :, :length]
                self.values[i] = self.values[i][:, :, :length]

    def keep(self, start: int, rows: Sequence[int]) -> None:
        """Keep the first ``start`` positions and, after them, only the positions ``start + r``
        for ``r`` in ``rows`` (in that order): the accepted path of a verified tree."""
        check_int("start", start, 0, self.length)
        rows = [check_int("rows entry", r, 0, self.length - start - 1) for r in rows]
        index = torch.tensor(list(range(start)) + [start + r for r in rows], dtype=torch.long)
        for i in range(self.n_layer):
            if self.keys[i] is not None:
                self.keys[i] = self.keys[i].index_select(2, index.to(self.keys[i].device))
                self.values[i] = self.values[i].index_select(2, index.to(self.values[i].device))

    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


def _check_model(model: object) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if model.cfg.ffn != "dense":
        raise ValueError("the KV cache needs a dense GPT (ffn='dense')")
    return model


def cached_attention(attn: torch.nn.Module, x: torch.Tensor, past_k: torch.Tensor | None,
                     past_v: torch.Tensor | None, mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention layer for n new positions that see every cached position.

    Args:
        attn: a block's ``attn`` (``CausalSelfAttention``).
        x: (B, n, D) the LayerNormed input of the new positions.
        past_k, past_v: (B, H, S, D/H) cached keys and values, or None.
        mask: (n, n) bool, True where new position i may attend to new position j (every
            cached position is visible); or (n, S + n) bool over cached and new positions
            together; None means causal among the new positions.

    Returns:
        ``(y (B, n, D), k (B, H, n, D/H), v (B, H, n, D/H))``: the output and the new
        positions' keys and values, to append to the cache.
    """
    B, n, D = x.shape
    # show: start cached_attention
    q, k, v = attn.qkv(x).split(D, dim=2)  # (B, n, D) each
    q, k, v = (t.view(B, n, attn.n_head, -1).transpose(1, 2) for t in (q, k, v))
    S = 0 if past_k is None else past_k.shape[2]
    keys = k if past_k is None else torch.cat([past_k, k], dim=2)  # (B, H, S + n, D/H)
    vals = v if past_v is None else torch.cat([past_v, v], dim=2)
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
    full = mask.to(x.device)
    if full.shape[1] == n and S:  # every cached position is visible
        full = torch.cat([torch.ones(n, S, dtype=torch.bool, device=x.device), full], dim=1)
    if tuple(full.shape) != (n, S + n):
        raise ValueError(f"mask must be ({n}, {n}) or ({n}, {S + n}), got {tuple(mask.shape)}")
    y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=full)
    # show: end cached_attention
    return attn.proj(y.transpose(1, 2).reshape(B, n, D)), k, v


def _check_mask(mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    if mask is None:
        return None
    check_tensor("mask", mask, dims=2, dtype=torch.bool)
    if tuple(mask.shape) != (n, n):
        raise ValueError(f"mask must be ({n}, {n}) for {n} new positions, got {tuple(mask.shape)}")
    if not bool(mask.diagonal().all()):
        raise ValueError("mask must let every new position attend to itself (a True diagonal)")
    return mask


@torch.no_grad()
def extend(model: GPT, cache: KVCache, idx: torch.Tensor, *, positions: torch.Tensor | None = None,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run n new tokens per sequence through the model, appending their keys and values.

    Args:
        model: a dense :class:`labkit.lm.GPT` (in eval mode).
        cache: the cache of the context; it grows by n positions.
        idx: (B, n) tokens.
        positions: (n,) position of each new token (its position embedding); default
            ``cache.length + arange(n)``. A tree gives each node its depth after the context.
        mask: (n, n) bool attention among the new tokens (True: may attend), with a True
            diagonal; default causal. Every cached position is visible to every new token.

    Returns:
        (B, n, V) logits of the new positions.
    """
    model = _check_model(model)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    B, n = idx.shape
    mask = _check_mask(mask, n)
    start = cache.length
    if positions is None:
        positions = torch.arange(start, start + n, device=idx.device)
    else:
        check_tensor("positions", positions, dims=1, dtype="integer")
        if positions.shape[0] != n:
            raise ValueError(f"positions must have {n} entries, got {positions.shape[0]}")
        if n and int(positions.min()) < 0:
            raise ValueError("positions must be >= 0")
    if start + n > model.cfg.block_size or (n and int(positions.max()) >= model.cfg.block_size):
        raise ValueError(f"{start} cached and {n} new positions run past block_size="
                         f"{model.cfg.block_size}")
    x = model.tok(idx) + model.pos(positions.to(idx.device))  # (B, n, D)
    for i, block in enumerate(model.blocks):
        y, k, v = cached_attention(block.attn, block.ln1(x), *cache.past(i), mask)
        cache.append(i, k, v)
        x = x + y
        x = x + block.ffn(block.ln2(x))[0]
    return model.head(model.ln_f(x))


def prefill(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """Run a prompt once and keep its keys and values.

    Args:
        model: a dense :class:`labkit.lm.GPT` (in eval mode).
        idx: (B, T) prompt tokens, 1 <= T <= ``block_size``.

    Returns:
        ``(logits (B, T, V), cache)``; ``logits[:, -1]`` predicts the first new token.
    """
    model = _check_model(model)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    if idx.shape[1] < 1:
        raise ValueError("idx must hold at least one token")
    if idx.shape[1] > model.cfg.block_size:
        raise ValueError(f"prompt of {idx.shape[1]} tokens is past block_size={model.cfg.block_size}")
    cache = KVCache(model.cfg.n_layer, model.cfg.block_size)
    return extend(model, cache, idx), cache


def decode_step(model: GPT, cache: KVCache, idx: torch.Tensor) -> torch.Tensor:
    """Append one token per sequence and return its next-token logits.

    Args:
        model: the model that filled ``cache``.
        cache: grows by one position.
        idx: (B,) or (B, 1) tokens.

    Returns:
        (B, V) logits for the token after ``idx``.
    """
    if isinstance(idx, torch.Tensor) and idx.dim() == 1:
        idx = idx[:, None]
    return extend(model, cache, idx)[:, -1]

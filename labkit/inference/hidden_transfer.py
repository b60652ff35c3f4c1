"""Hidden transfer: drafting several future tokens in the pass that verifies the previous draft.

*Parallel Decoding via Hidden Transfer for Lossless Large Language Model Acceleration* (Wu et al.,
2024). After ``layer`` blocks, trained linear maps turn the hidden state h_t of the last token into
pseudo states for the k positions after it,

    p_j = W_j h_t + b_j,   j = 1..k,

which run the remaining blocks beside the real tokens (attending to the context, to the real
token and to the earlier pseudo states) and the output head: pseudo state j predicts the token
j + 1 places after t. The top-m tokens of every predicted position form a tree (m^d nodes at depth
d); one pass with tree attention (each node sees the cached context and its ancestors) gives the
model's own next-token logits at every node. The longest path whose every token equals the greedy
choice of its parent is accepted, with one more token from the last accepted node's logits, so
the output is greedy decoding's, token for token. The same pass creates the pseudo states of every
node, so the drafts of the next round come free with the verification.

Real tokens never attend to pseudo states, so the real logits are exactly the model's: the
decoding is lossless by construction, whatever the maps learned; the maps only decide how many
tokens each pass accepts.

The miniature: a byte GPT of six or eight thin blocks (:func:`labkit.lm.deep_gpt_recipe`) instead
of LLaMA-2 7B, batch size one, a full tree of width m and depth k (the paper prunes its tree), and
passes counted rather than timed.

Shapes: B batch, T or n tokens, S cached positions, D width, V vocabulary, k drafted positions,
m tree width, N tree nodes.
Section: chapter 06, "Hidden transfer".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from labkit.inference.kvcache import KVCache, cached_attention, decode_step, prefill
from labkit.lm import GPT
from labkit.validation import check_int, check_real, check_tokens

__all__ = ["DecodeResult", "Tree", "TransferMaps", "accept_path", "build_tree", "draft_accuracy", "draft_loss",
           "greedy_decode", "hidden_transfer_decode", "train_transfer", "transfer_logits"]


class TransferMaps(nn.Module):
    """k linear maps from a hidden state to the pseudo states of the next k positions.

    Initialised to the identity (each pseudo state starts as a copy of h_t).

    Args:
        d_model: D.
        k: the number of drafted positions (>= 1).
    """

    def __init__(self, d_model: int, k: int) -> None:
        super().__init__()
        check_int("d_model", d_model, 1)
        self.k = check_int("k", k, 1)
        self.weight = nn.Parameter(torch.eye(d_model).repeat(self.k, 1, 1))  # (k, D, D)
        self.bias = nn.Parameter(torch.zeros(self.k, d_model))  # (k, D)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) hidden states -> (..., k, D) pseudo states."""
        return torch.einsum("kod,...d->...ko", self.weight, h) + self.bias


def _check(model: object, maps: object, layer: int) -> tuple[GPT, TransferMaps, int]:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if model.cfg.ffn != "dense":
        raise ValueError("hidden transfer needs a dense GPT (ffn='dense')")
    if not isinstance(maps, TransferMaps):
        raise TypeError(f"maps must be TransferMaps, got {type(maps).__name__}")
    if maps.weight.shape[-1] != model.cfg.d_model:
        raise ValueError(f"maps are for width {maps.weight.shape[-1]}, the model has {model.cfg.d_model}")
    layer = check_int("layer", layer, 1, model.cfg.n_layer - 1)
    return model, maps, layer


def _transfer_pass(model: GPT, maps: TransferMaps, idx: torch.Tensor, positions: torch.Tensor,
                   mask: torch.Tensor, layer: int, sources: torch.Tensor,
                   cache: KVCache | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One pass over n real tokens plus k pseudo states for each of ``sources``.

    ``mask`` (n, n) says which real tokens see which (causal for text, ancestors for a tree);
    every token sees the whole cache. Pseudo state (s, j) sees what real token s sees, s itself
    and the pseudo states (s, j' <= j); real tokens never see pseudo states.

    Returns:
        ``(logits (B, n, V), pseudo logits (B, len(sources), k, V), [(keys, values)] per block
        of the real tokens)``.
    """
    B, n = idx.shape
    # show: start transfer_pass
    k, P = maps.k, len(sources) * maps.k
    S = 0 if cache is None else cache.length
    x = model.tok(idx) + model.pos(positions)  # (B, n, D)
    kv = []
    for i, block in enumerate(model.blocks):
        past = (None, None) if cache is None else cache.past(i)
        if i == layer:  # pseudo states join the real tokens from here on
            pseudo = maps(x[:, sources]).reshape(B, P, -1)  # (B, P, D)
            own = torch.ones(k, k, dtype=torch.bool, device=idx.device).tril()
            see_real = mask[sources].repeat_interleave(k, dim=0)  # (P, n)
            see_pseudo = torch.block_diag(*[own] * len(sources))  # (P, P)
            full = torch.cat([
                torch.cat([mask, torch.zeros(n, P, dtype=torch.bool, device=idx.device)], 1),
                torch.cat([see_real, see_pseudo], 1)], 0)  # (n + P, n + P)
            x = torch.cat([x, pseudo], 1)
            mask = full
        y, kk, vv = cached_attention(block.attn, block.ln1(x), *past, mask)
        kv.append((kk[:, :, :n], vv[:, :, :n]))
        x = x + y
        x = x + block.ffn(block.ln2(x))[0]
    logits = model.head(model.ln_f(x))  # (B, n + P, V)
    # show: end transfer_pass
    return logits[:, :n], logits[:, n:].reshape(B, len(sources), k, -1), kv


def transfer_logits(model: GPT, maps: TransferMaps, idx: torch.Tensor, *, layer: int,
                    sources: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits and the pseudo-state logits of positions ``sources`` of windows
    ``idx`` (B, T).

    Args:
        sources: (P,) positions that get pseudo states (default: all T).

    Returns:
        ``(logits (B, T, V), pseudo (B, P, k, V))``; ``pseudo[:, s, j - 1]`` predicts the token
        at ``sources[s] + 1 + j``. Gradients flow to ``maps`` (and to the model, if it
        requires them).
    """
    model, maps, layer = _check(model, maps, layer)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size, min_length=1)
    T, dev = idx.shape[1], idx.device
    if T > model.cfg.block_size:
        raise ValueError(f"windows of {T} tokens are past block_size={model.cfg.block_size}")
    ar = torch.arange(T, device=dev)
    if sources is None:
        sources = ar
    elif len(sources) == 0 or int(sources.min()) < 0 or int(sources.max()) >= T:
        raise ValueError(f"sources must be positions in [0, {T}), got {sources.tolist()}")
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    logits, pseudo, _ = _transfer_pass(model, maps, idx, ar, causal, layer, sources.to(dev))
    return logits, pseudo


def _pseudo_targets(idx: torch.Tensor, sources: torch.Tensor, k: int) -> torch.Tensor:
    """(B, P, k) the token j + 1 places after each source (-100 past the window's end)."""
    where = sources[:, None] + 1 + torch.arange(1, k + 1, device=idx.device)  # (P, k)
    inside = where < idx.shape[1]
    target = idx[:, where.clamp(max=idx.shape[1] - 1)]  # (B, P, k)
    return target.masked_fill(~inside, -100)


def train_transfer(model: GPT, batches: Iterator[torch.Tensor], *, k: int, layer: int, steps: int,
                   lr: float = 3e-3, n_sources: int = 16, seed: int = 0
                   ) -> tuple[TransferMaps, list[float]]:
    """Fit k transfer maps at ``layer`` with the model frozen (Adam on the pseudo tokens'
    cross-entropy against the true tokens ahead).

    Args:
        model: the trained GPT (left unchanged).
        batches: yields (B, T) token windows, T >= 3.
        k: drafted positions; layer: blocks before the transfer, in [1, L - 1].
        steps: optimiser steps (>= 1); lr: Adam's step size.
        n_sources: positions per window (drawn at random each step) that get pseudo states.

    Returns:
        ``(maps, losses)``: the maps (eval mode) and the loss (nats) of every step.
    """
    check_int("steps", steps, 1)
    check_int("n_sources", n_sources, 1)
    check_real("lr", lr, 0.0, strict=True)
    torch.manual_seed(seed)
    maps = TransferMaps(model.cfg.d_model, k).to(next(model.parameters()).device)
    model, maps, layer = _check(model, maps, layer)
    grads = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    opt = torch.optim.Adam(maps.parameters(), lr=lr)
    losses = []
    gen = torch.Generator().manual_seed(seed)
    try:
        for _, idx in zip(range(steps), batches):
            T = idx.shape[1]
            src = torch.randperm(T - 2, generator=gen)[: min(n_sources, T - 2)].sort().values
            _, pseudo = transfer_logits(model, maps, idx, layer=layer, sources=src)
            target = _pseudo_targets(idx, src.to(idx.device), k)
            loss = F.cross_entropy(pseudo.flatten(0, 2), target.flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    return maps.eval(), losses


@torch.no_grad()
def draft_loss(model: GPT, maps: TransferMaps, idx: torch.Tensor, *, layer: int) -> torch.Tensor:
    """(k,) cross-entropy (nats) of pseudo state j's logits against the true token j + 1 places
    ahead, over every position of windows ``idx`` (B, T) that has one."""
    _, pseudo = transfer_logits(model, maps, idx, layer=layer)
    target = _pseudo_targets(idx, torch.arange(idx.shape[1], device=idx.device), maps.k)
    ce = F.cross_entropy(pseudo.permute(0, 3, 1, 2), target, ignore_index=-100,
                         reduction="none")  # (B, T, k)
    inside = (target >= 0).float()
    return (ce * inside).sum((0, 1)) / inside.sum((0, 1))


@torch.no_grad()
def draft_accuracy(model: GPT, maps: TransferMaps, idx: torch.Tensor, *, layer: int,
                   width: int = 1) -> torch.Tensor:
    """(k,) share of positions whose true token j + 1 places ahead is in pseudo state j's top
    ``width`` tokens, on windows ``idx`` (B, T)."""
    check_int("width", width, 1)
    _, pseudo = transfer_logits(model, maps, idx, layer=layer)
    src = torch.arange(idx.shape[1], device=idx.device)
    target = _pseudo_targets(idx, src, maps.k)  # (B, T, k)
    hit = (pseudo.topk(width, -1).indices == target[..., None]).any(-1).float()
    inside = (target >= 0).float()
    return (hit * inside).sum((0, 1)) / inside.sum((0, 1))


@dataclass
class Tree:
    """Candidate continuations as a tree; node 0 is the root.

    Attributes:
        tokens: (N,) token of each node; parent: parent index (-1 for the root);
        depth: (N,) distance from the root; mask: (N, N) bool, True where j is i or an
        ancestor of i (tree attention).
    """

    tokens: torch.Tensor
    parent: list[int]
    depth: torch.Tensor
    mask: torch.Tensor


def build_tree(root: int, candidates: torch.Tensor) -> Tree:
    """The full tree over ``candidates`` (d, m): every node at depth i has the m tokens of row
    i as children, so depth i holds m^i nodes (a chain when m = 1)."""
    # show: start tree
    d, m = candidates.shape
    tokens, parent, depth = [int(root)], [-1], [0]
    level = [0]
    for i in range(d):
        nxt = []
        for p in level:
            for c in candidates[i].tolist():
                tokens.append(c), parent.append(p), depth.append(i + 1)
                nxt.append(len(tokens) - 1)
        level = nxt
    n = len(tokens)
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(n):
        j = parent[i]
        while j >= 0:  # every ancestor
            mask[i, j], j = True, parent[j]
    # show: end tree
    return Tree(torch.tensor(tokens), parent, torch.tensor(depth), mask)


def accept_path(tree: Tree, greedy: torch.Tensor) -> list[int]:
    """The longest root path whose every node's token is its parent's greedy choice.

    Args:
        tree: the verified tree; greedy: (N,) argmax of the model's logits at each node.

    Returns:
        Node indices from the root (always accepted) to the last accepted node.
    """
    # show: start accept
    children: dict[int, list[int]] = {}
    for i, p in enumerate(tree.parent):
        children.setdefault(p, []).append(i)
    path = [0]
    while True:
        nxt = [c for c in children.get(path[-1], []) if int(tree.tokens[c]) == int(greedy[path[-1]])]
        if not nxt:
            return path
        path.append(nxt[0])
    # show: end accept


@dataclass
class DecodeResult:
    """What a decoding produced and at what cost.

    Attributes:
        tokens: (n_new,) the generated tokens.
        passes: forward passes of the model, the prompt's included.
        accepted: tokens committed by each verification pass (1 + the matched drafts).
        tree_sizes: nodes verified by each pass.
    """

    tokens: torch.Tensor
    passes: int
    accepted: list[int] = field(default_factory=list)
    tree_sizes: list[int] = field(default_factory=list)


def _prompt(model: GPT, prompt: torch.Tensor) -> torch.Tensor:
    prompt = check_tokens("prompt", prompt, dims=(1, 2), vocab_size=model.cfg.vocab_size, min_length=1)
    if prompt.dim() == 2:
        if prompt.shape[0] != 1:
            raise ValueError(f"prompt must be one sequence (T,) or (1, T), got {tuple(prompt.shape)}")
        prompt = prompt[0]
    return prompt


@torch.no_grad()
def greedy_decode(model: GPT, prompt: torch.Tensor, n_new: int) -> DecodeResult:
    """Greedy decoding with the KV cache: one pass per token (the baseline)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    prompt = _prompt(model, prompt)
    check_int("n_new", n_new, 1)
    if len(prompt) + n_new - 1 > model.cfg.block_size:
        raise ValueError(f"a prompt of {len(prompt)} tokens and {n_new} new ones run past "
                         f"block_size={model.cfg.block_size}")
    logits, cache = prefill(model, prompt[None])
    out = [int(logits[0, -1].argmax())]
    for _ in range(n_new - 1):
        out.append(int(decode_step(model, cache, torch.tensor([out[-1]]))[0].argmax()))
    return DecodeResult(torch.tensor(out), passes=n_new, accepted=[1] * (n_new - 1))


@torch.no_grad()
def hidden_transfer_decode(model: GPT, maps: TransferMaps, prompt: torch.Tensor, n_new: int, *,
                           layer: int, width: int) -> DecodeResult:
    """Greedy decoding of ``n_new`` tokens, drafting with hidden transfer, verifying a tree.

    Args:
        model: the GPT; maps: its transfer maps (k = ``maps.k``) for ``layer``.
        prompt: (T,) or (1, T) tokens; T + n_new + k must fit in ``block_size``.
        width: m, tokens per drafted position (1: a chain).

    Returns:
        A :class:`DecodeResult` whose tokens equal greedy decoding's.
    """
    model, maps, layer = _check(model, maps, layer)
    prompt = _prompt(model, prompt)
    check_int("n_new", n_new, 1)
    m = check_int("width", width, 1)
    if len(prompt) + n_new + maps.k > model.cfg.block_size:
        raise ValueError(f"a prompt of {len(prompt)} tokens, {n_new} new ones and {maps.k} drafted "
                         f"run past block_size={model.cfg.block_size}")
    T, dev = len(prompt), prompt.device
    cache = KVCache(model.cfg.n_layer, model.cfg.block_size)
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    logits, pseudo, kv = _transfer_pass(model, maps, prompt[None], torch.arange(T, device=dev),
                                        causal, layer, torch.tensor([T - 1], device=dev))
    for i, (kk, vv) in enumerate(kv):
        cache.append(i, kk, vv)
    nxt, drafts = int(logits[0, -1].argmax()), pseudo[0, 0]  # drafts (k, V)
    out, res = [nxt], DecodeResult(torch.empty(0), passes=1)
    # show: start decode
    while len(out) < n_new:
        tree = build_tree(nxt, drafts.topk(m, -1).indices)  # root: the pending greedy token
        S = cache.length
        logits, pseudo, kv = _transfer_pass(
            model, maps, tree.tokens[None].to(dev), S + tree.depth.to(dev), tree.mask.to(dev),
            layer, torch.arange(len(tree.tokens), device=dev), cache)
        path = accept_path(tree, logits[0].argmax(-1))
        for i, (kk, vv) in enumerate(kv):  # keep the accepted nodes' keys and values
            cache.append(i, kk[:, :, path], vv[:, :, path])
        out += [int(tree.tokens[p]) for p in path[1:]]
        nxt, drafts = int(logits[0, path[-1]].argmax()), pseudo[0, path[-1]]
        out.append(nxt)
        res.passes += 1
        res.accepted.append(len(path))
        res.tree_sizes.append(len(tree.tokens))
    # show: end decode
    res.tokens = torch.tensor(out[:n_new])
    return res

"""γ-MoD: pick the layers to turn into mixture-of-depths layers by the rank of their attention.

Paper: *γ-MoD: Exploring Mixture-of-Depth Adaptation for Multimodal Large Language Models*
(Luo et al., arXiv:2410.13859). A mixture-of-depths (MoD) layer lets a router send only the
top-C tokens of a sequence through a block; the others ride the residual stream past it. Which
layers can afford that? γ-MoD's answer is the *attention rank* (ARank): a layer whose attention
maps have low rank mixes tokens in few distinct ways, so it is redundant, and it is converted.

The miniature: a deeper byte GPT (:func:`labkit.lm.deep_gpt_recipe`) in place of a multimodal
LLM, routers fine-tuned briefly with the rest frozen, and a numerical rank with a stated relative
threshold: a causal attention map is lower-triangular with a positive diagonal, so its exact rank
is always T and only a numerical rank can rank layers. The routing here picks the top-C tokens of
the whole window, which looks ahead (as MoD's training does); generation would need a causal
predictor of the choice.

Shapes: B batch, T tokens, D width, H heads, L blocks, C tokens routed through a MoD block.
Section: chapter 06, "γ-MoD: attention rank and mixture of depths".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from labkit.data.corpus import TextCorpus
from labkit.lm import GPT, GPTConfig
from labkit.validation import check_int, check_real

from .hooks import hooked_forward

__all__ = ["MoDBlock", "attention_rank", "layer_aranks", "mod_loss", "mod_macs", "train_mod_routers"]


def attention_rank(maps: torch.Tensor, *, rtol: float) -> torch.Tensor:
    """Numerical rank of each attention map: singular values above ``rtol`` times the largest.

    Args:
        maps: (..., T, T) attention probabilities.
        rtol: relative threshold in (0, 1).

    Returns:
        (...) int64 ranks, equal to ``torch.linalg.matrix_rank(maps, rtol=rtol)``.
    """
    check_real("rtol", rtol, 0.0, strict=True)
    if not rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    if maps.dim() < 2 or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"maps must be (..., T, T) square matrices, got {tuple(maps.shape)}")
    # show: start arank
    s = torch.linalg.svdvals(maps.double())  # (..., T), descending
    return (s > rtol * s[..., :1]).sum(-1)  # count above rtol * sigma_max
    # show: end arank


@torch.no_grad()
def layer_aranks(model: GPT, batches: Sequence[torch.Tensor], *, rtol: float) -> torch.Tensor:
    """ARank of every block: the mean numerical rank over heads and calibration windows, (L,)."""
    total = torch.zeros(model.cfg.n_layer, dtype=torch.float64)
    for idx in batches:
        maps: list[torch.Tensor] = []
        hooked_forward(model, idx, probs=maps)
        total += torch.stack([attention_rank(p, rtol=rtol).double().mean() for p in maps])
    return total / len(batches)


class MoDBlock(nn.Module):
    """A GPT block behind a router: the top ``capacity * T`` tokens run it, the rest skip it.

    The selected tokens keep their order and attend causally among themselves. Their update is
    multiplied by ``1 + w - w.detach()`` with ``w`` the router's sigmoid: the value is the
    pretrained update, while the router still receives a gradient.
    """

    def __init__(self, block: nn.Module, d_model: int, *, capacity: float) -> None:
        super().__init__()
        if not 0 < capacity <= 1:
            raise ValueError(f"capacity must be in (0, 1], got {capacity}")
        self.block, self.capacity = block, float(capacity)
        self.router = nn.Linear(d_model, 1)
        nn.init.normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        # show: start mod
        C = max(1, round(self.capacity * T))
        logits = self.router(x).squeeze(-1)  # (B, T)
        top = logits.topk(C, dim=1).indices.sort(dim=1).values  # (B, C), in order
        gather = top[..., None].expand(B, C, D)
        xs = x.gather(1, gather)  # (B, C, D): the tokens that run the block
        delta = self.block(xs, None)[0] - xs  # the block's update of those tokens
        w = torch.sigmoid(logits.gather(1, top))[..., None]  # (B, C, 1)
        delta = delta * (1 + w - w.detach())  # value 1, gradient to the router
        return x.scatter_add(1, gather, delta)  # the others ride the residual
        # show: end mod


def mod_macs(cfg: GPTConfig, layers: Sequence[int], capacity: float) -> float:
    """Multiply-adds per token of the blocks when ``layers`` are MoD blocks at ``capacity``.

    A block costs ``4 D^2 + 2 D d_ff`` per token it processes, plus causal attention
    ``D n (n + 1)`` over a sequence of n processed tokens (divided among the T tokens).
    """
    if not 0 < capacity <= 1:
        raise ValueError(f"capacity must be in (0, 1], got {capacity}")
    T, D = cfg.block_size, cfg.d_model

    def block(n: int) -> float:
        return n * (4 * D * D + 2 * D * cfg.d_ff) + D * n * (n + 1)

    C = max(1, round(capacity * T))
    return sum(block(C) if i in layers else block(T) for i in range(cfg.n_layer)) / T


def _check_layers(model: GPT, layers: Sequence[int]) -> list[int]:
    layers = sorted({int(i) for i in layers})
    if not layers or layers[0] < 0 or layers[-1] >= model.cfg.n_layer:
        raise ValueError(f"layers must be a non-empty set of block indices in [0, {model.cfg.n_layer})")
    return layers


def train_mod_routers(model: GPT, corpus: TextCorpus, layers: Sequence[int], *, capacity: float, steps: int,
                      batch_size: int = 16, lr: float = 1e-2, seed: int = 0) -> nn.ModuleDict:
    """Turn ``layers`` into MoD blocks and fine-tune only their routers for ``steps`` steps."""
    layers = _check_layers(model, layers)
    check_int("steps", steps, 1)
    torch.manual_seed(seed)
    mods = nn.ModuleDict({str(i): MoDBlock(model.blocks[i], model.cfg.d_model, capacity=capacity) for i in layers})
    params = [p for m in mods.values() for p in m.router.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    fns = {i: (lambda _i, _b, x, m=mods[str(i)]: m(x)) for i in layers}
    gen = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    try:
        for _ in range(steps):
            x, y = corpus.get_batch("train", batch_size=batch_size, block_size=model.cfg.block_size, generator=gen)
            logits = hooked_forward(model, x, block_fn=fns)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        model.requires_grad_(True)
    return mods


@torch.no_grad()
def mod_loss(model: GPT, corpus: TextCorpus, mods: nn.ModuleDict | None = None, *, batches: int = 8,
             batch_size: int = 16, seed: int = 1234) -> float:
    """Validation loss (nats per byte) with ``mods`` (from :func:`train_mod_routers`) in place."""
    check_int("batches", batches, 1)
    fns = {int(i): (lambda _i, _b, x, m=m: m(x)) for i, m in (mods or {}).items()}
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = corpus.get_batch("val", batch_size=batch_size, block_size=model.cfg.block_size, generator=gen)
        total += float(F.cross_entropy(hooked_forward(model, x, block_fn=fns).flatten(0, 1), y.flatten()))
    return total / batches

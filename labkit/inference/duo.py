"""Duo-LLM: a small and a big feed-forward module in every layer, and who should use which.

Paper: *Duo-LLM: A Framework for Studying Adaptive Computation in Large Language Models*
(Alizadeh et al., arXiv:2410.10846). Every feed-forward network (FFN) of a transformer gets a
second, smaller module beside it; at each layer a token takes the big module, the small one, or
skips the FFN (the residual stream passes it by). One training with random per-token routes
makes every one of the ``3^L`` routes a usable model. An *oracle* then searches routes with the
labels in hand, which tells how much adaptive computation could give, and a trained router
shows how much of that a router that sees only the hidden state gets.

The miniature: a byte-level GPT of a few blocks on standard-library code (the paper: 1.2B
parameters). The oracle is the paper's cheapest one, "big module in exactly one layer, small
elsewhere" (L + 1 forward passes, a per-token argmin); it ignores causal coupling: a token's
route also changes the keys and values later tokens attend to, but each candidate pass routes
*every* token the same way, and the argmin mixes passes per token. Routes with several big
layers or skips are out of reach of exhaustive search (``3^L``).

Routes are integers: 0 skip, 1 small, 2 big. Shapes: B batch, T tokens, L layers, D width.
Section: chapter 06, "Duo-LLM: small and big modules, oracle routes and a router".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from labkit.data.corpus import TextCorpus
from labkit.lm.gpt import CausalSelfAttention
from labkit.runtime import seed_everything
from labkit.validation import check_int, check_real, check_tokens

__all__ = ["DuoConfig", "DuoGPT", "LayerRouters", "OracleResult", "SKIP", "SMALL", "BIG", "oracle_routes",
           "route_macs", "routed_loss", "train_duo", "train_routers"]

SKIP, SMALL, BIG = 0, 1, 2

#: a route decision at one layer: (layer, FFN input (B, T, D)) -> routes (B, T)
Decide = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DuoConfig:
    """The Duo GPT's architecture.

    Attributes:
        n_layer, n_head, d_model, block_size, vocab_size: as :class:`labkit.lm.GPTConfig`.
        d_small, d_big: hidden widths of the small and the big FFN module.
    """

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 64
    block_size: int = 64
    vocab_size: int = 256
    d_small: int = 32
    d_big: int = 256

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "block_size", "vocab_size", "d_small", "d_big"):
            check_int(name, getattr(self, name), 1)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.d_small >= self.d_big:
            raise ValueError(f"d_small={self.d_small} must be smaller than d_big={self.d_big}")


def _mlp(d: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))


class _DuoBlock(nn.Module):
    def __init__(self, cfg: DuoConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)  # the lab GPT's; reads n_head, d_model
        self.small, self.big = _mlp(cfg.d_model, cfg.d_small), _mlp(cfg.d_model, cfg.d_big)


class DuoGPT(nn.Module):
    """A pre-LN byte GPT whose every FFN is a choice of skip, small or big module."""

    def __init__(self, cfg: DuoConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DuoConfig):
            raise TypeError(f"cfg must be a DuoConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(_DuoBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def _check_routes(self, routes: torch.Tensor, B: int, T: int) -> torch.Tensor:
        L = self.cfg.n_layer
        if not isinstance(routes, torch.Tensor) or routes.dtype not in (torch.int64, torch.int32):
            raise TypeError("routes must be an integer tensor of shape (L,) or (B, T, L)")
        if routes.shape == (L,):
            routes = routes.view(1, 1, L).expand(B, T, L)
        if tuple(routes.shape) != (B, T, L):
            raise ValueError(f"routes must have shape ({L},) or ({B}, {T}, {L}), got {tuple(routes.shape)}")
        if routes.numel() and (routes.min() < SKIP or routes.max() > BIG):
            raise ValueError("routes must hold 0 (skip), 1 (small) or 2 (big)")
        return routes

    def forward(self, idx: torch.Tensor, routes: torch.Tensor | None = None, *, decide: Decide | None = None,
                targets: torch.Tensor | None = None,
                trace: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits, and the per-token loss when ``targets`` are given.

        Args:
            idx: (B, T) byte tokens.
            routes: (L,) the same route for every token, or (B, T, L) one per token; default all big.
            decide: instead of ``routes``, a function choosing each layer's routes (B, T) from
                that layer's FFN input, the hidden state a router sees.
            targets: (B, T) next bytes.
            trace: if a list, receives each layer's FFN input (B, T, D) and chosen routes (B, T).

        Returns:
            ``(logits (B, T, V), loss (B, T) in nats or None)``.
        """
        check_tokens("idx", idx, dims=2, vocab_size=self.cfg.vocab_size)
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.cfg.block_size}")
        if routes is not None and decide is not None:
            raise ValueError("give routes or decide, not both")
        if decide is None:
            routes = self._check_routes(torch.full((self.cfg.n_layer,), BIG) if routes is None else routes, B, T)
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, D)
        # show: start duo
        for layer, block in enumerate(self.blocks):
            x = x + block.attn(block.ln1(x))  # attention always runs
            h = block.ln2(x)  # the FFN input, all a router may look at
            r = decide(layer, h) if decide is not None else routes[..., layer]  # (B, T)
            # each token runs only its own module; a skip adds nothing to the residual
            y = torch.zeros_like(h).view(B * T, -1)  # (B*T, D)
            flat, rf = h.reshape(B * T, -1), r.reshape(B * T)
            for choice, module in ((SMALL, block.small), (BIG, block.big)):
                rows = (rf == choice).nonzero().squeeze(1)
                y = y.index_put((rows,), module(flat[rows]))
            x = x + y.view(B, T, -1)
            if trace is not None:
                trace.append((h.detach(), r.detach()))
        # show: end duo
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), reduction="none")
        return logits, loss.view(B, T)


def route_macs(cfg: DuoConfig, routes: torch.Tensor) -> float:
    """Multiply-adds per token of the FFN modules a route uses, averaged over tokens.

    Attention, embeddings and head cost every route the same and are left out, so the figure
    compares what routing changes. A token in module of width w at width D costs ``2 D w``.

    Args:
        cfg: the architecture.
        routes: (L,) or (..., L) routes.
    """
    if not isinstance(cfg, DuoConfig):
        raise TypeError(f"cfg must be a DuoConfig, got {type(cfg).__name__}")
    if not isinstance(routes, torch.Tensor) or routes.shape[-1:] != (cfg.n_layer,):
        raise ValueError(f"routes must be a tensor whose last dimension is n_layer={cfg.n_layer}")
    cost = torch.tensor([0.0, 2 * cfg.d_model * cfg.d_small, 2 * cfg.d_model * cfg.d_big])
    return float(cost[routes.long()].sum(-1).float().mean())


def train_duo(cfg: DuoConfig, corpus: TextCorpus, *, steps: int, batch_size: int = 16, lr: float = 3e-3,
              route_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3), seed: int = 0,
              progress: bool = True) -> DuoGPT:
    """Train a :class:`DuoGPT` once with random per-token, per-layer routes.

    Each step draws every (token, layer) route independently from ``route_probs`` (skip, small,
    big), so every module learns to work after any mixture of the others (Duo-LLM's random
    routing stage). AdamW with a short warm-up and cosine decay.

    Returns:
        the model in eval mode.
    """
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr, 0.0, strict=True)
    probs = torch.tensor(route_probs, dtype=torch.float64)
    if probs.shape != (3,) or (probs < 0).any() or not math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6):
        raise ValueError(f"route_probs must be three non-negative numbers summing to 1, got {route_probs}")
    gen = seed_everything(seed)
    model = DuoGPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 15)
    for step in tqdm(range(steps), desc="train Duo GPT", disable=not progress, leave=False):
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x, y = corpus.get_batch("train", batch_size=batch_size, block_size=cfg.block_size, generator=gen)
        routes = torch.multinomial(probs.float(), batch_size * cfg.block_size * cfg.n_layer, replacement=True,
                                   generator=gen).view(batch_size, cfg.block_size, cfg.n_layer)
        loss = model(x, routes, targets=y)[1].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.eval()


@dataclass
class OracleResult:
    """The one-big-layer oracle on a batch.

    Attributes:
        losses: (L + 1, B, T) per-token loss of each candidate: 0 all small, l + 1 big at layer l.
        choice: (B, T) the argmin candidate minus one: -1 all small, l big at layer l.
        loss: mean per-token loss of the oracle (the per-token minimum).
        routes: (B, T, L) the chosen routes.
    """

    losses: torch.Tensor
    choice: torch.Tensor
    loss: float
    routes: torch.Tensor


@torch.no_grad()
def oracle_routes(model: DuoGPT, idx: torch.Tensor, targets: torch.Tensor) -> OracleResult:
    """Duo-LLM's cheapest oracle: per token, the best of "small everywhere" and "big in one layer".

    L + 1 forward passes, each routing every token the same way; the per-token argmin of the loss
    then picks a candidate per token. It ignores causal coupling (see the module docstring), so
    its loss is an optimistic reference, not a route one forward pass can follow.
    """
    if not isinstance(model, DuoGPT):
        raise TypeError(f"model must be a DuoGPT, got {type(model).__name__}")
    L = model.cfg.n_layer
    candidates = torch.full((L + 1, L), SMALL)  # row 0: all small
    candidates[torch.arange(1, L + 1), torch.arange(L)] = BIG  # row l + 1: big at layer l
    losses = torch.stack([model(idx, c, targets=targets)[1] for c in candidates])  # (L + 1, B, T)
    best = losses.argmin(0)  # (B, T)
    return OracleResult(losses=losses, choice=best - 1, loss=float(losses.min(0).values.mean()),
                        routes=candidates[best])


class LayerRouters(nn.Module):
    """One linear router per layer: the logit that this token should take the big module here.

    At inference a token takes the big module where the sigmoid exceeds ``threshold``, else the
    small one; it sees only its FFN input, so it can be run in a single causal forward pass.
    """

    def __init__(self, cfg: DuoConfig) -> None:
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(cfg.d_model, 1) for _ in range(cfg.n_layer))

    def logits(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """(B, T) big-module logits of layer ``layer`` for FFN inputs ``h`` (B, T, D)."""
        return self.linears[layer](h).squeeze(-1)

    def decider(self, threshold: float = 0.5) -> Decide:
        """A ``decide`` function for :meth:`DuoGPT.forward`: big where sigmoid > ``threshold``."""
        check_real("threshold", threshold, 0.0)
        if not threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        cut = math.log(threshold / (1 - threshold)) if threshold > 0 else -math.inf

        def decide(layer: int, h: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.where(self.logits(layer, h) > cut, BIG, SMALL)
        return decide


def train_routers(model: DuoGPT, corpus: TextCorpus, *, batches: int, batch_size: int = 16, steps: int = 200,
                  lr: float = 1e-2, seed: int = 0) -> LayerRouters:
    """Fit per-layer routers to the oracle's choices on ``batches`` training batches.

    Layer l's router learns, by logistic regression on the FFN inputs of the all-small pass,
    whether the oracle put this token's big module at layer l.
    """
    check_int("batches", batches, 1)
    check_int("steps", steps, 1)
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    small = torch.full((model.cfg.n_layer,), SMALL)
    for _ in range(batches):
        x, y = corpus.get_batch("train", batch_size=batch_size, block_size=model.cfg.block_size, generator=gen)
        oracle = oracle_routes(model, x, y)
        trace: list = []
        with torch.no_grad():
            model(x, small, trace=trace)
        feats.append(torch.stack([h for h, _ in trace]))  # (L, B, T, D)
        labels.append(torch.stack([oracle.choice == layer for layer in range(model.cfg.n_layer)]).float())
    h_all, y_all = torch.cat(feats, 1), torch.cat(labels, 1)  # (L, N, T, D), (L, N, T)
    torch.manual_seed(seed)
    routers = LayerRouters(model.cfg)
    opt = torch.optim.Adam(routers.parameters(), lr=lr)
    for _ in range(steps):
        loss = sum(F.binary_cross_entropy_with_logits(routers.logits(layer, h_all[layer]), y_all[layer])
                   for layer in range(model.cfg.n_layer))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return routers.eval()


@torch.no_grad()
def routed_loss(model: DuoGPT, corpus: TextCorpus, *, routes: torch.Tensor | None = None,
                decide: Decide | None = None, batches: int = 4, batch_size: int = 16,
                seed: int = 1234) -> tuple[float, float]:
    """Validation loss (nats per byte) and FFN multiply-adds per token of a routing policy.

    Give fixed ``routes`` (L,) or a ``decide`` function (a router); the same seeded windows are
    used for every policy.
    """
    check_int("batches", batches, 1)
    gen = torch.Generator().manual_seed(seed)
    total, macs = 0.0, 0.0
    for _ in range(batches):
        x, y = corpus.get_batch("val", batch_size=batch_size, block_size=model.cfg.block_size, generator=gen)
        trace: list = []
        loss = model(x, routes, decide=decide, targets=y, trace=trace)[1]
        total += float(loss.mean())
        macs += route_macs(model.cfg, torch.stack([r for _, r in trace], -1))
    return total / batches, macs / batches

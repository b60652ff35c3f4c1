"""The tiny GPT: the book's language-model lab animal, with a pluggable feed-forward layer.

A decoder-only transformer in the manner of GPT-2 and nanoGPT: token and position embeddings,
``n_layer`` pre-LayerNorm blocks of causal self-attention and a feed-forward network, a final
LayerNorm and an output head tied to the token embedding. It reads bytes (vocabulary 256) of
:func:`labkit.data.corpus.stdlib_corpus`.

The feed-forward network of each block is chosen by :class:`GPTConfig`: ``ffn="dense"`` (an
MLP of width ``d_ff``) or ``ffn="moe"`` (a :class:`labkit.moe.layer.MoEFFN` of ``n_experts``
experts of width ``d_ff``, ``top_k`` active, with a ``"linear"``, ``"recurrent"``, ``"pregate"``
or ``"pregate_shared"`` router; the last is one router object shared by every sparse block).
``moe_layers`` makes only some blocks sparse (dense early layers, sparse late layers, as
Post-MoE does). A routing state flows from block to block, which the recurrent router of RMoE
uses and the others ignore.

What the miniature leaves out: dropout, weight decay groups, flash attention, KV caching
(chapter 07 adds one), anything beyond greedy or temperature sampling.

Shapes: B batch, T tokens, D = d_model, H heads, V vocabulary.
Section: chapter 05, "Top-k routing from scratch" (the lab animal, reused by chapters 10 and 14).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from labkit.moe.layer import DenseFFN, MoEFFN, Routing
from labkit.moe.routers import LinearRouter, PreGateRouter, RecurrentRouter
from labkit.validation import check_int

__all__ = ["GPT", "GPTConfig", "GPTOutput"]

_FFNS = ("dense", "moe")
_ROUTERS = ("linear", "recurrent", "pregate", "pregate_shared")


@dataclass(frozen=True)
class GPTConfig:
    """Everything that determines a tiny GPT's architecture (hashable, so it keys cached weights).

    Attributes:
        vocab_size: V (256 for bytes).
        block_size: longest context T.
        n_layer, n_head, d_model: depth, heads and width.
        d_ff: hidden width of the dense MLP, or of each expert.
        ffn: ``"dense"`` or ``"moe"``.
        n_experts, top_k, capacity_factor: the MoE layer (ignored when dense);
            ``capacity_factor=None`` never drops.
        router: ``"linear"`` (independent per layer), ``"recurrent"`` (RMoE's GRU) or
            ``"pregate"`` (every layer routes from the input embedding) or ``"pregate_shared"``
            (Read-ME: one router on the embedding, whose choice every sparse layer reuses).
        router_dim: width R of the recurrent routing state.
        moe_layers: indices of the sparse blocks; ``None`` means all of them.
        aux_loss_weight: weight of the load-balancing loss in :meth:`GPT.forward`'s loss.
        causal: opt-in; ``False`` lets every token attend to every other (a bidirectional
            encoder, as the masked decoder of chapter 17 needs). Left out of :meth:`as_dict`
            at its default ``True``, so the cache keys of causal models do not change.
    """

    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    ffn: str = "dense"
    n_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = None
    router: str = "linear"
    router_dim: int = 32
    moe_layers: tuple[int, ...] | None = None
    aux_loss_weight: float = 0.01
    causal: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff", "n_experts", "router_dim"):
            check_int(name, getattr(self, name), 1)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.ffn not in _FFNS:
            raise ValueError(f"ffn must be one of {_FFNS}, got {self.ffn!r}")
        if not isinstance(self.causal, bool):
            raise TypeError(f"causal must be a bool, got {type(self.causal).__name__}")
        if self.router not in _ROUTERS:
            raise ValueError(f"router must be one of {_ROUTERS}, got {self.router!r}")
        check_int("top_k", self.top_k, 1)
        if self.ffn == "moe" and self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None, got {self.capacity_factor}")
        if self.moe_layers is not None:
            object.__setattr__(self, "moe_layers", tuple(self.moe_layers))
            bad = [i for i in self.moe_layers if not 0 <= i < self.n_layer]
            if bad:
                raise ValueError(f"moe_layers must be block indices in [0, {self.n_layer}), got {bad}")

    def is_sparse(self, layer: int) -> bool:
        """Whether block ``layer`` has an MoE feed-forward layer."""
        return self.ffn == "moe" and (self.moe_layers is None or layer in self.moe_layers)

    def as_dict(self) -> dict:
        """Plain dict of the fields (for cache keys and printing); opt-ins at their defaults
        are left out, so adding one leaves existing keys unchanged."""
        out = asdict(self)
        if self.causal:
            del out["causal"]
        return out


@dataclass
class GPTOutput:
    """What :meth:`GPT.forward` returns.

    Attributes:
        logits: (B, T, V).
        loss: cross-entropy plus ``aux_loss_weight`` times the balancing losses, or None
            without targets.
        lm_loss: the cross-entropy alone (nats per token), or None.
        routing: one :class:`labkit.moe.layer.Routing` per block (None for dense blocks).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    routing: list[Routing | None] = field(default_factory=list)


class CausalSelfAttention(nn.Module):
    """Multi-head attention where token t sees tokens <= t (Vaswani et al., eq. 1), or every
    token when ``causal`` is False. Reads only ``n_head`` and ``d_model`` from ``cfg``, so
    other models' configs (Duo-LLM's) build it too."""

    def __init__(self, cfg: GPTConfig, *, causal: bool = True) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.causal = causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # softmax(QK^T/sqrt(d)) V
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + ffn(ln(x))``."""

    def __init__(self, cfg: GPTConfig, layer: int, shared: nn.Module | None) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, causal=cfg.causal)
        if cfg.is_sparse(layer):
            if cfg.router == "recurrent":
                router = RecurrentRouter(cfg.d_model, cfg.n_experts, shared)
            elif cfg.router == "pregate_shared":
                router = shared  # one PreGateRouter object for every sparse block
            elif cfg.router == "pregate":
                router = PreGateRouter(cfg.d_model, cfg.n_experts)
            else:
                router = LinearRouter(cfg.d_model, cfg.n_experts)
            self.ffn: nn.Module = MoEFFN(cfg.d_model, cfg.d_ff, router, top_k=cfg.top_k,
                                         capacity_factor=cfg.capacity_factor)
        else:
            self.ffn = DenseFFN(cfg.d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, Routing | None]:
        x = x + self.attn(self.ln1(x))
        y, state, routing = self.ffn(self.ln2(x), state)
        return x + y, state, routing


class GPT(nn.Module):
    """The tiny GPT. ``GPT(GPTConfig(ffn="moe", router="recurrent"))`` is a tiny RMoE.

    Args:
        cfg: the architecture.
        init_seed: seed of :meth:`reset_parameters` (default: ``torch.initial_seed()``, i.e. the
            seed given to :func:`labkit.seed_everything`).
    """

    def __init__(self, cfg: GPTConfig, *, init_seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        shared: nn.Module | None = None
        if cfg.ffn == "moe" and cfg.router == "recurrent":
            shared = nn.GRUCell(cfg.router_dim, cfg.router_dim)
        elif cfg.ffn == "moe" and cfg.router == "pregate_shared":
            shared = PreGateRouter(cfg.d_model, cfg.n_experts)
        self.blocks = nn.ModuleList(Block(cfg, i, shared) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying (Press & Wolf, 2017)
        self._pregate = cfg.ffn == "moe" and cfg.router in ("pregate", "pregate_shared")
        self.reset_parameters(torch.initial_seed() if init_seed is None else init_seed)

    def reset_parameters(self, seed: int) -> None:
        """Initialise every parameter from a generator seeded by ``seed`` and the parameter's *name*.

        Two variants of the model (dense or MoE, one router or another) then start from the same
        values wherever they have the same parameter, so a comparison between them measures the
        architecture rather than the luck of the draw. Weights get N(0, 0.02^2) as in GPT-2,
        biases zero, LayerNorms identity; the recurrent router keeps a unit-variance projection
        (see :meth:`labkit.moe.routers.RecurrentRouter.reset_parameters`) and the GRU cell
        PyTorch's uniform initialisation.
        """
        for name, param in self.named_parameters():
            digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
            leaf = name.rsplit(".", 1)[-1]
            with torch.no_grad():
                if ".gru." in name:
                    bound = self.cfg.router_dim ** -0.5
                    param.copy_(torch.rand(param.shape, generator=g) * 2 * bound - bound)
                elif ".ln" in name or name.startswith("ln_f") or ".router.norm." in name:
                    param.fill_(1.0 if leaf == "weight" else 0.0)
                elif leaf.startswith("b") and leaf != "weight" or leaf == "bias":
                    param.zero_()
                else:
                    std = param.shape[-1] ** -0.5 if name.endswith("router.project.weight") else 0.02
                    param.copy_(torch.randn(param.shape, generator=g) * std)

    def n_params(self, *, active: bool = False) -> int:
        """Parameters (shared ones once); with ``active=True`` count only ``top_k`` experts per MoE layer."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for block in self.blocks:
                if isinstance(block.ffn, MoEFFN):
                    f = block.ffn
                    per_expert = (f.w_up.numel() + f.b_up.numel() + f.w_down.numel()) // f.n_experts
                    total -= per_expert * (f.n_experts - f.top_k)
        return total

    def forward(self, idx: torch.Tensor | None, targets: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None) -> GPTOutput:
        """Logits for next-token prediction, and the loss when ``targets`` (B, T) are given.

        Args:
            idx: (B, T) token ids, or None when ``inputs_embeds`` is given.
            targets: (B, T) next tokens, or None.
            inputs_embeds: opt-in (B, T, D) vectors used in place of the token embeddings
                (position embeddings are still added), for inputs that are not bytes, e.g.
                projected features (chapter 18, NetLLM). Exactly one of ``idx`` and
                ``inputs_embeds`` is given.
        """
        if (idx is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of idx and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.cfg.d_model:
                raise ValueError(f"inputs_embeds must be (B, T, {self.cfg.d_model}), "
                                 f"got shape {tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        else:
            if idx.dim() != 2:
                raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
            B, T = idx.shape
            device = idx.device
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.cfg.block_size}")
        tok = inputs_embeds if inputs_embeds is not None else self.tok(idx)
        x = tok + self.pos(torch.arange(T, device=device))  # (B, T, D)
        state = x.reshape(B * T, -1) if self._pregate else None  # Read-ME routes from the embedding
        routings = []
        for block in self.blocks:
            x, state, routing = block(x, state)
            routings.append(routing)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return GPTOutput(logits=logits, routing=routings)
        lm_loss = nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        aux = sum((r.aux_loss for r in routings if r is not None), torch.zeros((), device=device))
        return GPTOutput(logits=logits, loss=lm_loss + self.cfg.aux_loss_weight * aux, lm_loss=lm_loss, routing=routings)

    @torch.no_grad()
    def pregate_routes(self, idx: torch.Tensor) -> torch.Tensor:
        """Every sparse block's experts for ``idx`` (B, T) without running the backbone (Read-ME).

        Returns:
            (B * T, L_sparse, k) int64, before any capacity limit.
        """
        if not self._pregate:
            raise ValueError("pregate_routes needs a model with ffn='moe' and router='pregate' or 'pregate_shared'")
        B, T = idx.shape
        e = (self.tok(idx) + self.pos(torch.arange(T, device=idx.device))).reshape(B * T, -1)  # (N, D)
        routes = []
        for block in self.blocks:
            if isinstance(block.ffn, MoEFFN):
                logits, _ = block.ffn.router(e, e)
                routes.append(torch.topk(logits, block.ffn.top_k, dim=-1).indices)  # softmax keeps the order
        return torch.stack(routes, dim=1)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T): greedy at temperature 0, else sampled."""
        check_int("max_new_tokens", max_new_tokens, 0)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.block_size:]).logits[:, -1]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx

"""MatryoshkaKV: trainable orthogonal projections of the lab GPT's keys and values.

*MatryoshkaKV: Adaptive KV Compression via Trainable Orthogonal Projection* (Lin et al., 2024,
arXiv:2410.14731) shrinks the KV cache along the feature axis. Every attention
head of every block gets two orthogonal d x d matrices ``U_k`` and ``U_v``; the cache keeps only
the first ``r`` coordinates of the rotated keys and values:

    K~ = K U_k[:, :r],   q~ = q U_k[:, :r],   scores = q~ K~^T / sqrt(d),
    V~ = V U_v[:, :r],   output = softmax(scores) V~ U_v[:, :r]^T W_o^T,

where ``U_v[:, :r]^T`` folds into the output projection ``W_o`` (so nothing is decompressed at
run time). At ``r = d`` an orthogonal ``U`` changes nothing (``U U^T = I``). Principal component
analysis of calibration keys and values gives one such ``U`` (PCA, the baseline); MatryoshkaKV
trains ``U`` instead, with the model frozen, against the full model's next-token distribution,
drawing ``r`` from a nested set at every step so that the leading columns matter most at every
rank (the *Matryoshka* order). A greedy search then gives each head its own rank under an
average budget.

Here the model is :class:`labkit.lm.GPT` run block by block through
:func:`labkit.inference.hooks.hooked_forward`; the weights and config are untouched. A rank
``r`` keeps columns ``0 .. r-1``; :func:`projected_attention` zeroes the other columns of the
rotated keys and values, which computes exactly what keeping the first ``r`` does, and lets every
head have its own rank in one batched product.

What the miniature leaves out: the paper's 7B models, long training runs and downstream tasks;
here the bases of a byte GPT are trained for a few hundred steps and judged by the KL divergence
to the full model and by next-byte accuracy. The rank search is greedy and lazy (one cut at a
time, costs re-measured only for the cheapest candidate).

Shapes: B batch, T tokens, D width, L blocks, H heads, d = D / H head width, N samples,
r kept columns.
Section: chapter 07, "MatryoshkaKV: trainable orthogonal KV projections".
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import orthogonal

from labkit.data.corpus import TextCorpus
from labkit.inference.hooks import hooked_forward
from labkit.lm import GPT
from labkit.validation import check_int, check_real, check_tensor, check_tokens

__all__ = ["KVProjection", "RankAllocation", "check_ranks", "greedy_allocation", "kv_states",
           "pca_projection", "project_kv", "projected_attention", "projected_logits",
           "projection_kl", "train_projection"]

Ranks = int | Sequence[Sequence[int]] | torch.Tensor


def _dense_gpt(model: object) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a labkit.lm.GPT, got {type(model).__name__}")
    if model.cfg.ffn != "dense":
        raise ValueError("MatryoshkaKV needs a dense GPT (ffn='dense')")
    return model


def _shape(model: GPT) -> tuple[int, int, int]:
    c = model.cfg
    return c.n_layer, c.n_head, c.d_model // c.n_head


def check_ranks(name: str, ranks: Ranks, n_layer: int, n_head: int, head_dim: int) -> torch.Tensor:
    """``ranks`` as an (L, H) int64 tensor; an int means the same rank for every head.

    Raises:
        TypeError: not an int, a nested sequence or an integer tensor.
        ValueError: a shape other than (L, H), or a rank below 1 or above ``head_dim``.
    """
    if isinstance(ranks, bool) or not isinstance(ranks, (int, Sequence, torch.Tensor)):
        raise TypeError(f"{name} must be an int or an (L, H) table of ints, got {type(ranks).__name__}")
    if isinstance(ranks, int):
        out = torch.full((n_layer, n_head), ranks, dtype=torch.long)
    else:
        out = torch.as_tensor(ranks)
        if out.is_floating_point() or out.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {out.dtype}")
        out = out.long()
    if tuple(out.shape) != (n_layer, n_head):
        raise ValueError(f"{name} must have shape (L, H) = ({n_layer}, {n_head}), got {tuple(out.shape)}")
    if out.numel() and (int(out.min()) < 1 or int(out.max()) > head_dim):
        raise ValueError(f"{name} must lie in [1, {head_dim}] (the head width), got values from "
                         f"{int(out.min())} to {int(out.max())}")
    return out


class _Basis(nn.Module):
    """Holds one (L, H, d, d) weight; :class:`KVProjection` makes it orthogonal."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init.clone())


class KVProjection(nn.Module):
    """Orthogonal ``U_k`` and ``U_v`` for every block and head, trainable.

    Both are ``torch.nn.utils.parametrizations.orthogonal`` weights of shape (L, H, d, d) (a
    batch of d x d matrices): any gradient step keeps them orthogonal.

    Args:
        keys, values: (L, H, d, d) orthogonal starting bases (e.g. from :func:`pca_projection`);
            default: identities.
        n_layer, n_head, head_dim: the sizes, needed only without ``keys``.
    """

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, *,
                 n_layer: int | None = None, n_head: int | None = None,
                 head_dim: int | None = None) -> None:
        super().__init__()
        if keys is None or values is None:
            if keys is not None or values is not None:
                raise ValueError("give both keys and values bases, or neither")
            if n_layer is None or n_head is None or head_dim is None:
                raise ValueError("without bases, n_layer, n_head and head_dim are required")
            eye = torch.eye(check_int("head_dim", head_dim, 1))
            keys = eye.expand(check_int("n_layer", n_layer, 1), check_int("n_head", n_head, 1),
                              head_dim, head_dim).clone()
            values = keys.clone()
        for name, u in (("keys", keys), ("values", values)):
            check_tensor(name, u, dims=4, dtype="float", shape="(L, H, d, d)")
            if u.shape[-1] != u.shape[-2]:
                raise ValueError(f"{name} must be square in its last two dimensions, got {tuple(u.shape)}")
            eye = torch.eye(u.shape[-1], dtype=u.dtype)
            if not torch.allclose(u.transpose(-1, -2) @ u, eye, atol=1e-4):
                raise ValueError(f"{name} must be orthogonal (U^T U = I)")
        if keys.shape != values.shape:
            raise ValueError(f"keys and values must have the same shape, got {tuple(keys.shape)} "
                             f"and {tuple(values.shape)}")
        self.key, self.value = _Basis(keys.detach()), _Basis(values.detach())
        orthogonal(self.key, "weight")
        orthogonal(self.value, "weight")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, H, d)``."""
        L, H, d, _ = self.key.weight.shape
        return L, H, d

    def bases(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U_k, U_v)``, each (L, H, d, d), differentiable in the trainable parameters."""
        return self.key.weight, self.value.weight


def project_kv(x: torch.Tensor, u: torch.Tensor, rank: int) -> torch.Tensor:
    """The cached form of keys or values: ``x U[:, :r]``.

    Args:
        x: (B, H, T, d) keys or values of one block.
        u: (H, d, d) that block's orthogonal bases.
        rank: r, in [1, d].

    Returns:
        (B, H, T, r).
    """
    check_tensor("x", x, dims=4, dtype="float", shape="(B, H, T, d)")
    check_tensor("u", u, dims=3, dtype="float", shape="(H, d, d)")
    if u.shape[0] != x.shape[1] or u.shape[1:] != (x.shape[-1], x.shape[-1]):
        raise ValueError(f"u must have shape (H, d, d) = ({x.shape[1]}, {x.shape[-1]}, {x.shape[-1]}), "
                         f"got {tuple(u.shape)}")
    r = check_int("rank", rank, 1, x.shape[-1])
    return x @ u[:, :, :r]


# show: start attention
def projected_attention(attn: nn.Module, x: torch.Tensor, uk: torch.Tensor,
                        uv: torch.Tensor, keep_k: torch.Tensor,
                        keep_v: torch.Tensor) -> torch.Tensor:
    """One block's attention with keys and values cut to each head's rank.

    ``uk``, ``uv`` (H, d, d) orthogonal; ``keep_k``, ``keep_v`` (H, d) are 1 on
    the first r columns of each head and 0 after them. Returns (B, T, D).
    """
    B, T, D = x.shape
    q, k, v = attn.qkv(x).split(D, dim=2)
    q, k, v = (t.view(B, T, attn.n_head, -1).transpose(1, 2)
               for t in (q, k, v))                       # (B, H, T, d)
    d = q.shape[-1]
    k_low = (k @ uk) * keep_k[:, None, :]                # K U_k[:, :r]
    v_low = (v @ uv) * keep_v[:, None, :]                # V U_v[:, :r]
    q_low = q @ uk                      # q U_k; columns past r meet zeros
    o_low = F.scaled_dot_product_attention(q_low, k_low, v_low,
                                           is_causal=True,
                                           scale=1 / math.sqrt(d))
    o = o_low @ uv.transpose(-1, -2)    # U_v[:, :r]^T, part of W_o
    return attn.proj(o.transpose(1, 2).reshape(B, T, D))
# show: end attention


def _keep(ranks: torch.Tensor, d: int, device: torch.device) -> torch.Tensor:
    """(L, H) ranks -> (L, H, d) masks of the kept columns."""
    return (torch.arange(d, device=device) < ranks.to(device)[..., None]).float()


def _logits(model: GPT, idx: torch.Tensor, uk: torch.Tensor, uv: torch.Tensor, rank_k: torch.Tensor,
            rank_v: torch.Tensor) -> torch.Tensor:
    d = uk.shape[-1]
    keep_k, keep_v = _keep(rank_k, d, idx.device), _keep(rank_v, d, idx.device)

    def block(i: int, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x + projected_attention(blk.attn, blk.ln1(x), uk[i], uv[i], keep_k[i], keep_v[i])
        return x + blk.ffn(blk.ln2(x))[0]

    return hooked_forward(model, idx, block_fn={i: block for i in range(model.cfg.n_layer)})


def _bases(proj: KVProjection | tuple[torch.Tensor, torch.Tensor], shape: tuple[int, int, int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(proj, KVProjection):
        uk, uv = proj.bases()
    elif isinstance(proj, tuple) and len(proj) == 2:
        uk, uv = proj
        check_tensor("proj[0]", uk, dims=4, dtype="float", shape="(L, H, d, d)")
        check_tensor("proj[1]", uv, dims=4, dtype="float", shape="(L, H, d, d)")
    else:
        raise TypeError(f"proj must be a KVProjection or a (U_k, U_v) pair, got {type(proj).__name__}")
    want = (*shape, shape[-1])
    if tuple(uk.shape) != want or tuple(uv.shape) != want:
        raise ValueError(f"the bases must have shape (L, H, d, d) = {want} for this model, got "
                         f"{tuple(uk.shape)} and {tuple(uv.shape)}")
    return uk, uv


def projected_logits(model: GPT, idx: torch.Tensor, proj: KVProjection | tuple[torch.Tensor, torch.Tensor],
                     rank_k: Ranks, rank_v: Ranks | None = None) -> torch.Tensor:
    """Logits (B, T, V) of ``model`` with every head's keys and values cut to its rank.

    Args:
        model: a dense :class:`labkit.lm.GPT` (left unchanged).
        idx: (B, T) tokens, T <= block_size.
        proj: a :class:`KVProjection` or a pair of (L, H, d, d) bases ``(U_k, U_v)``.
        rank_k: an int (every head) or an (L, H) table of key ranks in [1, d].
        rank_v: the same for values (default: ``rank_k``).
    """
    model = _dense_gpt(model)
    L, H, d = _shape(model)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    uk, uv = _bases(proj, (L, H, d))
    rk = check_ranks("rank_k", rank_k, L, H, d)
    rv = rk if rank_v is None else check_ranks("rank_v", rank_v, L, H, d)
    return _logits(model, idx, uk, uv, rk, rv)


@torch.no_grad()
def kv_states(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's keys and values on ``idx``: two (L, H, B*T, d) tensors."""
    model = _dense_gpt(model)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []

    def record(i: int, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        h = blk.ln1(x)
        B, T, D = h.shape
        _, k, v = blk.attn.qkv(h).split(D, dim=2)
        for t, out in ((k, keys), (v, values)):  # (B, T, H, d) -> (H, B*T, d)
            out.append(t.view(B, T, blk.attn.n_head, -1).permute(2, 0, 1, 3).reshape(blk.attn.n_head, B * T, -1))
        x = x + blk.attn(h)
        return x + blk.ffn(blk.ln2(x))[0]

    hooked_forward(model, idx, block_fn={i: record for i in range(model.cfg.n_layer)})
    return torch.stack(keys), torch.stack(values)


# show: start pca
@torch.no_grad()
def pca_projection(model: GPT, idx: torch.Tensor) -> KVProjection:
    """The PCA bases: eigenvectors of each head's K^T K and V^T V.

    Columns are sorted by falling eigenvalue, so the first r columns span the
    r-dimensional subspace that keeps the most of the calibration keys'
    (values') energy. ``idx`` (B, T) is the calibration text.
    """
    keys, values = kv_states(model, idx)                 # (L, H, N, d)
    bases = []
    for x in (keys, values):
        cov = x.transpose(-1, -2) @ x / x.shape[-2]      # (L, H, d, d)
        _, vecs = torch.linalg.eigh(cov.double())        # ascending
        bases.append(vecs.flip(-1).float())
    return KVProjection(*bases)
# show: end pca


def _draw(choices: torch.Tensor, L: int, H: int, gen: torch.Generator) -> torch.Tensor:
    return choices[torch.randint(len(choices), (L, H), generator=gen)]


def _kl(full_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(full || projected), in nats."""
    return F.kl_div(logits.log_softmax(-1).flatten(0, -2), full_logp.flatten(0, -2), log_target=True,
                    reduction="batchmean")


def _choices(ranks: Sequence[int], d: int) -> torch.Tensor:
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or not ranks:
        raise TypeError(f"ranks must be a non-empty sequence of ints, got {ranks!r}")
    out = sorted({check_int("ranks", r, 1, d) for r in ranks})
    return torch.tensor(out)


def train_projection(model: GPT, proj: KVProjection, corpus: TextCorpus, *, steps: int,
                     ranks: Sequence[int] = (4, 8, 12, 16), batch_size: int = 16, lr: float = 1e-2,
                     seed: int = 0) -> list[float]:
    """Train ``proj`` in place; the model stays frozen. Returns the KL of each step.

    Every step draws windows of the training split and, independently for each block, head and
    for keys and values, a rank from the nested set ``ranks``; the loss is the KL divergence from
    the full model's next-byte distribution to the projected one.

    Args:
        model: a dense :class:`labkit.lm.GPT`.
        proj: the bases to train (e.g. from :func:`pca_projection`, as the paper initialises).
        corpus: byte corpus; windows of ``model.cfg.block_size`` bytes.
        steps, batch_size, lr: Adam on the orthogonal parametrisation's parameters.
        ranks: the nested ranks drawn from, each in [1, d].
        seed: seeds the windows and the ranks.
    """
    model = _dense_gpt(model)
    if not isinstance(proj, KVProjection):
        raise TypeError(f"proj must be a KVProjection, got {type(proj).__name__}")
    L, H, d = _shape(model)
    if proj.shape != (L, H, d):
        raise ValueError(f"proj has shape (L, H, d) = {proj.shape}, the model needs {(L, H, d)}")
    if not isinstance(corpus, TextCorpus):
        raise TypeError(f"corpus must be a TextCorpus, got {type(corpus).__name__}")
    check_int("steps", steps, 0)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr, 0.0, strict=True)
    choices = _choices(ranks, d)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    history: list[float] = []
    try:
        # show: start train
        for _ in range(steps):
            x, _ = corpus.get_batch("train", batch_size=batch_size,
                                    block_size=model.cfg.block_size,
                                    generator=gen)
            with torch.no_grad():
                full = model(x).logits.log_softmax(-1)   # the teacher
            rk, rv = (_draw(choices, L, H, gen) for _ in "kv")  # nested r
            uk, uv = proj.bases()                    # orthogonal by design
            loss = _kl(full, _logits(model, x, uk, uv, rk, rv))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
        # show: end train
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    return history


@torch.no_grad()
def projection_kl(model: GPT, idx: torch.Tensor, proj: KVProjection | tuple[torch.Tensor, torch.Tensor],
                  rank_k: Ranks, rank_v: Ranks | None = None) -> float:
    """Mean KL divergence (nats per token) from the full model to the projected one on ``idx``."""
    logits = projected_logits(model, idx, proj, rank_k, rank_v)
    return _kl(model(idx).logits.log_softmax(-1), logits).item()


class RankAllocation(tuple):
    """``(rank_k, rank_v)``: two (L, H) tables of ranks, as :func:`greedy_allocation` returns."""

    @property
    def mean(self) -> float:
        """The average rank over every head's keys and values."""
        return float(torch.cat([self[0].flatten(), self[1].flatten()]).float().mean())


@torch.no_grad()
def greedy_allocation(model: GPT, idx: torch.Tensor, proj: KVProjection | tuple[torch.Tensor, torch.Tensor],
                      *, budget: float, ranks: Sequence[int] = (4, 8, 12, 16)) -> RankAllocation:
    """Per-head ranks for keys and values whose average is at most ``budget``.

    Starting from the largest rank everywhere, each round lowers by one step of ``ranks`` the key
    or value rank of the head whose cut raises the KL divergence to the full model on ``idx`` the
    least, until the average rank reaches ``budget``. The search is lazy: every head keeps the
    cost of its next cut measured when it was last looked at, and only the cheapest is measured
    again against the current ranks; it is cut if it is still the cheapest (costs barely move
    when another head is cut, so this takes far fewer passes than measuring every head each round).

    Args:
        model: a dense :class:`labkit.lm.GPT`.
        idx: (B, T) calibration tokens.
        proj: the bases.
        budget: the average rank allowed, in [min(ranks), max(ranks)].
        ranks: the ranks a head may take.
    """
    model = _dense_gpt(model)
    L, H, d = _shape(model)
    check_tokens("idx", idx, dims=2, vocab_size=model.cfg.vocab_size)
    uk, uv = (u.detach() for u in _bases(proj, (L, H, d)))
    choices = _choices(ranks, d).tolist()
    check_real("budget", budget, float(choices[0]))
    if budget > choices[-1]:
        raise ValueError(f"budget must be at most the largest rank {choices[-1]}, got {budget}")
    full = model(idx).logits.log_softmax(-1)
    table = torch.full((2, L, H), choices[-1], dtype=torch.long)  # keys, values
    lower = {r: choices[i - 1] for i, r in enumerate(choices) if i}

    def kl(t: torch.Tensor) -> float:
        return _kl(full, _logits(model, idx, uk, uv, t[0], t[1])).item()

    def cut(t: torch.Tensor, unit: tuple[int, ...]) -> torch.Tensor:
        t = t.clone()
        t[unit] = lower[int(t[unit])]
        return t

    now = kl(table)
    units = [tuple(u) for u in torch.ones(2, L, H).nonzero().tolist()]
    # show: start search
    heap = [(kl(cut(table, u)) - now, u) for u in units]  # cost of a cut
    heapq.heapify(heap)
    while table.float().mean() > budget + 1e-9:
        _, unit = heapq.heappop(heap)
        trial = cut(table, unit)
        fresh = kl(trial) - now                 # its cost at today's ranks
        if heap and fresh > heap[0][0]:
            heapq.heappush(heap, (fresh, unit))  # no longer the cheapest
            continue
        table, now = trial, now + fresh          # make the cut
        if table[unit] > choices[0]:
            heapq.heappush(heap, (kl(cut(table, unit)) - now, unit))
    # show: end search
    return RankAllocation((table[0], table[1]))

"""Encoder-decoder text diffusion with a spiral interaction (DiffuSIA).

DiffuSIA (arXiv:2305.11517) generates a target sentence from a source sentence by continuous
diffusion on word embeddings, as Diffusion-LM and DiffuSeq do: the target words are mapped to
vectors ``x_0 = E[w]``, noised with ``q(x_t | x_0)``, and a network trained to predict ``x_0``
from ``(x_t, t, source)`` walks the chain back; the last estimate is rounded to the nearest
word embedding. The network is an encoder-decoder transformer: the encoder reads the source,
the decoder reads the noisy target and cross-attends to the encoder. DiffuSIA's change is that
the encoder also reads the target: layer ``l`` of the encoder cross-attends to the decoder's
states after layer ``l - 1`` (its input embedding for ``l = 1``), and decoder layer ``l`` then
cross-attends to encoder layer ``l``'s output, so information winds up through both stacks
layer by layer (the spiral). The plain baseline runs the whole encoder first and lets every
decoder layer read its last output; to keep the parameter count equal, its encoder layers hold
the same extra attention block, attending to the encoder's own states.

The data is a seeded paraphrase grammar of 60 words: a sentence is ``NP verb NP`` (active) or
``NP was verb by NP`` (passive), where ``NP = det [very] [adj] noun``; its paraphrase flips the
voice and swaps every noun, adjective and verb for its fixed synonym. Sentences are at most 11
words and are padded to ``length`` (<= 16) with ``<pad>``, which the model also generates.

Shapes: B sentences, L tokens, D model width, E embedding width, V = 60 words.
Section: chapter 17, "Spiral encoder-decoder text diffusion: DiffuSIA".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.diffusion.schedule import NoiseSchedule, ddim_step, ddim_timesteps
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["VOCAB", "ParaphraseData", "TextDiffusionConfig", "SpiralEncDec", "encode", "decode",
           "make_paraphrases", "diffusion_loss", "round_to_words", "sample", "token_accuracy", "exact_match",
           "train_text_diffusion"]

_DETS = ["the", "a"]
_NOUNS = [("dog", "hound"), ("cat", "kitty"), ("boy", "lad"), ("girl", "lass"), ("man", "guy"),
          ("woman", "lady"), ("bird", "fowl"), ("horse", "pony"), ("king", "monarch"),
          ("child", "kid"), ("doctor", "medic"), ("teacher", "tutor")]
_ADJS = [("big", "large"), ("small", "little"), ("happy", "glad"), ("quick", "fast"),
         ("old", "aged"), ("angry", "mad")]
_VERBS = [("chased", "pursued"), ("saw", "spotted"), ("liked", "enjoyed"), ("hit", "struck"),
          ("found", "located"), ("helped", "aided"), ("pushed", "shoved"), ("grabbed", "seized"),
          ("called", "phoned")]
PAD = "<pad>"
#: The 60 words: ``<pad>``, the function words, then each synonym pair side by side.
VOCAB: tuple[str, ...] = tuple([PAD, "was", "by", "very", *_DETS]
                               + [w for pair in _NOUNS + _ADJS + _VERBS for w in pair])
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_SYNONYM = {a: b for a, b in _NOUNS + _ADJS + _VERBS} | {b: a for a, b in _NOUNS + _ADJS + _VERBS}
MAX_LENGTH = 16


def encode(words: list[str] | str, length: int = 12) -> torch.Tensor:
    """Word ids of a sentence, padded with ``<pad>`` to ``length``.

    Args:
        words: a sentence as a string (split on spaces) or a list of words from :data:`VOCAB`.
        length: the padded length, in [1, 16].

    Returns:
        (length,) int64 ids.

    Raises:
        ValueError: a word outside the vocabulary (named), or a sentence longer than ``length``.
    """
    length = check_int("length", length, 1, MAX_LENGTH)
    if isinstance(words, str):
        words = words.split()
    if not isinstance(words, (list, tuple)):
        raise TypeError(f"words must be a string or a list of words, got {type(words).__name__}")
    unknown = [w for w in words if w not in _INDEX]
    if unknown:
        raise ValueError(f"unknown word {unknown[0]!r} in words; the grammar's vocabulary has "
                         f"{len(VOCAB)} words (see VOCAB)")
    if len(words) > length:
        raise ValueError(f"the sentence has {len(words)} words, more than length = {length}")
    return torch.tensor([_INDEX[w] for w in words] + [0] * (length - len(words)), dtype=torch.int64)


def decode(ids: torch.Tensor) -> str:
    """The words of one row of ids, ``<pad>`` dropped."""
    check_tensor("ids", ids, dims=1, dtype=torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(VOCAB)):
        raise ValueError(f"ids must be in [0, {len(VOCAB)}), got [{int(ids.min())}, {int(ids.max())}]")
    return " ".join(VOCAB[i] for i in ids.tolist() if i != 0)


@dataclass(frozen=True)
class ParaphraseData:
    """Source and target ids of paraphrase pairs.

    Attributes:
        source: (B, L) int64 ids.
        target: (B, L) int64 ids, the source with voice flipped and synonyms swapped.
    """

    source: torch.Tensor
    target: torch.Tensor


def _phrase(g: torch.Generator) -> list[str]:
    pick = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
    words = [_DETS[pick(2)]]
    if pick(2):  # an adjective half the time, "very" before it half of those times
        if pick(2):
            words.append("very")
        words.append(_ADJS[pick(len(_ADJS))][pick(2)])
    words.append(_NOUNS[pick(len(_NOUNS))][pick(2)])
    return words


def _paraphrase(subj: list[str], verb: str, obj: list[str], passive: bool) -> list[str]:
    swap = lambda ws: [_SYNONYM.get(w, w) for w in ws]  # noqa: E731
    if passive:  # the source is passive, so the paraphrase is active
        return swap(subj) + [_SYNONYM[verb]] + swap(obj)
    return swap(obj) + ["was", _SYNONYM[verb], "by"] + swap(subj)


def make_paraphrases(n: int, *, length: int = 12, seed: int = 0) -> ParaphraseData:
    """``n`` seeded paraphrase pairs of the grammar (see the module docstring).

    Args:
        n: the number of pairs, >= 1.
        length: padded length in [11, 16] (the longest sentence has 11 words).
        seed: generator seed.
    """
    n = check_int("n", n, 1)
    length = check_int("length", length, 11, MAX_LENGTH)
    g = torch.Generator().manual_seed(int(seed))
    src, tgt = [], []
    for _ in range(n):
        subj, obj = _phrase(g), _phrase(g)
        verb = _VERBS[int(torch.randint(len(_VERBS), (1,), generator=g))][int(torch.randint(2, (1,), generator=g))]
        passive = bool(torch.randint(2, (1,), generator=g))
        # the agent is `subj`; a passive source names the patient first
        source = obj + ["was", verb, "by"] + subj if passive else subj + [verb] + obj
        src.append(encode(source, length))
        tgt.append(encode(_paraphrase(subj, verb, obj, passive), length))
    return ParaphraseData(torch.stack(src), torch.stack(tgt))


@dataclass(frozen=True)
class TextDiffusionConfig:
    """Sizes of the encoder-decoder and its diffusion.

    Attributes:
        spiral: DiffuSIA's encoder-reads-decoder interaction (False: the plain baseline).
        d_model: transformer width D.
        n_layers: layers in each of the encoder and decoder.
        n_heads: attention heads (divides ``d_model``).
        emb_dim: word-embedding width E, the space the diffusion runs in.
        length: sequence length L, <= 16.
        n_steps: T, the training steps of the noise schedule.
        schedule: ``"cosine"`` or ``"linear"``.
    """

    spiral: bool = True
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    emb_dim: int = 16
    length: int = 12
    n_steps: int = 100
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if not isinstance(self.spiral, bool):
            raise TypeError(f"spiral must be a bool, got {type(self.spiral).__name__}")
        check_int("d_model", self.d_model, 1)
        check_int("n_layers", self.n_layers, 1)
        check_int("n_heads", self.n_heads, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        check_int("emb_dim", self.emb_dim, 1)
        check_int("length", self.length, 1, MAX_LENGTH)
        check_int("n_steps", self.n_steps, 2)


class _Block(nn.Module):
    """Pre-norm self-attention, cross-attention to another stream, MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2, self.nk, self.n3 = (nn.LayerNorm(d) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        a = self.n1(h)
        h = h + self.self_attn(a, a, a, need_weights=False)[0]
        kv = self.nk(other)
        h = h + self.cross_attn(self.n2(h), kv, kv, need_weights=False)[0]
        return h + self.mlp(self.n3(h))


class SpiralEncDec(nn.Module):
    """Predicts the clean target embeddings ``x_0`` from ``(x_t, t, source)``.

    Both variants have identical parameters: each encoder and decoder layer is a :class:`_Block`
    with a second attention. With ``spiral=True`` an encoder layer's second attention reads the
    decoder's current states; with ``spiral=False`` it reads the encoder's own states.
    """

    def __init__(self, cfg: TextDiffusionConfig = TextDiffusionConfig(), *, init_seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(int(init_seed))
        d, V, E = cfg.d_model, len(VOCAB), cfg.emb_dim
        with torch.random.fork_rng():
            torch.manual_seed(int(init_seed))
            self.src_emb = nn.Embedding(V, d)
            self.pos = nn.Parameter(0.02 * torch.randn(cfg.length, d))
            self.t_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
            self.x_in = nn.Linear(E, d)
            self.enc = nn.ModuleList(_Block(d, cfg.n_heads) for _ in range(cfg.n_layers))
            self.dec = nn.ModuleList(_Block(d, cfg.n_heads) for _ in range(cfg.n_layers))
            self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, E))
        # Fixed word embeddings, unit variance per coordinate: the diffusion's data space.
        self.register_buffer("word_emb", torch.randn(V, E, generator=g))

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        half = self.cfg.d_model // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
        ang = t.float()[:, None] * freqs[None]
        emb = torch.cat([ang.sin(), ang.cos()], -1)
        emb = F.pad(emb, (0, self.cfg.d_model - 2 * half))
        return self.t_mlp(emb)[:, None, :]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``x_0`` estimate, (B, L, E), from noisy target ``x_t`` (B, L, E), steps ``t`` (B,) and
        source ids (B, L)."""
        e = self.src_emb(source) + self.pos
        z = self.x_in(x_t) + self.pos + self._time(t)
        # show: start spiral
        if self.cfg.spiral:
            for enc, dec in zip(self.enc, self.dec):
                e = enc(e, z)  # encoder layer l reads the decoder after layer l - 1
                z = dec(z, e)  # decoder layer l reads encoder layer l
        else:
            for enc in self.enc:
                e = enc(e, e)  # the same block, its second attention on itself
            for dec in self.dec:
                z = dec(z, e)  # every decoder layer reads the last encoder layer
        # show: end spiral
        return self.out(z)


def round_to_words(x: torch.Tensor, word_emb: torch.Tensor) -> torch.Tensor:
    """Ids of the nearest word embedding (Euclidean) to each vector of ``x`` (..., E)."""
    d2 = (x.unsqueeze(-2) - word_emb).pow(2).sum(-1)
    return d2.argmin(-1)


def diffusion_loss(model: SpiralEncDec, schedule: NoiseSchedule, source: torch.Tensor,
                   target: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffuSeq's objective: ``||f(x_t, t, src) - x_0||^2`` plus a rounding cross-entropy.

    ``x_0 = E[target]``; ``x_t = q_sample(x_0, t, eps)`` with ``t`` uniform in [0, T). The
    rounding term scores each word by ``-||x0_hat - E[w]||^2`` so the estimate lands nearest its
    own word.
    """
    check_tensor("source", source, dims=2, dtype=torch.int64)
    check_tensor("target", target, dims=2, dtype=torch.int64)
    if source.shape != target.shape:
        raise ValueError(f"source and target must have one shape, got {tuple(source.shape)} "
                         f"and {tuple(target.shape)}")
    # show: start loss
    x0 = model.word_emb[target]  # (B, L, E)
    B = x0.shape[0]
    t = torch.randint(schedule.n_steps, (B,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = schedule.q_sample(x0.flatten(1), t, eps.flatten(1)).view_as(x0)
    x0_hat = model(x_t, t, source)
    mse = (x0_hat - x0).pow(2).mean()
    logits = -(x0_hat.unsqueeze(-2) - model.word_emb).pow(2).sum(-1)  # (B, L, V)
    rounding = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    # show: end loss
    return mse + rounding


@torch.no_grad()
def sample(model: SpiralEncDec, schedule: NoiseSchedule, source: torch.Tensor, n_sample: int, *,
           clamp: bool = True, seed: int = 0) -> torch.Tensor:
    """Generate target ids for ``source`` (B, L) with ``n_sample`` deterministic DDIM steps.

    Each step predicts ``x0_hat``, snaps it to the nearest word embedding when ``clamp`` is set
    (Diffusion-LM's clamping trick), turns it into the noise ``ddim_step`` expects, and steps;
    the final estimate is rounded to words.
    """
    check_tensor("source", source, dims=2, dtype=torch.int64)
    n_sample = check_int("n_sample", n_sample, 1, schedule.n_steps)
    model.eval()
    g = torch.Generator().manual_seed(int(seed))
    B, L = source.shape
    x = torch.randn(B, L, model.cfg.emb_dim, generator=g)
    steps = ddim_timesteps(schedule.n_steps, n_sample).tolist()
    # show: start sampler
    for i, t in enumerate(steps):
        x0_hat = model(x, torch.full((B,), t, dtype=torch.int64), source)
        if clamp:
            x0_hat = model.word_emb[round_to_words(x0_hat, model.word_emb)]
        a_t = float(schedule.abar(t))
        eps = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1 - a_t)
        t_prev = steps[i + 1] if i + 1 < len(steps) else -1
        x = ddim_step(x.flatten(1), eps.flatten(1), t, t_prev, schedule).view_as(x)
    return round_to_words(x, model.word_emb)
    # show: end sampler


def token_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Share of positions (padding included) where ``pred`` equals ``target``."""
    check_tensor("pred", pred, dims=2, dtype=torch.int64)
    check_tensor("target", target, dims=2, dtype=torch.int64)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return float((pred == target).float().mean())


def exact_match(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Share of sentences whose every position matches."""
    token_accuracy(pred, target)  # validates
    return float((pred == target).all(1).float().mean())


def train_text_diffusion(cfg: TextDiffusionConfig, data: ParaphraseData, *, steps: int,
                         batch: int = 64, lr: float = 2e-3, seed: int = 0
                         ) -> tuple[SpiralEncDec, NoiseSchedule, list[float]]:
    """Train a :class:`SpiralEncDec` with AdamW on ``data``; returns model, schedule, losses."""
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    if data.source.shape[1] != cfg.length:
        raise ValueError(f"data length {data.source.shape[1]} differs from cfg.length {cfg.length}")
    schedule = NoiseSchedule(cfg.n_steps, cfg.schedule)
    model = SpiralEncDec(cfg, init_seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(int(seed) + 1)
    n = data.source.shape[0]
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=g)
        loss = diffusion_loss(model, schedule, data.source[idx], data.target[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, schedule, losses

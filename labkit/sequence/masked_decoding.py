"""Parallel masked decoding of speech codes, after MobileSpeech (Ji et al., 2024).

MobileSpeech's SMD (a bidirectional decoder in the manner of MaskGIT and SoundStorm) fills in
the codes of a residual-VQ codec in a few parallel steps instead of one step per frame. The
pieces, at miniature scale:

- a codec: log-mel frames quantised by a 2-level residual VQ whose codebooks are KMeans
  centroids (level 1 on the frames, level 2 on what level 1 leaves);
- the condition: the phones, one per frame (durations aligned to frames), and a speaker
  prompt, the codes of another utterance of the same voice, as prefix frames;
- :class:`CodeDecoder`: the book's tiny GPT read through ``inputs_embeds``, bidirectional
  (``GPTConfig(causal=False)``) for masked decoding or causal for the autoregressive baseline
  of the same size;
- training on random mask ratios (:func:`masked_loss`): a level is drawn, the levels below it
  are given, the ones above it hidden, and a cosine-distributed share of its codes masked;
- :func:`masked_decode`: ``N`` steps per level on the cosine schedule; each step predicts
  every masked code, keeps the most confident and re-masks the rest; level 1 before level 2,
  so ``2N`` forward passes in all, against one per frame for :func:`ar_decode`.

Shapes: B batch, P prompt frames, F target frames, M mel bins, K codes per level.
Section: chapter 17, "Parallel masked decoding: MobileSpeech".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from labkit.lm.gpt import GPT, GPTConfig
from labkit.runtime import clock_reader
from labkit.sequence.features import log_mel
from labkit.sequence.voices import HOP, PHONES, Speaker, random_phones, utterance
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["CodeDecoder", "ResidualVQ", "TTSData", "ar_decode", "ar_teacher_forced", "fit_residual_vq",
           "make_tts_data", "mask_schedule", "masked_decode", "masked_loss", "phone_lookup",
           "random_mask", "timer_noise", "token_accuracy", "train_decoder"]

N_FFT = 256
LEVELS = 2
AR_NOISE = 0.3  # share of previous-frame input codes swapped for random ones (AR training)


@dataclass(frozen=True)
class ResidualVQ:
    """A residual vector quantiser: ``codebooks[l]`` is ``[K, M]``; a frame is the sum of one
    centroid per level."""

    codebooks: tuple[torch.Tensor, ...]

    @property
    def k(self) -> int:
        """Codes per level."""
        return int(self.codebooks[0].shape[0])

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., levels]`` of frames ``mel [..., M]``: nearest centroid, level by level."""
        check_tensor("mel", mel, dtype="float")
        if mel.shape[-1] != self.codebooks[0].shape[1]:
            raise ValueError(f"mel has {mel.shape[-1]} bins, the codebooks "
                             f"{self.codebooks[0].shape[1]}")
        residual = mel.reshape(-1, mel.shape[-1])
        codes = []
        for book in self.codebooks:
            idx = torch.cdist(residual, book).argmin(-1)
            codes.append(idx)
            residual = residual - book[idx]
        return torch.stack(codes, -1).reshape(*mel.shape[:-1], len(self.codebooks))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Frames ``[..., M]`` of ``codes [..., levels]``: the sum of their centroids."""
        check_tensor("codes", codes, dtype="integer")
        return sum(book[codes[..., i]] for i, book in enumerate(self.codebooks))


def fit_residual_vq(frames: torch.Tensor, k: int, *, levels: int = LEVELS,
                    seed: int = 0) -> ResidualVQ:
    """KMeans codebooks (scikit-learn) of ``k`` centroids per level on ``frames [N, M]``."""
    from sklearn.cluster import KMeans

    check_tensor("frames", frames, dtype="float", dims=2)
    k = check_int("k", k, 2)
    levels = check_int("levels", levels, 1)
    if frames.shape[0] < k:
        raise ValueError(f"need at least k={k} frames, got {frames.shape[0]}")
    residual = frames.double().numpy()
    books = []
    for level in range(levels):
        km = KMeans(k, n_init=1, random_state=seed + level).fit(residual)
        centres = km.cluster_centers_
        books.append(torch.tensor(centres, dtype=frames.dtype))
        residual = residual - centres[km.labels_]
    return ResidualVQ(tuple(books))


@dataclass(frozen=True)
class TTSData:
    """Utterances cut to ``P + F`` frames: the speaker prompt first, then the target.

    ``mel [B, P + F, M]`` (floored log-mel), ``phones [B, P + F]`` (phone id per frame),
    ``speaker [B]`` (index into the voice list) and ``prompt`` (P).
    """

    mel: torch.Tensor
    phones: torch.Tensor
    speaker: torch.Tensor
    prompt: int


def _frames(voice: Speaker, n: int, seed: int, sr: int, floor: float) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    seconds = ((n - 1) * HOP + N_FFT) / sr
    u = utterance(voice, random_phones(int(seconds / 0.06) + 2, seed), seed, sr,
                  seconds=seconds)
    mel = log_mel(torch.tensor(u.wave, dtype=torch.float32), sr, n_fft=N_FFT, hop=HOP)
    # the phone under the window's centre (N_FFT / 2 samples in, about one hop)
    phones = torch.as_tensor(u.alignment[1:n + 1], dtype=torch.long)
    return mel[:n].clamp(min=floor), phones


def make_tts_data(voices: list[Speaker], n: int, seed: int, *, frames: int = 128,
                  prompt: int = 32, sr: int = 8000, floor: float = -8.0) -> TTSData:
    """``n`` seeded items: a voice drawn from ``voices``, a ``prompt``-frame excerpt of one of
    its utterances, then ``frames`` frames of another utterance with their phones."""
    if not voices or not all(isinstance(v, Speaker) for v in voices):
        raise TypeError("voices must be a non-empty list of Speaker")
    n = check_int("n", n, 1)
    frames = check_int("frames", frames, 1)
    prompt = check_int("prompt", prompt, 0)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    mels, phones, who = [], [], []
    for _ in range(n):
        v = int(rng.integers(len(voices)))
        s1, s2 = (int(x) for x in rng.integers(2**31, size=2))
        parts = [_frames(voices[v], frames, s2, sr, floor)]
        if prompt:
            parts.insert(0, _frames(voices[v], prompt, s1, sr, floor))
        mels.append(torch.cat([p[0] for p in parts]))
        phones.append(torch.cat([p[1] for p in parts]))
        who.append(v)
    return TTSData(torch.stack(mels), torch.stack(phones), torch.tensor(who), prompt)


class CodeDecoder(nn.Module):
    """The tiny GPT over frames: each position embeds its phone and its codes of both levels
    (a code, or that level's mask token) and predicts both levels' codes.

    The vocabulary holds ``K`` level-1 codes, ``K`` level-2 codes and one mask token per
    level; the head is tied to it, and a level's logits are its ``K`` columns. With
    ``causal=False`` it is the masked decoder; with ``causal=True`` the autoregressive
    baseline, whose position ``t`` embeds the codes of frame ``t - 1`` (mask tokens at 0).
    """

    def __init__(self, k: int, *, causal: bool, block_size: int, n_layer: int = 2,
                 n_head: int = 4, d_model: int = 64, d_ff: int = 128,
                 init_seed: int = 0) -> None:
        super().__init__()
        self.k = check_int("k", k, 2)
        self.cfg = GPTConfig(vocab_size=LEVELS * k + LEVELS, block_size=block_size,
                             n_layer=n_layer, n_head=n_head, d_model=d_model, d_ff=d_ff,
                             causal=causal)
        self.gpt = GPT(self.cfg, init_seed=init_seed)
        self.phone = nn.Embedding(len(PHONES), d_model)
        nn.init.normal_(self.phone.weight, std=0.02)
        self.passes = 0  # forward passes, counted for the page

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    def mask_id(self, level: int) -> int:
        """The mask token of ``level`` (0 or 1) in code space (before the level offset)."""
        return self.k + level  # after offset: LEVELS * k + level

    def forward(self, codes: torch.Tensor, phones: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, levels, K]`` from ``codes [B, T, levels]`` (``-1`` = masked) and
        ``phones [B, T]``."""
        self.passes += 1
        ids = torch.empty_like(codes)
        for lv in range(LEVELS):
            c = codes[..., lv]
            ids[..., lv] = torch.where(c < 0, LEVELS * self.k + lv, c + lv * self.k)
        x = self.gpt.tok(ids).sum(-2) + self.phone(phones)
        logits = self.gpt(None, inputs_embeds=x).logits
        return torch.stack([logits[..., lv * self.k:(lv + 1) * self.k]
                            for lv in range(LEVELS)], -2)


def _shift(codes: torch.Tensor) -> torch.Tensor:
    """The autoregressive input: frame ``t`` carries the codes of frame ``t - 1``."""
    first = torch.full_like(codes[:, :1], -1)
    return torch.cat([first, codes[:, :-1]], 1)


def random_mask(n: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean mask over ``n`` frames with ``ceil(ratio * n)`` seeded positions set;
    ``ratio`` must lie in (0, 1]."""
    n = check_int("n", n, 1)
    ratio = check_real("ratio", ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1], got {ratio}")
    m = max(1, math.ceil(ratio * n))
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.randperm(n, generator=generator)[:m]] = True
    return out


def mask_schedule(step: int, steps: int, n: int) -> int:
    """Codes still masked after ``step`` of ``steps``: ``floor(n cos(pi/2 step/steps))``."""
    return int(math.floor(n * math.cos(math.pi / 2 * step / steps) + 1e-9))


# show: start train
def masked_loss(model: CodeDecoder, codes: torch.Tensor, phones: torch.Tensor, prompt: int,
                generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy on masked codes: per item a level, a cosine-distributed mask ratio."""
    B, T, _ = codes.shape
    n = T - prompt
    inp = codes.clone()
    target = torch.full_like(codes, -100)  # -100: not scored
    for b in range(B):
        lv = int(torch.randint(LEVELS, (1,), generator=generator))
        u = float(torch.rand((), generator=generator))
        ratio = max(math.cos(math.pi / 2 * u), 1.0 / n)  # in (0, 1]
        hide = random_mask(n, ratio, generator)
        tgt = inp[b, prompt:, lv]
        target[b, prompt:, lv] = torch.where(hide, tgt, -100)
        inp[b, prompt:, lv] = torch.where(hide, -1, tgt)
        inp[b, prompt:, lv + 1:] = -1  # finer levels are unknown
    logits = model(inp, phones)
    return nn.functional.cross_entropy(logits.reshape(-1, model.k), target.reshape(-1),
                                       ignore_index=-100)
# show: end train


def ar_loss(model: CodeDecoder, codes: torch.Tensor, phones: torch.Tensor, prompt: int,
            generator: torch.Generator, noise: float = AR_NOISE) -> torch.Tensor:
    """Teacher-forced next-frame cross-entropy on the target frames, both levels.

    Each previous-frame code given as input is replaced by a random code with probability
    ``noise`` (a cheap stand-in for scheduled sampling), so the model does not learn to
    trust the last frame blindly.
    """
    inp = _shift(codes)
    swap = torch.rand(inp.shape, generator=generator) < noise
    rand = torch.randint(model.k, inp.shape, generator=generator)
    inp = torch.where(swap & (inp >= 0), rand, inp)
    logits = model(inp, phones)[:, prompt:]
    return nn.functional.cross_entropy(logits.reshape(-1, model.k),
                                       codes[:, prompt:].reshape(-1))


def train_decoder(model: CodeDecoder, codes: torch.Tensor, phones: torch.Tensor, prompt: int,
                  *, steps: int, batch: int = 16, lr: float = 3e-3,
                  seed: int = 0) -> list[float]:
    """Adam on :func:`masked_loss` (bidirectional model) or the next-frame loss (causal);
    returns the loss per step."""
    check_tensor("codes", codes, dtype="integer", dims=3)
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    g = torch.Generator().manual_seed(check_int("seed", seed, 0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(codes), (batch,), generator=g)
        if model.causal:
            loss = ar_loss(model, codes[idx], phones[idx], prompt, g)
        else:
            loss = masked_loss(model, codes[idx], phones[idx], prompt, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _check_condition(model: CodeDecoder, prompt_codes: torch.Tensor,
                     phones: torch.Tensor) -> tuple[int, int]:
    if not isinstance(model, CodeDecoder):
        raise TypeError(f"model must be a CodeDecoder, got {type(model).__name__}")
    check_tensor("prompt_codes", prompt_codes, dtype="integer", dims=3)
    check_tensor("phones", phones, dtype="integer", dims=2)
    P = prompt_codes.shape[1]
    F = phones.shape[1] - P
    if F < 1:
        raise ValueError(f"phones must cover the prompt ({P} frames) and at least one more")
    return P, F


# show: start decode
@torch.no_grad()
def masked_decode(model: CodeDecoder, prompt_codes: torch.Tensor, phones: torch.Tensor,
                  steps: int) -> torch.Tensor:
    """Codes ``[B, F, levels]`` of the target frames in ``steps`` passes per level."""
    P, F = _check_condition(model, prompt_codes, phones)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps (N) must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= F:
        raise ValueError(f"steps (N) must lie in [1, frames={F}], got {steps}")
    B = phones.shape[0]
    codes = torch.cat([prompt_codes, prompt_codes.new_full((B, F, LEVELS), -1)], 1)
    for lv in range(LEVELS):  # level 1, then level 2 given level 1
        for s in range(1, steps + 1):
            probs = model(codes, phones)[:, P:, lv].softmax(-1)
            conf, pred = probs.max(-1)  # [B, F]
            known = codes[:, P:, lv] >= 0
            conf = torch.where(known, math.inf, conf)  # decided codes stay
            pred = torch.where(known, codes[:, P:, lv], pred)
            n_masked = mask_schedule(s, steps, F)
            low = conf.argsort(-1)[:, :n_masked]  # the least confident: masked again
            pred.scatter_(1, low, -1)
            codes[:, P:, lv] = pred
    return codes[:, P:]
# show: end decode


@torch.no_grad()
def ar_decode(model: CodeDecoder, prompt_codes: torch.Tensor,
              phones: torch.Tensor) -> torch.Tensor:
    """Greedy autoregressive codes ``[B, F, levels]``: one forward pass per target frame."""
    P, F = _check_condition(model, prompt_codes, phones)
    codes = prompt_codes.clone()
    for t in range(P, P + F):
        logits = model(_shift(torch.cat([codes, codes[:, :1]], 1)), phones[:, :t + 1])
        codes = torch.cat([codes, logits[:, -1:].argmax(-1)], 1)
    return codes[:, P:]


@torch.no_grad()
def ar_teacher_forced(model: CodeDecoder, codes: torch.Tensor,
                      phones: torch.Tensor, prompt: int) -> torch.Tensor:
    """The causal model's next-frame codes ``[B, F, levels]`` given the true previous frames
    (what it was trained on; no error can compound)."""
    if not isinstance(model, CodeDecoder) or not model.causal:
        raise TypeError("model must be a causal CodeDecoder")
    check_tensor("codes", codes, dtype="integer", dims=3)
    return model(_shift(codes), phones)[:, prompt:].argmax(-1)


def phone_lookup(codes: torch.Tensor, phones: torch.Tensor) -> torch.Tensor:
    """Most frequent code per phone and level in ``codes [B, T, levels]``: ``[phones, levels]``
    (a phone never seen gets code 0)."""
    check_tensor("codes", codes, dtype="integer", dims=3)
    check_tensor("phones", phones, dtype="integer", dims=2)
    table = torch.zeros(len(PHONES), codes.shape[-1], dtype=torch.long)
    for p in range(len(PHONES)):
        sel = codes[phones == p]
        if len(sel):
            table[p] = sel.mode(0).values
    return table


def timer_noise(clock: str = "cpu", samples: int = 101) -> float:
    """The 90th percentile of ``samples`` timings of an empty interval (seconds) on ``clock``
    (``"cpu"``: ``time.thread_time``, ``"wall"``: ``time.perf_counter``): the timer's jitter."""
    now = clock_reader(clock)
    samples = check_int("samples", samples, 1)
    times = []
    for _ in range(samples):
        t0 = now()
        times.append(now() - t0)
    return sorted(times)[int(0.9 * (samples - 1))]


def token_accuracy(pred: torch.Tensor, codes: torch.Tensor) -> float:
    """Share of codes (all frames, all levels) where ``pred`` equals ``codes``."""
    check_tensor("pred", pred, dtype="integer")
    check_tensor("codes", codes, dtype="integer")
    if pred.shape != codes.shape:
        raise ValueError(f"pred and codes shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(codes.shape)}")
    return float((pred == codes).float().mean())

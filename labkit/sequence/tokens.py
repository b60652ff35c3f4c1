"""Speech tokens: normalised log-mel vectors, KMeans units, run-length dedup and byte-pair merges.

After *Vec-Tok Speech: speech vectorization and tokenization for neural speech generation*
(``vec_tok_speech``, arXiv:2310.07246). Speech becomes *vectors* (here log-mel frames,
normalised per utterance so that a speaker's average timbre and level are removed) and *semantic
tokens* (the index of the nearest of K KMeans centroids). Repeated tokens are collapsed (run-length dedup) and byte-pair
encoding (BPE) merges the most frequent adjacent pair of units into a new unit, again and again,
so a language model reads a shorter stream in which each token spans more speech. The model's
quality is measured in bits per second of speech: the total cross-entropy of a held-out stream, in
bits, divided by its duration, which compares streams of different lengths on the same footing.
The miniature leaves out the paper's self-supervised (WavLM) features, its continuous speech
vectors with their vocoder, the text and prompt conditioning of its language model, and its
zero-shot tasks.

Section: chapter 17, "Speech tokens and BPE: Vec-Tok Speech"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from labkit.lm.gpt import GPT, GPTConfig
from labkit.sequence.features import log_mel
from labkit.sequence.voices import HOP, PHONES, make_speakers, utterance
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["BPE", "KMeansTokens", "SpeechCorpus", "dedup", "fit_kmeans", "lm_bits",
           "make_lexicon", "speech_corpus", "speech_vectors", "train_bpe", "train_token_lm", "unigram_bits",
           "window_batches"]


def speech_vectors(wave: torch.Tensor | np.ndarray, sr: int, *, n_mels: int = 40) -> torch.Tensor:
    """Log-mel frames ``[frames, n_mels]`` of one utterance, normalised to zero mean and unit
    variance per mel band over the utterance (256-sample window, 80-sample hop)."""
    if isinstance(wave, np.ndarray):
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    check_tensor("wave", wave, dims=1, dtype="float")
    mel = log_mel(wave.float(), sr, n_mels=n_mels, hop=HOP)
    return (mel - mel.mean(0)) / (mel.std(0) + 1e-5)


@dataclass
class SpeechCorpus:
    """Utterances as normalised log-mel frames with a phone and a speaker label per frame.

    Attributes:
        frames: one ``[frames_i, n_mels]`` tensor per utterance.
        phones: one phone-id array per utterance (the phone at each frame's centre).
        speakers: the speaker index of each utterance.
        seconds: the duration of each utterance in seconds.
    """

    frames: list[torch.Tensor]
    phones: list[np.ndarray]
    speakers: np.ndarray
    seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def make_lexicon(n_words: int, seed: int, *, min_phones: int = 2,
                 max_phones: int = 4) -> list[tuple[str, ...]]:
    """``n_words`` seeded words, each ``min_phones``..``max_phones`` vowel-like phones."""
    n_words = check_int("n_words", n_words, 1)
    lo = check_int("min_phones", min_phones, 1)
    hi = check_int("max_phones", max_phones, lo)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    vowels = [p for p in PHONES if p != "sil"]
    return [tuple(vowels[int(i)] for i in rng.integers(len(vowels), size=int(rng.integers(lo, hi + 1))))
            for _ in range(n_words)]


def speech_corpus(n: int, seed: int, *, lexicon: Sequence[Sequence[str]], n_words: int = 4,
                  pause: float = 0.3, n_speakers: int = 8, speaker_seed: int = 0,
                  sr: int = 8000) -> SpeechCorpus:
    """``n`` seeded utterances of ``n_words`` words drawn from ``lexicon``, each word followed by
    a pause with probability ``pause``, spoken by one of ``n_speakers`` synthetic speakers (the
    same pool for every ``seed``, made from ``speaker_seed``)."""
    n = check_int("n", n, 1)
    n_words = check_int("n_words", n_words, 1)
    pause = check_real("pause", pause, 0.0)
    if not lexicon or any(not w for w in lexicon):
        raise ValueError("lexicon must be a non-empty list of non-empty phone sequences")
    speakers = make_speakers(check_int("n_speakers", n_speakers, 1), speaker_seed)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    frames, phones, who, secs = [], [], [], []
    for _ in range(n):
        seq: list[str] = []
        for w in rng.integers(len(lexicon), size=n_words):
            seq += list(lexicon[int(w)])
            if rng.random() < pause:
                seq.append("sil")
        k = int(rng.integers(len(speakers)))
        u = utterance(speakers[k], seq, int(rng.integers(2**31)), sr)
        x = speech_vectors(u.wave, sr)
        # frame i spans samples [HOP i, HOP i + 256): its centre lies in alignment frame i + 1
        centre = np.minimum(np.arange(len(x)) + 128 // HOP, len(u.alignment) - 1)
        frames.append(x)
        phones.append(u.alignment[centre])
        who.append(k)
        secs.append(len(u.wave) / sr)
    return SpeechCorpus(frames, phones, np.asarray(who), np.asarray(secs))


@dataclass
class KMeansTokens:
    """A KMeans codebook: a frame's token is the index of its nearest centroid."""

    centroids: torch.Tensor  # [K, n_mels]

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Token ids ``[frames]`` (int64) of ``frames [frames, n_mels]``."""
        check_tensor("frames", frames, dims=2, dtype="float")
        if frames.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"frames have {frames.shape[1]} features, the centroids "
                             f"{self.centroids.shape[1]}")
        return torch.cdist(frames.float(), self.centroids).argmin(1)


def fit_kmeans(frames: torch.Tensor, k: int = 64, *, seed: int = 0) -> KMeansTokens:
    """Fit K centroids to ``frames [N, n_mels]`` with scikit-learn's KMeans (k-means++)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ValueError(f"k (the number of tokens) must be an int >= 2, got {k!r}")
    check_tensor("frames", frames, dims=2, dtype="float")
    if frames.shape[0] < k:
        raise ValueError(f"need at least k={k} frames, got {frames.shape[0]}")
    with threadpool_limits(1):  # small problem: one thread, and no spinning under load
        km = KMeans(k, n_init=1, random_state=check_int("seed", seed, 0)).fit(frames.numpy())
    return KMeansTokens(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))


def dedup(tokens: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length dedup: ``(units, run_lengths)``; ``[3, 3, 5, 3]`` gives ``[3, 5, 3], [2, 1, 1]``."""
    t = np.asarray(tokens).reshape(-1)
    if t.size == 0:
        return t.astype(np.int64), np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, t[1:] != t[:-1]])
    return t[start].astype(np.int64), np.diff(np.r_[start, t.size]).astype(np.int64)


def _merge(seq: np.ndarray, a: int, b: int, new: int) -> np.ndarray:
    """Replace each non-overlapping ``a b`` (left to right) in ``seq`` by ``new``."""
    # show: start merge
    hit = np.flatnonzero((seq[:-1] == a) & (seq[1:] == b))
    if a == b and hit.size > 1:  # in "a a a" only the first pair merges
        keep, last = [], -2
        for i in hit.tolist():
            if i > last + 1:
                keep.append(i)
                last = i
        hit = np.asarray(keep)
    out = seq.copy()
    out[hit] = new
    drop = np.zeros(seq.size, dtype=bool)
    drop[hit + 1] = True
    return out[~drop]
    # show: end merge


def _pair_counts(seqs: Sequence[np.ndarray], vocab: int) -> np.ndarray:
    """Counts of adjacent pairs inside each sequence, as codes ``a * vocab + b``."""
    codes = np.concatenate([s[:-1] * vocab + s[1:] for s in seqs if s.size > 1] or
                           [np.zeros(0, dtype=np.int64)])
    return np.bincount(codes, minlength=vocab * vocab)


def train_bpe(seqs: Sequence[np.ndarray], base: int, merges: int) -> BPE:
    """Learn up to ``merges`` merges over ``seqs`` (units ``< base``); pairs never cross
    sequences. Each merge joins the most frequent pair (ties: the smallest code) into a new
    unit ``base + i``; learning stops early when no pair occurs twice."""
    base = check_int("base", base, 1)
    if not isinstance(merges, int) or isinstance(merges, bool) or merges < 0:
        raise ValueError(f"merges must be an int >= 0, got {merges!r}")
    cur = [np.asarray(s, dtype=np.int64) for s in seqs]
    if any(s.size and (s.min() < 0 or s.max() >= base) for s in cur):
        raise ValueError(f"seqs must hold unit ids in [0, base={base})")
    learned: list[tuple[int, int]] = []
    # show: start bpe
    for i in range(merges):
        vocab = base + i
        counts = _pair_counts(cur, vocab)
        best = int(counts.argmax())
        if counts[best] < 2:
            break
        a, b = divmod(best, vocab)
        cur = [_merge(s, a, b, vocab) for s in cur]
        learned.append((a, b))
    # show: end bpe
    return BPE(base, learned)


@dataclass
class BPE:
    """Byte-pair merges over a base vocabulary; merge ``i`` makes unit ``base + i``."""

    base: int
    merges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return self.base + len(self.merges)

    def truncated(self, merges: int) -> BPE:
        """The tokenizer of the first ``merges`` merges (learning is greedy, so it is the one
        :func:`train_bpe` would have learned with that budget)."""
        if not isinstance(merges, int) or isinstance(merges, bool) or merges < 0:
            raise ValueError(f"merges must be an int >= 0, got {merges!r}")
        return BPE(self.base, self.merges[:merges])

    def encode(self, seq: np.ndarray | Sequence[int]) -> np.ndarray:
        """Apply every merge, in the order learned, to one sequence of base units."""
        out = np.asarray(seq, dtype=np.int64)
        if out.size and (out.min() < 0 or out.max() >= self.base):
            raise ValueError(f"seq must hold unit ids in [0, base={self.base})")
        for i, (a, b) in enumerate(self.merges):
            out = _merge(out, a, b, self.base + i)
        return out

    def decode(self, seq: np.ndarray | Sequence[int]) -> np.ndarray:
        """Expand merged units back into base units (the inverse of :meth:`encode`)."""
        out = np.asarray(seq, dtype=np.int64)
        for i in range(len(self.merges) - 1, -1, -1):
            hit = out == self.base + i
            if hit.any():
                a, b = self.merges[i]
                rep = np.where(hit, 2, 1)
                out = np.repeat(out, rep)
                first = np.flatnonzero(np.repeat(hit, rep))[::2]
                out[first], out[first + 1] = a, b
        return out


def window_batches(stream: torch.Tensor, block: int, batch: int,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``block + 1`` tokens: inputs and next-token targets."""
    start = torch.randint(0, stream.numel() - block - 1, (batch,), generator=gen)
    win = torch.stack([stream[s:s + block + 1] for s in start.tolist()])
    return win[:, :-1], win[:, 1:]


def train_token_lm(stream: torch.Tensor, vocab_size: int, *, steps: int, block: int = 64,
                   batch: int = 16, n_layer: int = 2, d_model: int = 64, lr: float = 3e-3,
                   seed: int = 0) -> tuple[GPT, list[float]]:
    """Train a small :class:`~labkit.lm.gpt.GPT` on random windows of a token ``stream``.

    Returns the model (eval mode) and its training loss (nats per token) at every step.
    """
    check_tensor("stream", stream, dims=1, dtype=torch.int64)
    block = check_int("block", block, 1)
    if stream.numel() < block + 2:
        raise ValueError(f"stream has {stream.numel()} tokens, fewer than block + 2 = {block + 2}")
    vocab_size = check_int("vocab_size", vocab_size, 1)
    if int(stream.min()) < 0 or int(stream.max()) >= vocab_size:
        raise ValueError(f"stream must hold ids in [0, vocab_size={vocab_size}), got "
                         f"[{int(stream.min())}, {int(stream.max())}]")
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block, n_layer=n_layer, n_head=4,
                    d_model=d_model, d_ff=4 * d_model)
    model = GPT(cfg, init_seed=check_int("seed", seed, 0))
    opt = torch.optim.AdamW(model.parameters(), lr=check_real("lr", lr, 0.0, strict=True),
                            betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    steps = check_int("steps", steps, 1)
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay to a tenth
            g["lr"] = lr * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        x, y = window_batches(stream, block, check_int("batch", batch, 1), gen)
        loss = model(x, y).lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def lm_bits(model: GPT, stream: torch.Tensor) -> float:
    """Total cross-entropy in bits of every token of ``stream`` after its first.

    Windows of ``block + 1`` tokens overlap by one, so each token is predicted exactly once,
    from the tokens before it in its window. Divided by the stream's duration this is the
    model's bits per second of speech, comparable across tokenizations of the same audio.
    """
    check_tensor("stream", stream, dims=1, dtype=torch.int64)
    # show: start bits
    block = model.cfg.block_size
    total = 0.0
    for s in range(0, stream.numel() - 1, block):
        win = stream[s:s + block + 1][None]
        logits = model(win[:, :-1]).logits
        nats = F.cross_entropy(logits[0], win[0, 1:], reduction="sum")
        total += float(nats) / math.log(2.0)
    # show: end bits
    return total


def unigram_bits(train: torch.Tensor | np.ndarray, test: torch.Tensor | np.ndarray,
                 vocab_size: int, *, alpha: float = 0.5) -> float:
    """Total bits of every token of ``test`` after its first under token frequencies counted on
    ``train`` (add-``alpha`` smoothing): the context-free baseline a language model must beat."""
    vocab_size = check_int("vocab_size", vocab_size, 1)
    tr, te = np.asarray(train).reshape(-1), np.asarray(test).reshape(-1)
    if max(int(tr.max(initial=0)), int(te.max(initial=0))) >= vocab_size:
        raise ValueError(f"train and test must hold ids below vocab_size={vocab_size}")
    counts = np.bincount(tr, minlength=vocab_size) + check_real("alpha", alpha, 0.0, strict=True)
    return float(-np.log2(counts[te[1:]] / counts.sum()).sum())

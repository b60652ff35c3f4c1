"""Seeded synthetic voices at 8 kHz: speakers, phone sequences, reverberation and mixing.

A source-filter toy: a speaker is an f0 range, a formant scale and a pitch jitter; an utterance
is a sequence of vowel-like phones (formant targets F1-F3, a duration, a pitch contour) and
pauses, rendered as a glottal pulse train through three cascaded second-order resonators with
``scipy.signal.lfilter``. Reverberation convolves with an exponentially decaying noise impulse
response; :func:`mix` adds sources and optional white noise. Used by every section of the
chapter as its stand-in for recorded speech.

Section: chapter 17, "Speech separation with a recurrent memory: MossFormer2", "Speech tokens and BPE", "Parallel masked decoding" and "Predict, then regenerate: StoRM".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

from labkit.validation import check_int, check_real

# Formant targets (F1, F2, F3) in Hz of an average adult voice; "sil" is a pause.
PHONES: dict[str, tuple[float, float, float] | None] = {
    "sil": None,
    "i": (280.0, 2250.0, 2900.0),
    "e": (400.0, 2000.0, 2600.0),
    "a": (730.0, 1100.0, 2450.0),
    "o": (500.0, 850.0, 2400.0),
    "u": (320.0, 800.0, 2250.0),
    "y": (300.0, 1700.0, 2100.0),
    "ae": (660.0, 1700.0, 2400.0),
    "er": (490.0, 1350.0, 1700.0),
}
PHONE_IDS: dict[str, int] = {p: i for i, p in enumerate(PHONES)}
BANDWIDTHS = (80.0, 100.0, 140.0)  # resonator bandwidths in Hz
HOP = 80  # alignment frame hop in samples (10 ms at 8 kHz)


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: f0 range (Hz), formant scale (vocal tract), jitter (relative)."""

    f0_low: float
    f0_high: float
    formant_scale: float
    jitter: float


@dataclass(frozen=True)
class Utterance:
    """A waveform (float64, peak about 1) with its frame-level phone alignment."""

    wave: np.ndarray
    alignment: np.ndarray  # phone id per HOP-sample frame
    sr: int


def make_speakers(n: int, seed: int) -> list[Speaker]:
    """``n`` seeded speakers spread over low (male-like) to high (child-like) voices."""
    n = check_int("n", n, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    out = []
    for _ in range(n):
        low = float(rng.uniform(85.0, 230.0))
        out.append(Speaker(f0_low=low, f0_high=low * float(rng.uniform(1.2, 1.6)),
                           formant_scale=float(rng.uniform(0.85, 1.2)),
                           jitter=float(rng.uniform(0.005, 0.03))))
    return out


def random_phones(n: int, seed: int, *, pause: float = 0.15) -> list[str]:
    """``n`` seeded phones, each a pause with probability ``pause`` (never two in a row)."""
    n = check_int("n", n, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    vowels = [p for p in PHONES if p != "sil"]
    out: list[str] = []
    for _ in range(n):
        if out and out[-1] != "sil" and rng.random() < pause:
            out.append("sil")
        else:
            out.append(vowels[int(rng.integers(len(vowels)))])
    return out


def _resonator(freq: float, bw: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.exp(-np.pi * bw / sr)
    a = np.array([1.0, -2.0 * r * np.cos(2.0 * np.pi * freq / sr), r * r])
    return np.array([a.sum()]), a  # unit gain at DC


def utterance(speaker: Speaker, phones: Sequence[str], seed: int, sr: int = 8000,
              *, seconds: float | None = None) -> Utterance:
    """Render ``phones`` in ``speaker``'s voice; optionally cut or pad to ``seconds``.

    Each phone lasts 60-160 ms (seeded); the pitch glides linearly between two seeded values in
    the speaker's range over the utterance, with per-period jitter. Formant filters change at
    phone boundaries with their state carried over, so the signal stays continuous.
    """
    if not isinstance(speaker, Speaker):
        raise TypeError(f"speaker must be a Speaker, got {type(speaker).__name__}")
    sr = check_int("sr", sr, 1000)
    if not phones:
        raise ValueError("phones must not be empty")
    unknown = [p for p in phones if p not in PHONES]
    if unknown:
        raise ValueError(f"phones has unknown phones {unknown}; known: {list(PHONES)}")
    rng = np.random.default_rng(check_int("seed", seed, 0))
    lens = [int(rng.uniform(0.06, 0.16) * sr) for _ in phones]
    total = sum(lens)
    f0 = np.linspace(*rng.uniform(speaker.f0_low, speaker.f0_high, 2), total)
    # glottal pulses: one per period of the (jittered) instantaneous f0
    phase = np.cumsum(f0 * (1.0 + speaker.jitter * rng.standard_normal(total)) / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)
    source = lfilter([1.0], [1.0, -0.95], pulses)  # glottal spectral tilt
    wave = np.zeros(total)
    states = [np.zeros(2) for _ in BANDWIDTHS]
    start = 0
    align = []
    for phone, n in zip(phones, lens, strict=True):
        seg = source[start:start + n].copy()
        targets = PHONES[phone]
        if targets is None:
            seg *= 0.0
            targets = PHONES["er"]
        for k, (f, bw) in enumerate(zip(targets, BANDWIDTHS, strict=True)):
            b, a = _resonator(f * speaker.formant_scale, bw, sr)
            seg, states[k] = lfilter(b, a, seg, zi=states[k])
        wave[start:start + n] = seg
        align += [PHONE_IDS[phone]] * n
        start += n
    wave = np.diff(wave, prepend=0.0)  # lip radiation
    alignment = np.asarray(align)
    if seconds is not None:
        want = int(check_real("seconds", seconds, 0.0, strict=True) * sr)
        wave = np.pad(wave, (0, max(0, want - total)))[:want]
        alignment = np.pad(alignment, (0, max(0, want - total)),
                           constant_values=PHONE_IDS["sil"])[:want]
    wave = wave / max(float(np.abs(wave).max()), 1e-9)
    return Utterance(wave=wave, alignment=alignment[::HOP].copy(), sr=sr)


def reverberate(wave: np.ndarray, sr: int, rt60: float, seed: int) -> np.ndarray:
    """Convolve with a seeded noise impulse response decaying by 60 dB in ``rt60`` seconds.

    The direct path is a unit tap at lag 0; the output keeps the input's length.
    """
    sr = check_int("sr", sr, 1000)
    rt60 = check_real("rt60", rt60, 0.0, strict=True)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    t = np.arange(int(rt60 * sr)) / sr
    ir = rng.standard_normal(len(t)) * 10.0 ** (-3.0 * t / rt60) * 0.1
    ir[0] = 1.0
    wave = np.asarray(wave, dtype=np.float64)
    return fftconvolve(wave, ir)[: len(wave)]


def mix(sources: Sequence[Utterance], sr: int, *, snr_db: float | None = None,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sum equal-length sources at equal power; add white noise at ``snr_db`` if given.

    Returns ``(mixture [T], sources [S, T])`` with each source scaled to unit RMS.
    """
    sr = check_int("sr", sr, 1000)
    if len(sources) < 1:
        raise ValueError("sources must not be empty")
    for k, s in enumerate(sources):
        if s.sr != sr:
            raise ValueError(f"sample-rate mismatch: sources[{k}] has sr={s.sr}, "
                             f"the mixture sr={sr}")
    lengths = {len(s.wave) for s in sources}
    if len(lengths) != 1:
        raise ValueError(f"sources must have equal lengths, got {sorted(lengths)}")
    srcs = np.stack([s.wave / max(np.sqrt(np.mean(s.wave ** 2)), 1e-9) for s in sources])
    mixture = srcs.sum(0)
    if snr_db is not None:
        rng = np.random.default_rng(check_int("seed", seed, 0))
        power = np.mean(mixture ** 2) / 10.0 ** (check_real("snr_db", snr_db) / 10.0)
        mixture = mixture + np.sqrt(power) * rng.standard_normal(len(mixture))
    return mixture, srcs


def two_voice_mixtures(n: int, seed: int, *, seconds: float = 0.5, sr: int = 8000,
                       n_speakers: int = 20, rt60: float | None = None,
                       snr_db: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded mixtures of two different speakers: ``(mixtures [n, T], sources [n, 2, T])``.

    Speakers are drawn from a pool of ``n_speakers`` made from ``seed``; sources are optionally
    reverberated (the reverberant source is the target).
    """
    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    speakers = make_speakers(n_speakers, seed)
    rng = np.random.default_rng(seed + 1)
    mixes, srcs = [], []
    n_phones = int(np.ceil(seconds / 0.06)) + 1
    for _ in range(n):
        pair = rng.choice(len(speakers), 2, replace=False)
        utts = []
        for k in pair:
            s = int(rng.integers(2**31))
            u = utterance(speakers[int(k)], random_phones(n_phones, s), s, sr, seconds=seconds)
            if rt60 is not None:
                u = Utterance(reverberate(u.wave, sr, rt60, s), u.alignment, sr)
            utts.append(u)
        m, s2 = mix(utts, sr, snr_db=snr_db, seed=int(rng.integers(2**31)))
        mixes.append(m)
        srcs.append(s2)
    return np.stack(mixes), np.stack(srcs)

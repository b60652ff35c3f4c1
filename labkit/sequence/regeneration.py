"""Predictive then generative speech enhancement: StoRM's stochastic regeneration.

StoRM (arXiv:2212.11851) cleans noisy, reverberant speech in two stages. A predictive network
maps the noisy spectrogram ``y`` to an estimate ``y_hat`` in one pass; it removes most of the
noise but leaves the smeared, over-smoothed output typical of regression. A score-based
diffusion model then regenerates the speech, conditioned on ``y`` and ``y_hat``, starting
not from pure noise but from ``y_hat`` with a little noise added, so a few reverse steps do the
work that pure diffusion from noise needs many steps for, and the estimate keeps the
generator from inventing sounds (breathing, vocalising) where the speech is silent.

Both work on the amplitude-compressed complex STFT used by the paper's line of work:
``c = beta |X|^alpha exp(i angle X)`` with ``alpha = 0.5``, real and imaginary parts stacked
as channels. The paper's diffusion is a mean-reverting SDE whose mean drifts from the clean
speech to ``y_hat``; here the book's variance-preserving chain (``NoiseSchedule.q_sample``
and ``ddim_step`` from chapter 09) stands in for it: StoRM's sampler noises ``y_hat`` to an
intermediate step ``t_start`` with ``q_sample`` and runs ``ddim_step`` from there, while pure
diffusion starts from Gaussian noise at the last step. StoRM's denoiser is trained on a mean
that drifts linearly from the clean speech (``t = 0``) to ``y_hat`` (``t_start``), and its
sampler moves the mean along the same drift after each ``ddim_step``. Both denoisers return
the clean spectrogram; the noise estimate ``ddim_step`` needs follows from it. The networks are small 1-D
convolutional stacks over STFT frames, with the frequency bins as channels.

Shapes: B utterances, N samples, F = n_fft / 2 + 1 frequency bins, K frames; a spectrogram as
network input is ``[B, 2F, K]`` (real parts, then imaginary parts).
Section: chapter 17, "Predict, then regenerate: StoRM".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.diffusion.schedule import NoiseSchedule, ddim_step
from labkit.sequence.voices import HOP, make_speakers, random_phones, reverberate, utterance
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["EnhanceData", "SpecConfig", "ConvNet", "make_enhancement_data", "compress_stft",
           "decompress_istft", "to_channels", "from_channels", "train_predictor", "train_score",
           "regenerate", "silent_energy_db"]


@dataclass(frozen=True)
class SpecConfig:
    """The STFT and its amplitude compression: ``c = beta |X|^alpha exp(i angle X)``."""

    n_fft: int = 128
    hop: int = 64
    alpha: float = 0.5
    beta: float = 0.3

    def __post_init__(self) -> None:
        check_int("n_fft", self.n_fft, 8)
        check_int("hop", self.hop, 1, self.n_fft)
        check_real("alpha", self.alpha, 0.0, strict=True)
        check_real("beta", self.beta, 0.0, strict=True)


# show: start compress
def compress_stft(wave: torch.Tensor, spec: SpecConfig = SpecConfig()) -> torch.Tensor:
    """Amplitude-compressed complex STFT of ``wave [..., N]``: complex ``[..., F, K]``."""
    check_tensor("wave", wave, dtype="float")
    if wave.shape[-1] < spec.n_fft:
        raise ValueError(f"wave has {wave.shape[-1]} samples, shorter than one STFT frame "
                         f"(n_fft={spec.n_fft})")
    flat = wave.reshape(-1, wave.shape[-1])
    win = torch.hann_window(spec.n_fft, dtype=flat.dtype)
    x = torch.stft(flat, spec.n_fft, spec.hop, window=win, return_complex=True)
    # compress the magnitude, keep the phase: quiet parts weigh more in a loss
    c = spec.beta * x.abs().pow(spec.alpha) * torch.exp(1j * x.angle())
    return c.reshape(*wave.shape[:-1], *c.shape[-2:])


def decompress_istft(c: torch.Tensor, length: int,
                     spec: SpecConfig = SpecConfig()) -> torch.Tensor:
    """Invert :func:`compress_stft`: complex ``[..., F, K]`` to a waveform ``[..., length]``."""
    if not torch.is_tensor(c) or not c.is_complex():
        raise TypeError("c must be a complex tensor")
    length = check_int("length", length, 1)
    if c.shape[-2] != spec.n_fft // 2 + 1:
        raise ValueError(f"c has {c.shape[-2]} frequency bins, expected {spec.n_fft // 2 + 1}")
    mag = (c.abs() / spec.beta).pow(1.0 / spec.alpha)  # undo the compression
    x = mag * torch.exp(1j * c.angle())
    flat = x.reshape(-1, *x.shape[-2:])
    win = torch.hann_window(spec.n_fft, dtype=mag.dtype)
    out = torch.istft(flat, spec.n_fft, spec.hop, window=win, length=length)
    return out.reshape(*c.shape[:-2], length)
# show: end compress


def to_channels(c: torch.Tensor) -> torch.Tensor:
    """Complex ``[B, F, K]`` to real ``[B, 2F, K]`` (real parts, then imaginary parts)."""
    if not torch.is_tensor(c) or not c.is_complex() or c.dim() != 3:
        raise TypeError("c must be a complex tensor [B, F, K]")
    return torch.cat([c.real, c.imag], 1).float()


def from_channels(x: torch.Tensor) -> torch.Tensor:
    """Real ``[B, 2F, K]`` back to complex ``[B, F, K]``."""
    check_tensor("x", x, dims=3, dtype="float")
    if x.shape[1] % 2:
        raise ValueError(f"x must have an even number of channels, got {x.shape[1]}")
    f = x.shape[1] // 2
    return torch.complex(x[:, :f], x[:, f:])


@dataclass
class EnhanceData:
    """Paired waveforms: ``noisy``, ``clean`` ``[B, N]`` (scaled together so noisy has unit RMS),
    ``silent`` ``[B, N]`` bool (the clean speech pauses there), ``kind`` per utterance."""

    noisy: torch.Tensor
    clean: torch.Tensor
    silent: torch.Tensor
    kind: list[str]
    sr: int


def make_enhancement_data(n: int, seed: int, *, seconds: float = 0.5, sr: int = 8000,
                          snr_db: tuple[float, float] = (0.0, 10.0),
                          rt60: tuple[float, float] = (0.05, 0.15),
                          n_speakers: int = 16, babble: int = 3) -> EnhanceData:
    """``n`` seeded noisy reverberant utterances with their dry clean targets.

    Each utterance is three to five phones with pauses, reverberated in a room with an RT60
    drawn from ``rt60``, plus white noise (even indices) or babble, the sum of ``babble`` other
    speakers in the same room (odd indices), at an SNR drawn from ``snr_db``. The target is the
    reverberant clean speech: the task is denoising, and the room stays. ``silent`` marks the
    10 ms frames where the target is at least 30 dB below its mean frame energy.
    """
    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    sr = check_int("sr", sr, 1000)
    babble = check_int("babble", babble, 1)
    length = int(check_real("seconds", seconds, 0.0, strict=True) * sr)
    speakers = make_speakers(check_int("n_speakers", n_speakers, 2), seed)
    rng = np.random.default_rng(seed + 7)

    def voice(k: int, s: int) -> np.ndarray:
        phones = random_phones(int(rng.integers(3, 6)), s, pause=0.35)
        return utterance(speakers[k], phones, s, sr, seconds=seconds)

    noisy, clean, silent, kinds = [], [], [], []
    for i in range(n):
        s = seed * 100_003 + 10 * i
        k = int(rng.integers(len(speakers)))
        u = voice(k, s)
        room = float(rng.uniform(*rt60))
        wet = reverberate(u.wave, sr, room, s + 1)
        if i % 2 == 0:
            noise, kind = rng.standard_normal(length), "white"
        else:
            others = rng.choice([j for j in range(len(speakers)) if j != k], babble,
                                replace=False)
            noise = sum(reverberate(voice(int(j), s + 2 + m).wave, sr, room, s + 5 + m)
                        for m, j in enumerate(others))
            kind = "babble"
        snr = float(rng.uniform(*snr_db))
        gain = np.sqrt(np.mean(wet ** 2) / (np.mean(noise ** 2) * 10 ** (snr / 10)))
        y = wet + gain * noise
        scale = 1.0 / np.sqrt(np.mean(y ** 2))
        noisy.append(y * scale)
        clean.append(wet * scale)
        # pauses: 10 ms frames of the target at least 30 dB below its mean frame energy
        frames = np.pad(wet, (0, -length % HOP)).reshape(-1, HOP)
        energy = (frames ** 2).mean(1)
        silent.append(np.repeat(energy < 1e-3 * energy.mean(), HOP)[:length])
        kinds.append(kind)
    as_t = lambda a: torch.tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    return EnhanceData(noisy=as_t(noisy), clean=as_t(clean),
                       silent=torch.tensor(np.stack(silent)), kind=kinds, sr=sr)


class ConvNet(nn.Module):
    """A small 1-D convolutional stack over STFT frames, frequency bins as channels.

    It reads the noisy spectrogram ``y [B, 2F, K]``, its compressed magnitude, and ``extra``
    spectrograms stacked on the channels (``x_t``, ``y_hat``) and returns a complex mask
    applied to ``y`` (StoRM: to ``y_hat``) plus a complex residual, ``M * y + R``, the usual
    enhancement head. Inside:
    a 1 x 1 input convolution, ``layers`` residual blocks of dilated convolutions (kernel 5,
    dilations 1, 2, 4, 8, ...) with an optional diffusion-step embedding added in each block,
    and a 1 x 1 output convolution.
    """

    def __init__(self, n_freq: int, *, n_extra: int = 0, hidden: int = 64, layers: int = 4,
                 timed: bool = False) -> None:
        super().__init__()
        self.n_freq = check_int("n_freq", n_freq, 1)
        self.n_extra = check_int("n_extra", n_extra, 0)
        self.hidden = check_int("hidden", hidden, 1)
        check_int("layers", layers, 1)
        self.timed = timed
        self.inp = nn.Conv1d((3 + 2 * n_extra) * n_freq, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Conv1d(hidden, hidden, 5, padding=2 * 2 ** (i % 4), dilation=2 ** (i % 4))
            for i in range(layers))
        self.norms = nn.ModuleList(nn.GroupNorm(1, hidden) for _ in range(layers))
        self.temb = nn.Linear(32, hidden * layers) if timed else None
        self.out = nn.Conv1d(hidden, 4 * n_freq, 1)  # a complex mask and a residual
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: torch.Tensor, extra: torch.Tensor | None = None,
                t: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """``y [B, 2F, K]``, ``extra [B, 2F n_extra, K]``, ``t [B]`` -> ``[B, 2F, K]``.

        The mask and residual apply to ``base`` (``y`` unless given; StoRM passes ``y_hat``).
        """
        f = self.n_freq
        if y.dim() != 3 or y.shape[1] != 2 * f:
            raise ValueError(f"y must be [B, {2 * f}, K], got {tuple(y.shape)}")
        feats = [y, (y[:, :f] ** 2 + y[:, f:] ** 2 + 1e-8).sqrt()]
        if self.n_extra:
            if extra is None or extra.shape[1] != 2 * f * self.n_extra:
                raise ValueError(f"extra must have {2 * f * self.n_extra} channels")
            feats.append(extra)
        h = self.inp(torch.cat(feats, 1))
        emb = None
        if self.timed:
            if t is None:
                raise ValueError("t is required by a timed ConvNet")
            half = torch.exp(-math.log(1000.0) * torch.arange(16) / 16)
            ang = t.float()[:, None] * half[None]
            emb = self.temb(torch.cat([ang.sin(), ang.cos()], 1))  # [B, hidden * layers]
            emb = emb.view(len(t), len(self.blocks), self.hidden, 1)
        for i, (conv, norm) in enumerate(zip(self.blocks, self.norms, strict=True)):
            z = norm(h) if emb is None else norm(h) + emb[:, i]
            h = h + conv(F.gelu(z))
        out = self.out(F.gelu(h)).split(2 * f, 1)
        base = y if base is None else base
        # complex mask times the base signal (starting from the identity), plus a residual
        res = _cmul(out[0] + torch.cat([torch.ones_like(out[0][:, :f]),
                                        torch.zeros_like(out[0][:, :f])], 1), base) + out[1]
        return res


def _cmul(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Complex product of two ``[B, 2F, K]`` stacks (real parts, then imaginary parts)."""
    f = x.shape[1] // 2
    mr, mi, xr, xi = m[:, :f], m[:, f:], x[:, :f], x[:, f:]
    return torch.cat([mr * xr - mi * xi, mr * xi + mi * xr], 1)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=gen)


def train_predictor(y: torch.Tensor, x0: torch.Tensor, *, steps: int, batch: int = 16,
                    lr: float = 3e-3, hidden: int = 64, layers: int = 4,
                    seed: int = 0) -> ConvNet:
    """The predictive stage: ``y [B, 2F, K] -> x0`` in one pass, trained with mean squared error."""
    check_tensor("y", y, dims=3, dtype="float")
    if x0.shape != y.shape:
        raise ValueError(f"y and x0 shapes differ: {tuple(y.shape)} vs {tuple(x0.shape)}")
    steps = check_int("steps", steps, 1)
    torch.manual_seed(check_int("seed", seed, 0))
    net = ConvNet(y.shape[1] // 2, hidden=hidden, layers=layers)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for idx in _batches(len(y), check_int("batch", batch, 1), steps, gen):
        loss = F.mse_loss(net(y[idx]), x0[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


# show: start score-train
def train_score(y: torch.Tensor, x0: torch.Tensor, schedule: NoiseSchedule, *,
                y_hat: torch.Tensor | None = None, steps: int, batch: int = 16,
                lr: float = 3e-3, hidden: int = 64, layers: int = 4,
                t_max: int | None = None, seed: int = 0) -> ConvNet:
    """A denoiser ``D(x_t, t | y)`` or, given ``y_hat``, ``D(x_t, t | y, y_hat)``.

    Trained on ``x_t = q_sample(m_t, t, eps)`` with ``t`` uniform in ``[0, t_max]`` (the whole
    chain by default; StoRM's sampler only visits steps up to its start) to return the clean
    ``x0``; its score is ``-(x_t - sqrt(abar_t) D) / (1 - abar_t)``. Pure diffusion has
    ``m_t = x0``; StoRM's mean drifts linearly from ``x0`` at ``t = 0`` to ``y_hat`` at
    ``t_max``, a stand-in for its mean-reverting SDE, so the noised estimate the sampler
    starts from is what the model saw in training at that step.
    """
    check_tensor("y", y, dims=3, dtype="float")
    for name, other in (("x0", x0), ("y_hat", y_hat)):
        if other is not None and other.shape != y.shape:
            raise ValueError(f"y and {name} shapes differ: {tuple(y.shape)} vs "
                             f"{tuple(other.shape)}")
    steps = check_int("steps", steps, 1)
    t_max = schedule.n_steps - 1 if t_max is None else t_max
    t_max = check_int("t_max", t_max, 0, schedule.n_steps - 1)
    torch.manual_seed(check_int("seed", seed, 0))
    net = ConvNet(y.shape[1] // 2, n_extra=1 if y_hat is None else 2, hidden=hidden,
                  layers=layers, timed=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for idx in _batches(len(y), check_int("batch", batch, 1), steps, gen):
        t = torch.randint(0, t_max + 1, (len(idx),), generator=gen)
        eps = torch.randn(x0[idx].shape, generator=gen)
        mean = x0[idx]
        if y_hat is not None:  # StoRM: the mean drifts from x0 (t = 0) to y_hat (t_max)
            w = (t.float() / max(t_max, 1)).view(-1, 1, 1)
            mean = mean + w * (y_hat[idx] - mean)
        x_t = schedule.q_sample(mean, t, eps)  # the forward process, any shape
        extra = x_t if y_hat is None else torch.cat([x_t, y_hat[idx]], 1)
        base = None if y_hat is None else y_hat[idx]
        loss = F.mse_loss(net(y[idx], extra, t, base), x0[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()
# show: end score-train


# show: start regenerate
@torch.no_grad()
def regenerate(denoiser: ConvNet, schedule: NoiseSchedule, y: torch.Tensor, n_steps: int, *,
               y_hat: torch.Tensor | None = None, t_start: int | None = None,
               seed: int = 0) -> torch.Tensor:
    """Reverse ``n_steps`` deterministic DDIM steps from ``t_start`` down to a clean estimate.

    Pure diffusion (``y_hat`` None) starts from Gaussian noise at the last step; StoRM starts
    from ``q_sample(y_hat, t_start, noise)``, the predictor's estimate noised to an
    intermediate step, conditions every step on ``(y, y_hat)`` and moves the mean along the
    drift it was trained on; with a denoiser that always returns the true ``x0``, every
    path ends on ``x0``.
    """
    check_tensor("y", y, dims=3, dtype="float")
    T = schedule.n_steps
    t_start = T - 1 if t_start is None else check_int("t_start", t_start, 0, T - 1)
    n_steps = check_int("n_steps", n_steps, 1, t_start + 1)
    if y_hat is not None and y_hat.shape != y.shape:
        raise ValueError(f"y and y_hat shapes differ: {tuple(y.shape)} vs {tuple(y_hat.shape)}")
    if (y_hat is None) != (denoiser.n_extra == 1):
        raise ValueError("y_hat must be given exactly when the denoiser was trained with it")
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    noise = torch.randn(y.shape, generator=gen)
    if y_hat is None:
        x = noise  # pure diffusion: from noise at the last step
    else:  # StoRM: from the estimate, noised to an intermediate step
        x = schedule.q_sample(y_hat, torch.full((len(y),), t_start), noise)
    ts = np.linspace(t_start, 0, n_steps).round().astype(int).tolist()
    drift = lambda t: 0.0 if y_hat is None else max(t, 0) / max(t_start, 1)  # noqa: E731
    for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
        extra = x if y_hat is None else torch.cat([x, y_hat], 1)
        x0 = denoiser(y, extra, torch.full((len(y),), t), y_hat)
        gap = 0.0 if y_hat is None else y_hat - x0
        mean = x0 + drift(t) * gap  # the mean of x_t that training used
        a = float(schedule.abar(t))
        eps = (x - math.sqrt(a) * mean) / math.sqrt(1 - a)  # the noise that D implies
        x = ddim_step(x, eps, t, t_prev, schedule)  # lands on sqrt(abar') mean + ...
        # ... then move the mean to where it drifts at t_prev (x0 itself at t_prev = -1)
        x = x + math.sqrt(float(schedule.abar(t_prev))) * (drift(t_prev) - drift(t)) * gap
    return x
# show: end regenerate


def silent_energy_db(est: torch.Tensor, clean: torch.Tensor, silent: torch.Tensor) -> float:
    """Energy of ``est`` where the clean speech pauses, in dB relative to the clean speech's
    energy, pooled over the batch. Each estimate is first scaled to its clean signal by least
    squares (as SI-SNR does), so the number measures what was added, not the output's level."""
    check_tensor("est", est, dims=2, dtype="float")
    if est.shape != clean.shape or silent.shape != est.shape:
        raise ValueError(f"est, clean and silent shapes differ: {tuple(est.shape)}, "
                         f"{tuple(clean.shape)}, {tuple(silent.shape)}")
    if not bool(silent.any()):
        raise ValueError("silent marks no sample: there is no pause to measure")
    a = (est * clean).sum(-1, keepdim=True) / est.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)
    quiet = float((a * est).pow(2)[silent].sum())
    return 10 * math.log10(max(quiet, 1e-12) / max(float(clean.pow(2).sum()), 1e-12))

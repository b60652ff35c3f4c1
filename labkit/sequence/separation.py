"""A miniature MossFormer2 separator: conv encoder, gated-attention blocks with or without the
FSMN memory module, masks and a transposed-conv decoder.

After "MossFormer2: Combining Transformer and RNN-Free Recurrent Network for Enhanced
Time-Domain Monaural Speech Separation" (mossformer2). The encoder is a 1-D convolution
(stride 8; kernel 32 samples by default, 4 ms at 8 kHz) with ReLU; the separator stacks
MossFormer-style gated single-head attention blocks (FLASH-like: shared query/key base,
squared-ReLU attention, output gated by a SiLU branch). MossFormer2 adds, after each
attention block, a gated FSMN block: a bottleneck projection, two gated branches, a memory on
one of them made of dilated depthwise convolutions over time with dense connections (each
layer reads all earlier outputs), then an output projection and a residual. Masks (ReLU)
multiply the encoded mixture per source; a transposed convolution decodes each masked
representation to a waveform.

Simplifications against the authors' code: no rotary positions, no chunked (local plus global
linear) attention, no convolution modules inside the attention block's feed-forward parts, two
dilations in the memory instead of a deeper stack, layer norms in place of their cumulative
norms, and one repetition of each block type per layer. :func:`low_high_mixtures` makes the
section's data: a low and a high synthetic voice at equal power.

Section: chapter 17, "Speech separation with a recurrent memory: MossFormer2"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.sequence import voices
from labkit.sequence.features import pit_si_snr, si_snr_improvement
from labkit.validation import check_int, check_real, check_tensor


@dataclass(frozen=True)
class SeparatorConfig:
    """Sizes of the miniature; ``fsmn=False`` gives the attention-only baseline."""

    n_filters: int = 64  # encoder channels N
    kernel: int = 32  # encoder kernel (samples)
    stride: int = 8  # encoder hop (samples)
    dim: int = 64  # separator width D
    hidden: int = 128  # gated attention's expanded width
    qk_dim: int = 32
    n_layers: int = 2
    n_sources: int = 2
    fsmn: bool = True
    fsmn_hidden: int = 64  # bottleneck width of the FSMN block
    lorder: int = 4  # memory kernel covers 2 * lorder - 1 frames
    fsmn_depth: int = 2  # dilations 1, 2, ...
    sr: int = 8000


LOW_F0 = (90.0, 130.0)  # Hz, lowest f0 of the low voice
HIGH_F0 = (200.0, 300.0)  # Hz, lowest f0 of the high voice


def low_high_mixtures(n: int, seed: int, *, seconds: float = 0.5,
                      sr: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded mixtures of a fresh low voice and a fresh high voice at equal power.

    Each mixture draws two new speakers: a low one (lowest f0 in ``LOW_F0``, formant scale
    0.85-1.0) and a high one (lowest f0 in ``HIGH_F0``, formant scale 1.05-1.2), each gliding
    up to 30 % above its lowest f0. Returns float32 ``(mixtures [n, T], sources [n, 2, T])``.
    """
    n = check_int("n", n, 1)
    seconds = check_real("seconds", seconds, 0.0, strict=True)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    mixes, srcs = [], []
    n_phones = int(np.ceil(seconds / 0.06)) + 1
    for _ in range(n):
        utts = []
        for (lo, hi), (f_lo, f_hi) in ((LOW_F0, (0.85, 1.0)), (HIGH_F0, (1.05, 1.2))):
            f0 = float(rng.uniform(lo, hi))
            spk = voices.Speaker(f0, f0 * float(rng.uniform(1.1, 1.3)),
                                 float(rng.uniform(f_lo, f_hi)), float(rng.uniform(0.005, 0.03)))
            s = int(rng.integers(2**31))
            utts.append(voices.utterance(spk, voices.random_phones(n_phones, s), s, sr,
                                         seconds=seconds))
        m, s2 = voices.mix(utts, sr)
        mixes.append(m)
        srcs.append(s2)
    return (torch.tensor(np.stack(mixes), dtype=torch.float32),
            torch.tensor(np.stack(srcs), dtype=torch.float32))


class GatedAttention(nn.Module):
    """Single-head gated attention unit: ``x + W_o(u * (A v))`` with ``A = relu(q k^T / T)^2``."""

    def __init__(self, dim: int, hidden: int, qk_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.uv = nn.Linear(dim, 2 * hidden)
        self.base = nn.Linear(dim, qk_dim)
        self.qk_scale = nn.Parameter(torch.ones(2, qk_dim) + 0.02 * torch.randn(2, qk_dim))
        self.qk_shift = nn.Parameter(torch.zeros(2, qk_dim))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        h = self.norm(x)
        u, v = F.silu(self.uv(h)).chunk(2, -1)
        z = F.silu(self.base(h))
        q = z * self.qk_scale[0] + self.qk_shift[0]
        k = z * self.qk_scale[1] + self.qk_shift[1]
        attn = F.relu(q @ k.transpose(1, 2) / x.shape[1]) ** 2
        return x + self.out(u * (attn @ v))


# show: start fsmn
class DilatedDenseMemory(nn.Module):
    """Depthwise convolutions over time, dilation 2**i, layer i reading all earlier outputs."""

    def __init__(self, channels: int, lorder: int, depth: int) -> None:
        super().__init__()
        self.lorder = lorder
        self.convs = nn.ModuleList(
            nn.Conv1d(channels * (i + 1), channels, 2 * lorder - 1, dilation=2**i,
                      padding=(lorder - 1) * 2**i, groups=channels, bias=False)
            for i in range(depth))
        self.norms = nn.ModuleList(nn.GroupNorm(channels, channels) for _ in range(depth))
        self.acts = nn.ModuleList(nn.PReLU(channels) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, T]
        dense = x
        for conv, norm, act in zip(self.convs, self.norms, self.acts, strict=True):
            out = act(norm(conv(dense)))
            dense = torch.cat([out, dense], 1)  # dense connection
        return out


class GatedFSMNBlock(nn.Module):
    """Bottleneck -> gated units (u, v) -> u + memory(u), times v -> output layer, residual."""

    def __init__(self, dim: int, hidden: int, lorder: int, depth: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(dim, hidden), nn.PReLU())
        self.norm = nn.LayerNorm(hidden)
        self.to_u = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.to_v = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.fsmn_in = nn.Linear(hidden, hidden)
        self.fsmn_proj = nn.Linear(hidden, hidden, bias=False)
        self.memory = DilatedDenseMemory(hidden, lorder, depth)
        self.out_norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, T, D]
        h = self.norm(self.bottleneck(x))
        u, v = self.to_u(h), self.to_v(h)
        p = self.fsmn_proj(F.relu(self.fsmn_in(u)))
        u = u + self.memory(p.transpose(1, 2)).transpose(1, 2)  # FSMN memory
        return x + self.output(self.out_norm(u * v))  # gated unit
# show: end fsmn


class Separator(nn.Module):
    """Encoder, gated-attention (+ FSMN) separator with ReLU masks, transposed-conv decoder."""

    def __init__(self, cfg: SeparatorConfig) -> None:
        super().__init__()
        if not isinstance(cfg, SeparatorConfig):
            raise TypeError(f"cfg must be a SeparatorConfig, got {type(cfg).__name__}")
        for name in ("n_filters", "kernel", "dim", "hidden", "qk_dim", "n_layers",
                     "fsmn_hidden", "lorder", "fsmn_depth"):
            check_int(f"cfg.{name}", getattr(cfg, name), 1)
        check_int("cfg.n_sources", cfg.n_sources, 2)
        check_int("cfg.stride", cfg.stride, 1)
        if cfg.kernel < cfg.stride:
            raise ValueError(f"cfg.kernel must be at least cfg.stride ({cfg.stride}), "
                             f"got {cfg.kernel}")
        self.cfg = cfg
        stride = cfg.stride
        self.encoder = nn.Conv1d(1, cfg.n_filters, cfg.kernel, stride, bias=False)
        self.inp = nn.Sequential(nn.LayerNorm(cfg.n_filters), nn.Linear(cfg.n_filters, cfg.dim))
        blocks: list[nn.Module] = []
        for _ in range(cfg.n_layers):
            blocks.append(GatedAttention(cfg.dim, cfg.hidden, cfg.qk_dim))
            if cfg.fsmn:
                blocks.append(GatedFSMNBlock(cfg.dim, cfg.fsmn_hidden, cfg.lorder,
                                             cfg.fsmn_depth))
        self.blocks = nn.Sequential(*blocks)
        self.masks = nn.Linear(cfg.dim, cfg.n_sources * cfg.n_filters)
        self.decoder = nn.ConvTranspose1d(cfg.n_filters, 1, cfg.kernel, stride, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """``mixture [B, T]`` -> estimates ``[B, S, T]``."""
        check_tensor("mixture", mixture, dims=2, dtype="float")
        cfg = self.cfg
        if mixture.shape[-1] < cfg.kernel:
            raise ValueError(f"mixture has {mixture.shape[-1]} samples, shorter than one "
                             f"encoder frame ({cfg.kernel})")
        b, t = mixture.shape
        # show: start separator
        w = F.relu(self.encoder(mixture[:, None]))  # [B, N, L]
        h = self.blocks(self.inp(w.transpose(1, 2)))  # [B, L, D]
        m = F.relu(self.masks(h)).view(b, -1, cfg.n_sources, cfg.n_filters)
        masked = w[:, None] * m.permute(0, 2, 3, 1)  # [B, S, N, L]
        est = self.decoder(masked.reshape(b * cfg.n_sources, cfg.n_filters, -1))
        est = F.pad(est, (0, max(0, t - est.shape[-1])))[..., :t]
        return est.view(b, cfg.n_sources, t)
        # show: end separator

    def separate(self, mixture: torch.Tensor, sr: int) -> torch.Tensor:
        """Estimates for ``mixture`` recorded at ``sr``, which must be the model's rate."""
        if check_int("sr", sr, 1) != self.cfg.sr:
            raise ValueError(f"sample-rate mismatch: mixture sr={sr}, model trained at "
                             f"{self.cfg.sr}")
        with torch.no_grad():
            return self(mixture)


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matched_baseline(cfg: SeparatorConfig) -> SeparatorConfig:
    """The attention-only config whose widened ``hidden`` best matches ``cfg``'s parameters."""
    if not cfg.fsmn:
        raise ValueError("cfg must include the FSMN (fsmn=True) to be matched")
    target = n_params(Separator(cfg))
    base = replace(cfg, fsmn=False)
    per = n_params(Separator(replace(base, hidden=cfg.hidden + 1))) - n_params(Separator(base))
    extra = round((target - n_params(Separator(base))) / per)
    return replace(base, hidden=cfg.hidden + max(0, extra))


@dataclass
class TrainResult:
    """Loss curve (negative PIT SI-SNR, dB) of one training run."""

    losses: list[float]


def train_separator(model: Separator, mixtures: torch.Tensor, sources: torch.Tensor, *,
                    steps: int, batch: int = 8, lr: float = 5e-3, crop: int | None = None,
                    warmup: int = 20, seed: int = 0) -> TrainResult:
    """Adam on ``-PIT-SI-SNR`` over random minibatches of random ``crop``-sample windows.

    The learning rate rises linearly over ``warmup`` steps, then decays on a cosine;
    gradients are clipped to norm 5.
    """
    check_tensor("mixtures", mixtures, dims=2, dtype="float")
    check_tensor("sources", sources, dims=3, dtype="float")
    if sources.shape[0] != mixtures.shape[0] or sources.shape[-1] != mixtures.shape[-1]:
        raise ValueError(f"mixture and source shapes differ: mixtures {tuple(mixtures.shape)}, "
                         f"sources {tuple(sources.shape)}")
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    warmup = check_int("warmup", warmup, 0)
    lr = check_real("lr", lr, 0.0, strict=True)
    length = mixtures.shape[-1]
    crop = length if crop is None else check_int("crop", crop, model.cfg.kernel)
    if crop > length:
        raise ValueError(f"crop must be at most the signal length {length}, got {crop}")
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def rate(step: int) -> float:
        return min(1.0, (step + 1) / (warmup + 1)) * 0.5 * (1.0 + math.cos(math.pi * step / steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(mixtures), (batch,), generator=gen)
        start = int(torch.randint(length - crop + 1, (1,), generator=gen))
        window = slice(start, start + crop)
        best, _ = pit_si_snr(model(mixtures[idx, window]), sources[idx, :, window])
        loss = -best.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return TrainResult(losses)


def evaluate(model: Separator, mixtures: torch.Tensor, sources: torch.Tensor,
             batch: int = 32) -> torch.Tensor:
    """SI-SNRi (dB) per held-out mixture."""
    out = []
    for i in range(0, len(mixtures), batch):
        est = model.separate(mixtures[i:i + batch], model.cfg.sr)
        out.append(si_snr_improvement(est, sources[i:i + batch], mixtures[i:i + batch]))
    return torch.cat(out)

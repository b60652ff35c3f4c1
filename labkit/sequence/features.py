"""Speech features and separation metrics: mel filterbank on ``torch.stft``, log-mel, SI-SNR and
the permutation-invariant SI-SNR loss.

SI-SNR (scale-invariant signal-to-noise ratio, as in Conv-TasNet and MossFormer2's training
objective): with zero-mean estimate :math:`\\hat s` and reference :math:`s`, the target is the
projection :math:`s_t = (\\langle \\hat s, s\\rangle / \\lVert s\\rVert^2) s`, the error
:math:`e = \\hat s - s_t`, and SI-SNR :math:`= 10 \\log_{10} \\lVert s_t\\rVert^2/\\lVert e\\rVert^2`.
Permutation-invariant training scores each mixture under its best assignment of estimates to
sources.

Section: chapter 17, "Speech separation with a recurrent memory: MossFormer2", "Speech tokens and BPE", "Parallel masked decoding" and "Predict, then regenerate: StoRM".
"""

from __future__ import annotations

import itertools

import torch

from labkit.validation import check_int, check_real, check_tensor


def mel_filterbank(n_mels: int, n_fft: int, sr: int, *, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular filters equally spaced on the HTK mel scale: ``[n_mels, n_fft // 2 + 1]``."""
    n_mels = check_int("n_mels", n_mels, 1)
    n_fft = check_int("n_fft", n_fft, 2)
    sr = check_int("sr", sr, 1)
    f_max = sr / 2.0 if f_max is None else check_real("f_max", f_max, 0.0, strict=True)
    f_min = check_real("f_min", f_min, 0.0)
    if not f_min < f_max <= sr / 2.0:
        raise ValueError(f"need f_min < f_max <= sr / 2, got f_min={f_min}, f_max={f_max}, sr={sr}")

    def mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    edges_mel = torch.linspace(float(mel(torch.tensor(f_min))), float(mel(torch.tensor(f_max))),
                               n_mels + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sr / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def log_mel(wave: torch.Tensor, sr: int, *, expected_sr: int | None = None, n_fft: int = 256,
            hop: int = 80, n_mels: int = 40) -> torch.Tensor:
    """Log-mel frames ``[..., frames, n_mels]`` of ``wave [..., T]`` (Hann window, no centring).

    ``expected_sr``, if given, must equal ``sr`` (features made for one rate are wrong at
    another); a signal shorter than one frame (``n_fft`` samples) is refused.
    """
    check_tensor("wave", wave, dtype="float")
    sr = check_int("sr", sr, 1)
    if expected_sr is not None and sr != expected_sr:
        raise ValueError(f"sample-rate mismatch: wave has sr={sr}, expected {expected_sr}")
    n_fft = check_int("n_fft", n_fft, 2)
    hop = check_int("hop", hop, 1)
    if wave.shape[-1] < n_fft:
        raise ValueError(f"wave has {wave.shape[-1]} samples, shorter than one STFT frame "
                         f"(n_fft={n_fft})")
    flat = wave.reshape(-1, wave.shape[-1])
    spec = torch.stft(flat, n_fft, hop, window=torch.hann_window(n_fft, dtype=flat.dtype),
                      center=False, return_complex=True)
    power = spec.abs() ** 2  # [B, F, frames]
    fb = mel_filterbank(n_mels, n_fft, sr).to(flat.dtype)
    out = torch.log(torch.einsum("mf,bft->btm", fb, power) + 1e-8)
    return out.reshape(*wave.shape[:-1], *out.shape[1:])


def _pair(est: torch.Tensor, ref: torch.Tensor) -> None:
    check_tensor("estimate", est, dtype="float")
    check_tensor("reference", ref, dtype="float")
    if est.shape != ref.shape:
        raise ValueError(f"estimate and reference shapes differ: {tuple(est.shape)} vs "
                         f"{tuple(ref.shape)}")


# show: start si_snr
def si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SI-SNR in dB over the last axis; shapes must match."""
    _pair(est, ref)
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    scale = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * ref  # the part of the estimate that is the source
    noise = est - target  # everything else
    ratio = target.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps)
    return 10.0 * torch.log10(ratio + eps)


def pit_si_snr(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best mean SI-SNR over assignments of ``est [B, S, T]`` to ``ref [B, S, T]``.

    Returns ``(si_snr [B], permutation [B, S])``; the loss is ``-si_snr.mean()``.
    """
    _pair(est, ref)
    if est.dim() != 3:
        raise ValueError(f"estimate must be [batch, sources, time], got {tuple(est.shape)}")
    perms = list(itertools.permutations(range(est.shape[1])))
    scores = torch.stack([si_snr(est[:, list(p)], ref).mean(-1) for p in perms], -1)
    best, idx = scores.max(-1)
    return best, torch.tensor(perms, device=est.device)[idx]
# show: end si_snr


def si_snr_improvement(est: torch.Tensor, ref: torch.Tensor,
                       mixture: torch.Tensor) -> torch.Tensor:
    """SI-SNRi per mixture (dB): PIT SI-SNR of the estimates minus that of the mixture itself."""
    check_tensor("mixture", mixture, dtype="float")
    if mixture.shape != (ref.shape[0], ref.shape[-1]):
        raise ValueError(f"mixture and source shapes differ: mixture {tuple(mixture.shape)}, "
                         f"sources {tuple(ref.shape)}")
    best, _ = pit_si_snr(est, ref)
    base = si_snr(mixture[:, None].expand_as(ref).contiguous(), ref).mean(-1)
    return best - base

"""Structure-modulated diffusion for super-resolution: region masks shift the training noise.

*SAM-DiffSR: Structure-Modulated Diffusion Model for Image Super-Resolution* (Wang et al.,
2024, arXiv:2402.17133) builds on SRDiff, a diffusion model that predicts the residual between
the high-resolution image and the upsampled low-resolution one, conditioned on the latter. Its
change is to the forward process only: during training, the segment-anything model (SAM) cuts
each high-resolution image into regions, every region gets one number that encodes its
position (a *structure embedding*), and that map is added to the sampled noise, so the noise
mean differs from region to region. The network learns to predict this modulated noise.
Sampling is unchanged (plain Gaussian noise, no masks, no SAM), so inference costs nothing
extra.

The authors' code (``data_gen/merge_mask_to_one.py`` and ``models_sr/diffusion_sam.py`` of
their repository) fixes the details this module follows:

- the embedding of a region is the mean over the *whole image* of a fixed position grid times
  the region's indicator, so it grows with the region's area and depends on where it lies; the
  grid is a rotary position embedding (RoPE) applied to an all-ones image: row ``m``, column
  pair ``(2k, 2k+1)`` holds ``cos(m w_k) -+ sin(m w_k)`` with ``w_k = 10000^(-2k / W)``
  (:func:`structure_embedding`, :func:`structure_mask`);
- the map enters the noise scaled by ``sqrt(1 - abar_t) * beta_t``, the *mask coefficient*,
  which is tiny at low noise and near one at the last steps of a cosine schedule
  (:func:`mask_coefficient`, :func:`modulated_noise`);
- the regression target is the modulated noise itself.

The miniature's stand-in for SAM is :func:`digit_regions`: ``scipy.ndimage.label`` on the
high-resolution digit, once on the ink (each stroke component a region) and once on the paper
(the outer background and each enclosed hole a region), so every pixel belongs to one region.
The task is 4 x 4 -> 8 x 8 super-resolution of scikit-learn's digits
(:func:`downsample`, :func:`upsample`), scored by PSNR (:func:`psnr`); :func:`train_superres`
trains the conditioned tiny UNet (``UNetConfig.cond_channels = 1``) with or without the
modulation from the same seed, and :func:`super_resolve` samples with DDIM.

What the miniature leaves out: SAM and natural images (DIV2K), the RRDB encoder that SRDiff
feeds the UNet, the L1 loss (here the squared error of DDPM), perceptual metrics, and SRDiff's
residual scaling (times 2, then clipped; here halved, so it fits [-1, 1] without clipping).

Shapes: B batch, H x W high-resolution image, h x w low-resolution image, T training steps.
Section: chapter 08, "Structure-modulated super-resolution".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from labkit.runtime import seed_everything
from labkit.validation import check_int, check_real, check_tensor

from .schedule import NoiseSchedule, ddim_step, ddim_timesteps
from .train import DiffusionTrainConfig, training_loop
from .unet import TinyUNet, UNetConfig

__all__ = ["SRResult", "digit_regions", "downsample", "mask_coefficient", "modulated_noise", "noise_loss", "psnr",
           "structure_embedding", "structure_mask", "super_resolve", "train_superres", "upsample"]


def _check_images(name: str, x: object) -> torch.Tensor:
    check_tensor(name, x, dims=4, dtype="float")
    return x  # type: ignore[return-value]


def downsample(hr: torch.Tensor, factor: int) -> torch.Tensor:
    """The low-resolution image: the mean of each ``factor x factor`` block.

    Raises ``ValueError`` when ``factor`` does not divide the image size.

    Shapes:
        hr: (B, C, H, W); result: (B, C, H / factor, W / factor).
    """
    _check_images("hr", hr)
    check_int("factor", factor, 1)
    H, W = hr.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"factor must divide the image size {H} x {W}, got {factor}")
    return F.avg_pool2d(hr, factor)


def upsample(lr: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear upsampling by ``factor`` (half-pixel centres): the baseline and the condition.

    Shapes:
        lr: (B, C, h, w); result: (B, C, h * factor, w * factor).
    """
    _check_images("lr", lr)
    check_int("factor", factor, 1)
    return F.interpolate(lr, scale_factor=float(factor), mode="bilinear", align_corners=False)


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, ``10 log10(range^2 / MSE)`` in dB.

    Args:
        x: reconstructions; ref: the true images, same shape.
        data_range: the span of the pixel values (2 for images in [-1, 1]).

    Returns:
        (B,) float64; ``inf`` for an exact reconstruction.
    """
    _check_images("x", x)
    _check_images("ref", ref)
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    data_range = check_real("data_range", data_range, 0.0, strict=True)
    mse = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def digit_regions(hr: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """Regions of each high-resolution digit: the stand-in for SAM's masks.

    ``scipy.ndimage.label`` (4-connectivity) runs on the ink (pixels above ``threshold``), then
    on the paper (the rest), whose labels continue after the ink's, so every pixel gets a region
    ``1 .. n`` and a hole inside a 0 or an 8 is a region apart from the outer background.

    Returns:
        (B, H, W) int64 labels.

    Shapes:
        hr: (B, 1, H, W).
    """
    _check_images("hr", hr)
    if hr.shape[1] != 1:
        raise ValueError(f"hr must be (B, 1, H, W) grey images, got {tuple(hr.shape)}")
    check_real("threshold", threshold)
    ink = (hr[:, 0] > threshold).cpu().numpy()
    out = np.zeros(ink.shape, dtype=np.int64)
    for b in range(ink.shape[0]):
        strokes, n_ink = ndimage.label(ink[b])
        paper, _ = ndimage.label(~ink[b])
        out[b] = np.where(ink[b], strokes, paper + n_ink)
    return torch.from_numpy(out)


def structure_embedding(height: int, width: int) -> torch.Tensor:
    """The fixed position grid: a rotary embedding of an all-ones image.

    Row ``m`` is the position; columns come in pairs ``(2k, 2k+1)`` rotated by ``m w_k``,
    ``w_k = 10000^(-2k / width)``, so an all-ones pair becomes
    ``(cos(m w_k) - sin(m w_k), cos(m w_k) + sin(m w_k))``.

    Returns:
        (height, width) float32.
    """
    check_int("height", height, 1)
    check_int("width", width, 2)
    if width % 2:
        raise ValueError(f"width must be even (columns are rotated in pairs), got {width}")
    w = 10000.0 ** (-torch.arange(0, width, 2, dtype=torch.float64) / width)  # (width/2,)
    angle = torch.arange(height, dtype=torch.float64)[:, None] * w[None]  # (height, width/2)
    pairs = torch.stack([angle.cos() - angle.sin(), angle.cos() + angle.sin()], dim=-1)
    return pairs.reshape(height, width).float()


def structure_mask(regions: torch.Tensor) -> torch.Tensor:
    """The structure map: every pixel holds its region's position code.

    Region ``r`` of an image gets ``s_r = mean_p(E_p * 1[p in r])``, the mean over all ``H W``
    pixels of the position grid ``E`` (:func:`structure_embedding`) inside the region. Label 0
    (no region) maps to 0.

    Returns:
        (B, 1, H, W) float32.

    Shapes:
        regions: (B, H, W) int64 labels >= 0.
    """
    check_tensor("regions", regions, dims=3, dtype="integer")
    if regions.numel() and int(regions.min()) < 0:
        raise ValueError(f"regions must hold labels >= 0, got {int(regions.min())}")
    B, H, W = regions.shape
    grid = structure_embedding(H, W).to(regions.device)
    n = int(regions.max()) + 1 if regions.numel() else 1
    # show: start structure
    # s_r = (1 / HW) sum_p E_p 1[p in r]: one number per region, from its
    # area and where it lies
    onehot = F.one_hot(regions, n).float()  # (B, H, W, n)
    code = (onehot * grid[None, :, :, None]).sum((1, 2)) / (H * W)  # (B, n)
    code[:, 0] = 0.0  # label 0: no region, no shift
    # every pixel takes its region's code
    mask = torch.gather(code, 1, regions.flatten(1)).view(B, 1, H, W)
    # show: end structure
    return mask


def mask_coefficient(schedule: NoiseSchedule) -> torch.Tensor:
    """``sqrt(1 - abar_t) * beta_t`` for every step: how strongly the map shifts the noise.

    Returns:
        (T,) float32.
    """
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    return (1.0 - schedule.alphas_cumprod).sqrt() * schedule.betas


def modulated_noise(noise: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, *,
                    strength: float = 1.0) -> torch.Tensor:
    """The training noise of SAM-DiffSR: Gaussian noise whose mean is the scaled structure map.

    Args:
        noise: ``eps ~ N(0, I)``.
        mask: the structure map (:func:`structure_mask`), one per image, the noise's size.
        t: the step of each image.
        schedule: the forward process.
        strength: a multiplier on the authors' coefficient (1 reproduces it; 0 is plain noise).

    Returns:
        ``eps + strength * sqrt(1 - abar_t) beta_t * mask``, shaped like ``noise``.

    Shapes:
        noise: (B, C, H, W); mask: (B, 1, H, W) or (B, C, H, W); t: (B,).
    """
    _check_images("noise", noise)
    _check_images("mask", mask)
    B, C, H, W = noise.shape
    if mask.shape[0] != B or mask.shape[1] not in (1, C) or mask.shape[2:] != (H, W):
        raise ValueError(f"mask must match the image: (B, 1, H, W) = ({B}, 1, {H}, {W}), "
                         f"got {tuple(mask.shape)}")
    if t.shape != (B,):
        raise ValueError(f"t must be (B,) = ({B},), got {tuple(t.shape)}")
    strength = check_real("strength", strength, 0.0)
    # show: start modulate
    coef = mask_coefficient(schedule).to(noise.device)[t]  # (B,)
    # the noise mean moves by the region's code, most at the noisiest steps:
    # eps' = eps + sqrt(1 - abar_t) beta_t s_region(p)
    return noise + strength * coef.view(B, 1, 1, 1) * mask
    # show: end modulate


@dataclass
class SRResult:
    """A trained super-resolution noise predictor.

    ``history`` rows are (step, mean training loss since the previous row, seconds so far).
    """

    model: TinyUNet
    schedule: NoiseSchedule
    factor: int
    history: list[tuple[int, float, float]] = field(default_factory=list)


def _check_cfg(cfg: UNetConfig, hr: torch.Tensor) -> None:
    if not isinstance(cfg, UNetConfig):
        raise TypeError(f"cfg must be a UNetConfig, got {type(cfg).__name__}")
    if cfg.cond_channels != cfg.in_channels or cfg.n_classes is not None:
        raise ValueError("cfg must have cond_channels == in_channels (the upsampled input) and "
                         f"n_classes=None, got cond_channels={cfg.cond_channels}, n_classes={cfg.n_classes}")
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if tuple(hr.shape[1:]) != shape:
        raise ValueError(f"hr must be (N, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(hr.shape)}")


def train_superres(cfg: UNetConfig, hr: torch.Tensor, train_cfg: DiffusionTrainConfig, *, factor: int = 2,
                   schedule: NoiseSchedule = NoiseSchedule(100, "cosine"), structure: bool = False,
                   strength: float = 1.0, seed: int = 0, progress: bool = True) -> SRResult:
    """Train a conditioned :class:`TinyUNet` to predict the noise on the residual ``(hr - up(lr)) / 2``.

    With ``structure=True`` the noise is :func:`modulated_noise` of each image's structure map
    (regions from :func:`digit_regions`), otherwise plain; everything else (initial weights,
    batches, steps, noise draws) is the same for one ``seed``, so the two runs differ by the
    modulation alone.

    Args:
        cfg: architecture with ``cond_channels = in_channels`` and ``n_classes=None``.
        hr: training images in [-1, 1].
        train_cfg: the recipe (AdamW, warm-up, cosine decay, gradient clipping at 1).
        factor: the scale factor of the super-resolution.
        schedule: the forward process (default: 100 cosine steps, as SRDiff).
        structure: modulate the noise (SAM-DiffSR) or not (the baseline).
        strength: multiplier on the modulation.
        seed: seeds everything random.
        progress: show a tqdm bar.

    Returns:
        :class:`SRResult`, model in eval mode.

    Shapes:
        hr: (N, C, H, W).
    """
    _check_images("hr", hr)
    _check_cfg(cfg, hr)
    if not isinstance(train_cfg, DiffusionTrainConfig):
        raise TypeError(f"train_cfg must be a DiffusionTrainConfig, got {type(train_cfg).__name__}")
    cond = upsample(downsample(hr, factor), factor)  # (N, C, H, W)
    target = (hr - cond) / 2  # the residual SRDiff diffuses, scaled into [-1, 1]
    maps = structure_mask(digit_regions(hr)) if structure else None  # (N, 1, H, W)
    gen = seed_everything(seed)
    model = TinyUNet(cfg, init_seed=seed)
    N, T, B = hr.shape[0], schedule.n_steps, train_cfg.batch_size
    result = SRResult(model=model, schedule=schedule, factor=factor)

    def step_losses(step: int) -> tuple[torch.Tensor]:
        # show: start train-step
        idx = torch.randint(0, N, (B,), generator=gen)
        t = torch.randint(0, T, (B,), generator=gen)
        noise = torch.randn((B, *hr.shape[1:]), generator=gen)
        if maps is not None:  # SAM-DiffSR: the only change, in training only
            noise = modulated_noise(noise, maps[idx], t, schedule,
                                    strength=strength)
        # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps', x_0 the residual
        x_t = schedule.q_sample(target[idx], t, noise)
        # the condition rides along as a channel; the target is eps' itself
        pred = model(torch.cat([x_t, cond[idx]], dim=1), t)  # (B, C, H, W)
        return (F.mse_loss(pred, noise),)
        # show: end train-step

    for log in training_loop(model, train_cfg, step_losses, desc="train sr", progress=progress):
        result.history.append((log.step, log.losses[0], log.clock))
    model.eval()
    return result


@torch.no_grad()
def noise_loss(result: SRResult, hr: torch.Tensor, *, structure: bool, t_range: tuple[int, int] | None = None,
               seed: int = 0) -> float:
    """Mean squared error of the noise prediction on a fixed batch, with plain or modulated noise.

    With ``structure=True`` the target is the modulated noise SAM-DiffSR trains on (strength 1),
    so the number says how well a model has learnt to predict each region's shift.

    Args:
        result: a trained model.
        hr: high-resolution images in [-1, 1] (their regions give the structure map).
        structure: modulate the noise or not.
        t_range: half-open ``[lo, hi)`` of steps to draw from (default: all).
        seed: seeds the steps and the noise (the same batch for every model).

    Shapes:
        hr: (N, C, H, W).
    """
    if not isinstance(result, SRResult):
        raise TypeError(f"result must be an SRResult, got {type(result).__name__}")
    _check_images("hr", hr)
    _check_cfg(result.model.cfg, hr)
    sched = result.schedule
    lo, hi = (0, sched.n_steps) if t_range is None else t_range
    check_int("t_range[0]", lo, 0, sched.n_steps - 1)
    check_int("t_range[1]", hi, lo + 1, sched.n_steps)
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(lo, hi, (hr.shape[0],), generator=gen)
    noise = torch.randn(hr.shape, generator=gen)
    if structure:
        noise = modulated_noise(noise, structure_mask(digit_regions(hr)), t, sched)
    cond = upsample(downsample(hr, result.factor), result.factor)
    x_t = sched.q_sample((hr - cond) / 2, t, noise)
    return F.mse_loss(result.model(torch.cat([x_t, cond], dim=1), t), noise).item()


@torch.no_grad()
def super_resolve(result: SRResult, lr: torch.Tensor, *, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """High-resolution images from low-resolution ones: DDIM (``eta = 0``) from plain noise.

    The sampler is the same for both models: no masks, no structure map.

    Args:
        result: a trained model (:func:`train_superres`).
        lr: low-resolution images in [-1, 1].
        steps: DDIM steps, in [1, T].
        seed: seeds the starting noise.

    Returns:
        ``up(lr) + 2 * residual``, clamped to [-1, 1].

    Shapes:
        lr: (B, C, h, w); result: (B, C, h * factor, w * factor).
    """
    if not isinstance(result, SRResult):
        raise TypeError(f"result must be an SRResult, got {type(result).__name__}")
    _check_images("lr", lr)
    cond = upsample(lr, result.factor)
    cfg = result.model.cfg
    if tuple(cond.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
        raise ValueError(f"lr upsampled by {result.factor} must be {cfg.image_size} x {cfg.image_size} with "
                         f"{cfg.in_channels} channel(s), got {tuple(lr.shape)}")
    sched = result.schedule
    ts = ddim_timesteps(sched.n_steps, check_int("steps", steps, 1, sched.n_steps)).tolist()
    x = torch.randn(cond.shape, generator=torch.Generator().manual_seed(seed))
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        eps = result.model(torch.cat([x, cond], dim=1), torch.full((x.shape[0],), t, dtype=torch.long))
        x = ddim_step(x, eps, t, t_prev, sched, clip_x0=True)  # residual / 2 lies in [-1, 1]
    return (cond + 2 * x).clamp(-1.0, 1.0)


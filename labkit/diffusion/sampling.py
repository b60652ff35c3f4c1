"""Sampling from the tiny DDPM with DDIM steps: the loop that the acceleration chapter speeds up.

A sample starts as pure noise ``x_T ~ N(0, I)`` and is denoised by ``S`` applications of the
network, each followed by one DDIM update (Song, Meng and Ermon, 2020, arXiv:2010.02502, eq. 12).
The cost of a sample is therefore ``S`` network evaluations; every method of chapter 09 attacks
one factor of that product: fewer steps (DDIM itself), cheaper steps (reusing the encoder's
features, Faster Diffusion; removing blocks, LAPTOP-Diff), or the same step spread over devices
(patch parallelism).

The per-step call is spelled out as ``model.decode(model.encode(x, t, y))`` rather than
``model(x, t, y)`` so that the chapter's variants, which cache or skip part of it, read as edits
of this loop.

What the miniature leaves out: classifier-free guidance, higher-order solvers, and batching
across devices.

Shapes: B = n images, C channels, H x W image, S sampling steps.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import torch

from labkit.validation import check_int

from .schedule import NoiseSchedule, ddim_step, ddim_timesteps
from .unet import TinyUNet

__all__ = ["balanced_labels", "sample", "sample_labels", "start_state"]


def balanced_labels(n: int, n_classes: int = 10, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels ``0, 1, ..., n_classes - 1, 0, 1, ...`` for ``n`` samples: every class equally often.

    Returns:
        (n,) int64.

    Section: chapter 09, "Where sampling time goes".
    """
    check_int("n", n, 1)
    check_int("n_classes", n_classes, 1)
    return torch.arange(n, device=device) % n_classes


def sample_labels(model: TinyUNet, labels: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The class labels of ``n`` samples: ``labels`` checked, or :func:`balanced_labels` by default.

    Returns ``None`` for an unconditional model (``n_classes=None``), which must get no labels.

    Shapes:
        labels and the result: (n,) int64.
    """
    cfg = model.cfg
    if cfg.n_classes is None:
        if labels is not None:
            raise ValueError("labels given for an unconditional model (n_classes=None)")
        return None
    y = balanced_labels(n, cfg.n_classes) if labels is None else labels
    if y.shape != (n,):
        raise ValueError(f"labels must be (n,) = ({n},), got {tuple(y.shape)}")
    return y


def start_state(model: TinyUNet, n: int, *, x_T: torch.Tensor | None, labels: torch.Tensor | None,
                generator: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The sampler's starting noise and class labels, checked and moved to ``device``.

    ``x_T`` defaults to fresh noise from ``generator``; ``labels`` to :func:`balanced_labels` for a
    class-conditional model (and must be ``None`` for an unconditional one).

    Returns:
        ``(x_T, y)``: (B, C, H, W) and (B,) or ``None``.
    """
    cfg = model.cfg
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must be (n, C, H, W) = {shape}, got {tuple(x_T.shape)}")
    y = sample_labels(model, labels, n)
    return x_T.to(device), (None if y is None else y.to(device))


@torch.no_grad()
def sample(model: TinyUNet, schedule: NoiseSchedule, *, n: int, steps: int = 50, eta: float = 0.0,
           labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
           device: torch.device | str | None = None, x_T: torch.Tensor | None = None,
           return_trajectory: bool = False, clip_x0: bool = False
           ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Draw ``n`` images with ``steps`` DDIM steps (``eta = 0``) or DDPM-like ones (``eta = 1``).

    Random numbers (the starting noise and, for ``eta > 0``, the noise of each step) are drawn on
    the CPU from ``generator``, so a seed gives the same images on any device. Pass ``x_T`` to
    start two samplers from the same noise and compare them image by image.

    Args:
        model: the noise predictor (put in eval mode here).
        schedule: the schedule it was trained with.
        n: number of images B.
        steps: S, network evaluations, in [1, T].
        eta: 0 (deterministic DDIM) .. 1 (DDPM's variance); >= 0.
        labels: (B,) classes for a class-conditional model; default :func:`balanced_labels`.
            Must be None for an unconditional model.
        generator: CPU generator for the noise (default: the global one).
        device: where to run (default: the model's device).
        x_T: (B, C, H, W) starting noise; drawn from ``generator`` when omitted.
        return_trajectory: also return ``x_t`` after every step (on the CPU).
        clip_x0: clamp each step's clean estimate to [-1, 1] (see :func:`ddim_step`). Off by
            default: with the linear schedule the trained model's samples came out worse with it.

    Returns:
        Images in [-1, 1], (B, C, H, W); with ``return_trajectory`` also the list of S + 1 states
        ``[x_T, x_{t_1}, ..., x_0]``.

    Section: chapter 09, "Where sampling time goes".
    """
    check_int("n", n, 1)
    ts = ddim_timesteps(schedule.n_steps, steps)  # (S,) descending; raises on a bad `steps`
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    x, y = start_state(model, n, x_T=x_T, labels=labels, generator=generator, device=device)
    shape = tuple(x.shape)
    trajectory = [x.cpu()] if return_trajectory else []
    for i, t in enumerate(ts.tolist()):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        t_batch = torch.full((n,), t, device=device, dtype=torch.long)  # (B,)
        feats = model.encode(x, t_batch, y)  # embedding + down path
        eps = model.decode(feats)  # middle + up path: the predicted noise (B, C, H, W)
        noise = torch.randn(shape, generator=generator).to(device) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(x, eps, t, t_prev, schedule, eta=eta, noise=noise, clip_x0=clip_x0)
        if return_trajectory:
            trajectory.append(x.cpu())
    images = x.clamp(-1.0, 1.0)
    return (images, trajectory) if return_trajectory else images

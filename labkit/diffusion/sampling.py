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

from collections.abc import Callable

import torch

from labkit.validation import check_int

from .schedule import NoiseSchedule, ddim_step, ddim_timesteps
from .unet import TinyUNet

__all__ = ["EpsFn", "balanced_labels", "ddim_loop", "sample", "sample_labels", "start_state"]

EpsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``eps_fn(x_t, t, i) -> eps``: the noise predicted at step ``i`` (0 = noisiest) for the states
``x_t`` (B, C, H, W) at training step ``t``, given as a (B,) int64 tensor on ``x_t``'s device."""


def balanced_labels(n: int, n_classes: int = 10, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Labels ``0, 1, ..., n_classes - 1, 0, 1, ...`` for ``n`` samples: every class equally often.

    Returns:
        (n,) int64.
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


def ddim_loop(eps_fn: EpsFn, x_T: torch.Tensor, schedule: NoiseSchedule, steps: int, *,
              before_step: Callable[[int], None] | None = None,
              before_update: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None,
              after_step: Callable[[int, torch.Tensor], None] | None = None,
              eta: float = 0.0, generator: torch.Generator | None = None, clip_x0: bool = False) -> torch.Tensor:
    """The DDIM sampling loop every sampler of the chapter runs: ``S`` noise predictions and updates.

    For the steps ``t_1 > t_2 > ... > t_S`` of :func:`ddim_timesteps` (and ``t_{S+1} = -1``, the
    clean image), step ``i`` asks ``eps_fn`` for ``eps = eps_theta(x_t, t_i)`` and applies DDIM's
    update (eq. 12; :func:`ddim_step`), with ``abar`` the schedule's cumulative product:

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,

    where ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)``
    and ``z ~ N(0, I)``. The samplers differ only in ``eps_fn`` (the whole UNet, a UNet with
    blocks skipped or encoder features reused, with an add-on's residuals, on patches of the
    canvas) and in what they do around a step (patch in a LoRA, switch halo exchange off, inject
    prior noise), so each passes those in.

    Args:
        eps_fn: the noise predictor, see :data:`EpsFn`.
        x_T: (B, C, H, W) starting noise, on the device ``eps_fn`` works on.
        schedule: the schedule the model was trained with.
        steps: S, in [1, T].
        before_step: called with ``i`` before step ``i`` predicts its noise.
        before_update: ``before_update(i, t, x_t) -> x_t'``: the state the update starts from,
            given the noise already predicted from ``x_t`` (Faster Diffusion's prior noise
            injection); ``t`` is the step's training step as an int.
        after_step: called with ``i`` and the new state ``x_{t_prev}`` (not clamped) after step ``i``.
        eta: 0 (deterministic DDIM) .. 1 (DDPM's variance); >= 0.
        generator: CPU generator for the noise ``z`` of each step when ``eta > 0`` (drawn on the
            CPU, then moved to ``x_T``'s device; default: the global generator).
        clip_x0: clamp each step's clean estimate ``x0_hat`` to [-1, 1].

    Returns:
        The last state clamped to [-1, 1], (B, C, H, W).
    """
    ts = ddim_timesteps(schedule.n_steps, steps).tolist()  # S ints, descending; raises on a bad `steps`
    x = x_T
    shape = tuple(x.shape)
    for i, t in enumerate(ts):
        if before_step is not None:
            before_step(i)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        t_batch = torch.full((shape[0],), t, device=x.device, dtype=torch.long)  # (B,)
        eps = eps_fn(x, t_batch, i)  # (B, C, H, W)
        if before_update is not None:
            x = before_update(i, t, x)
        noise = torch.randn(shape, generator=generator).to(x.device) if eta > 0 and t_prev >= 0 else None
        x = ddim_step(x, eps, t, t_prev, schedule, eta=eta, noise=noise, clip_x0=clip_x0)  # eq. 12
        if after_step is not None:
            after_step(i, x)
    return x.clamp(-1.0, 1.0)


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
    """
    check_int("n", n, 1)
    ddim_timesteps(schedule.n_steps, steps)  # check `steps` before drawing any noise
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    x_T, y = start_state(model, n, x_T=x_T, labels=labels, generator=generator, device=device)

    def eps_fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        feats = model.encode(x, t, y)  # embedding + down path
        return model.decode(feats)  # middle + up path: the predicted noise (B, C, H, W)

    trajectory = [x_T.cpu()] if return_trajectory else []
    images = ddim_loop(eps_fn, x_T, schedule, steps, eta=eta, generator=generator, clip_x0=clip_x0,
                       after_step=(lambda i, x: trajectory.append(x.cpu())) if return_trajectory else None)
    return (images, trajectory) if return_trajectory else images

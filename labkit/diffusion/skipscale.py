"""Scaling the UNet's long skip connections, and the instability it is meant to calm.

*ScaleLong: Towards More Stable Training of Diffusion Model via Scaling Network Long Skip
Connection* (Huang, Pan, Yan and Lin, NeurIPS 2023, arXiv:2310.13545) bounds how much the
hidden features and the gradients of a UNet can swing during training, and how much its output
moves when its input is perturbed, by the coefficients of its long skip connections (the
encoder activations the decoder concatenates, "LSCs"). Unit coefficients leave those bounds
loose; shrinking them tightens them. Its rules, all applied to a skip before it enters the
decoder:

- ``1/sqrt(2)``-CS: every long skip times ``2 ** -0.5`` (the habit of Imagen, SR3 and the
  score-SDE models, which the paper explains);
- CS (constant scaling): the ``i``-th long skip times ``kappa ** i``, ``kappa`` in (0, 1). In the
  paper's code (the U-ViT decoder of ``libs/uvit.py``) the exponent is 0 for the skip made
  first by the encoder (the outermost, full-resolution one) and grows by one per skip towards
  the bottleneck, so the deepest skip is shrunk most. Its README suggests ``kappa`` in
  [0.5, 0.95];
- LS (learnable scaling): a small squeeze-and-excitation network computes the coefficients from
  the skip itself. Not built here.

Here:

- :func:`check_skip_scale` validates the ``skip_scale`` field of
  :class:`~labkit.diffusion.unet.UNetConfig` (None, a ``kappa > 0`` or ``"sqrt2"``);
- :func:`skip_scales` turns it into one coefficient per long skip, in the encoder's order;
  :meth:`~labkit.diffusion.unet.TinyUNet.decode` multiplies each skip by its coefficient;
- :class:`TrainingTrace` and :func:`trace_training` train with
  :func:`~labkit.diffusion.train.train_ddpm` while recording the pre-clip gradient norm at every
  step and the norm of the decoder's hidden features on a fixed probe batch;
- :func:`oscillation` and :func:`relative_range` score how much such a curve swings;
- :func:`sensitivity` measures ``|eps(x + delta) - eps(x)| / |delta|``;
- :func:`steps_to_loss` reads a convergence speed off a training history.

Shapes: B batch, C channels, H x W image, S long skips.
Section: chapter 08, "Scaling long skip connections".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from labkit.validation import check_int, check_real

if TYPE_CHECKING:  # train imports unet, which imports this module: no runtime import here
    from .train import DDPMResult, DiffusionTrainConfig
    from .unet import UNetConfig

__all__ = ["SQRT2", "TrainingTrace", "check_skip_scale", "decoder_feature_norm", "oscillation",
           "relative_range", "sensitivity", "skip_scales", "steps_to_loss", "trace_training"]

#: The name of the ``1/sqrt(2)`` rule in ``UNetConfig.skip_scale``.
SQRT2 = "sqrt2"


def check_skip_scale(skip_scale: object) -> float | str | None:
    """Validate a ``skip_scale`` value: None (no scaling), ``"sqrt2"``, or a real ``kappa > 0``.

    Returns:
        The value, with a real ``kappa`` as a float.

    Raises:
        TypeError: neither None, a string nor a real number.
        ValueError: an unknown rule name, or ``kappa <= 0`` (or not finite).
    """
    if skip_scale is None:
        return None
    if isinstance(skip_scale, str):
        if skip_scale != SQRT2:
            raise ValueError(f"skip_scale must be None, a kappa > 0 or {SQRT2!r}, got {skip_scale!r}")
        return skip_scale
    if isinstance(skip_scale, bool) or not isinstance(skip_scale, (int, float)):
        raise TypeError(f"skip_scale must be None, a real kappa > 0 or {SQRT2!r}, "
                        f"got {type(skip_scale).__name__}")
    return check_real("skip_scale (kappa)", skip_scale, 0.0, strict=True)


def skip_scales(n_skips: int, skip_scale: float | str | None) -> tuple[float, ...]:
    """The coefficient of each long skip, in the order the encoder makes the skips.

    Args:
        n_skips: S, the number of long skips.
        skip_scale: None (all 1), ``"sqrt2"`` (all ``1/sqrt(2)``) or ``kappa`` (CS: the
            ``i``-th skip, ``i = 0`` the outermost, times ``kappa ** i``).

    Returns:
        S coefficients.
    """
    check_int("n_skips", n_skips, 0)
    rule = check_skip_scale(skip_scale)
    if rule is None:
        return (1.0,) * n_skips
    if rule == SQRT2:
        return (2.0 ** -0.5,) * n_skips
    # CS: the skip made first by the encoder (full resolution) keeps 1, and each
    # skip closer to the bottleneck is shrunk by one more factor of kappa.
    return tuple(rule ** i for i in range(n_skips))


@dataclass
class TrainingTrace:
    """What :func:`trace_training` records.

    Attributes:
        grad_norms: the gradient norm before clipping at every optimizer step.
        probe_steps: the steps (counted from 1) after which the features were probed.
        feature_norms: the decoder's hidden-feature norm at each probe step
            (:func:`decoder_feature_norm`).
    """

    grad_norms: list[float] = field(default_factory=list)
    probe_steps: list[int] = field(default_factory=list)
    feature_norms: list[float] = field(default_factory=list)


def decoder_feature_norm(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                         y: torch.Tensor | None = None) -> float:
    """Root-mean-square of the decoder's hidden features, averaged over its up-path blocks.

    Each up-path residual block reads one long skip, so this is where unscaled skips pile up.

    Shapes:
        x: (B, C, H, W); t, y: (B,).
    """
    seen: list[torch.Tensor] = []
    handles = [block.register_forward_hook(lambda _m, _inp, out: seen.append(out))
               for blocks in model.up for block in blocks]
    try:
        with torch.no_grad():
            model(x, t, y)
    finally:
        for handle in handles:
            handle.remove()
    return sum(h.pow(2).mean().sqrt().item() for h in seen) / len(seen)


def sensitivity(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                delta_scale: float = 0.05, seed: int = 0) -> float:
    """Mean over the batch of ``|eps(x + delta) - eps(x)| / |delta|``, ``delta`` Gaussian.

    Args:
        model: the noise predictor ``eps(x, t, y)``.
        x, t, y: noisy inputs, their steps and labels.
        delta_scale: standard deviation of each pixel of ``delta``.
        seed: seeds ``delta``.

    Returns:
        The mean ratio of the output change to the input change (Euclidean norms per image).

    Shapes:
        x: (B, C, H, W); t, y: (B,).
    """
    check_real("delta_scale", delta_scale, 0.0, strict=True)
    gen = torch.Generator().manual_seed(seed)
    delta = (delta_scale * torch.randn(x.shape, generator=gen)).to(x.device)
    with torch.no_grad():
        change = model(x + delta, t, y) - model(x, t, y)
    ratio = change.flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)
    return ratio.mean().item()


def oscillation(values: list[float] | torch.Tensor, *, skip: int = 0) -> float:
    """How much a curve swings from one point to the next, relative to its size.

    ``mean_k |v_{k+1} - v_k| / mean_k |v_k|`` over ``values[skip:]``: 0 for a constant curve,
    and, unlike the range, not inflated by a steady drift.

    Args:
        values: the curve (at least two points after ``skip``).
        skip: leading points left out (a warm-up).
    """
    v = _curve("values", values, skip)
    return ((v[1:] - v[:-1]).abs().mean() / v.abs().mean()).item()


def relative_range(values: list[float] | torch.Tensor, *, skip: int = 0) -> float:
    """``(max - min) / median`` of ``values[skip:]``: the range of a curve in units of its level."""
    v = _curve("values", values, skip)
    return ((v.max() - v.min()) / v.median()).item()


def _curve(name: str, values: list[float] | torch.Tensor, skip: int) -> torch.Tensor:
    check_int("skip", skip, 0)
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() - skip < 2:
        raise ValueError(f"{name} needs at least 2 points after skip={skip}, got {v.numel()}")
    v = v[skip:]
    if not torch.isfinite(v).all():
        raise ValueError(f"{name} must be finite")
    if not (v.abs().sum() > 0):
        raise ValueError(f"{name} must not be all zero")
    return v


def steps_to_loss(history: list[tuple[int, float, float, float]], target: float) -> int | None:
    """The first recorded step whose evaluation loss is at most ``target`` (None if never).

    Args:
        history: :attr:`~labkit.diffusion.train.DDPMResult.history` rows
            ``(step, train loss, eval loss, seconds)``.
        target: the loss to reach.
    """
    check_real("target", target, 0.0, strict=True)
    for step, _train, ev, _sec in history:
        if ev <= target:
            return int(step)
    return None


def trace_training(cfg: UNetConfig, images: torch.Tensor, labels: torch.Tensor | None,
                   train_cfg: DiffusionTrainConfig, *, probe_every: int = 5, probe_batch: int = 64,
                   seed: int = 0, progress: bool = False, **kwargs) -> tuple[DDPMResult, TrainingTrace]:
    """:func:`~labkit.diffusion.train.train_ddpm`, recording gradient and feature norms.

    The probe batch (training images at random steps with fixed noise) is drawn once from
    ``seed`` and reused, so the feature norms move only because the weights do.

    Args:
        cfg, images, labels, train_cfg, seed, progress: as for ``train_ddpm``.
        probe_every: probe the features every this many steps (and after the first).
        probe_batch: images in the probe batch.
        **kwargs: passed on to ``train_ddpm`` (``schedule``, ``device``).

    Returns:
        ``(DDPMResult, TrainingTrace)``.
    """
    from .schedule import NoiseSchedule
    from .train import train_ddpm

    check_int("probe_every", probe_every, 1)
    check_int("probe_batch", probe_batch, 1)
    schedule = kwargs.get("schedule", NoiseSchedule())
    gen = torch.Generator().manual_seed(20_000 + seed)
    idx = torch.randint(0, images.shape[0], (probe_batch,), generator=gen)
    t = torch.randint(0, schedule.n_steps, (probe_batch,), generator=gen)
    noise = torch.randn((probe_batch, *images.shape[1:]), generator=gen)
    x = schedule.q_sample(images[idx], t, noise)
    y = labels[idx] if labels is not None and cfg.n_classes is not None else None
    trace = TrainingTrace()

    def observe(step: int, model: torch.nn.Module, grad_norm: float) -> None:
        trace.grad_norms.append(grad_norm)
        if step == 0 or (step + 1) % probe_every == 0:
            dev = next(model.parameters()).device
            trace.probe_steps.append(step + 1)
            trace.feature_norms.append(decoder_feature_norm(
                model, x.to(dev), t.to(dev), y.to(dev) if y is not None else None))

    result = train_ddpm(cfg, images, labels, train_cfg, seed=seed, progress=progress, on_step=observe, **kwargs)
    return result, trace


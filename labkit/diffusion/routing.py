"""Denoising Task Routing: a sliding window of active channels per denoising step.

*Denoising Task Routing for Diffusion Models* (Park et al., 2023, arXiv:2310.07138) treats the
denoising step ``t`` as a task and gives each task its own path through one network by
switching channels on and off, without adding a parameter. Its mask for step ``t`` over the
``C`` channels of a layer is a window of ``n_on = floor(beta C)`` ones
that starts at

    start(t) = round( (t / (T - 1)) ** alpha * (C - n_on) )

and zeros elsewhere. Two priors are built in: adjacent steps get nearly the same window
(their tasks have high affinity, as chapter 08's section 01 measures), and ``alpha > 1`` makes
the window creep at low ``t`` and race at high ``t``, so the noisy early steps of sampling get
windows that overlap little (more task-specific channels) while the near-clean steps share
theirs. ``beta`` is the fraction of channels each task uses (0.8 in the paper and its code),
``alpha = 4`` in the authors' code, whose step index runs over ``linspace(0, 1, T)``, that is
``t / (T - 1)``, so the last step's window ends at the last channel.

Which side of a block the mask gates, as in the authors' code: the *input* of the residual
branch. A block ``x + F(x)`` becomes ``x + F(m_t * x)``: the masked channels do not feed the
branch, but the identity path still carries every channel, and the branch's output is added to
all of them. In the tiny UNet a block that changes width has a 1 x 1 shortcut instead of the
identity, and the up path's blocks see the concatenation of the features and a long skip; the
mask is laid over whatever channels the block receives.

- :class:`TaskRouting` holds ``(beta, alpha, T)``; ``UNetConfig(task_routing=...)`` switches it
  on in every residual block of :class:`~labkit.diffusion.unet.TinyUNet`;
- :func:`window_start` and :func:`channel_mask` compute the masks from ``t`` (nothing is
  stored, so a routed model has exactly the parameters of a plain one);
- :func:`mask_table` is the whole ``(T, C)`` table, for plots and tests.

Shapes: B batch, C channels, T steps.
Section: chapter 08, "Denoising task routing".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit.validation import check_int, check_real

__all__ = ["TaskRouting", "active_channels", "channel_mask", "mask_table", "window_start"]


@dataclass(frozen=True)
class TaskRouting:
    """The DTR masks of a model: which channels step ``t`` uses.

    Attributes:
        beta: fraction of each layer's channels active at every step, in (0, 1]; 1 switches
            routing off (every channel always on).
        alpha: how the window moves with ``t``; > 0. ``alpha = 1`` slides it at constant speed,
            ``alpha > 1`` keeps it near the first channels for the low-noise steps.
        n_steps: T, the steps of the noise schedule the model is trained with.
    """

    beta: float = 0.8
    alpha: float = 4.0
    n_steps: int = 1000

    def __post_init__(self) -> None:
        beta = check_real("beta", self.beta)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], the fraction of active channels, got {self.beta}")
        check_real("alpha", self.alpha, 0.0, strict=True)
        check_int("n_steps", self.n_steps, 1)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "alpha", float(self.alpha))


def active_channels(channels: int, routing: TaskRouting) -> int:
    """``n_on = floor(beta C)``, at least one: how many of ``channels`` every step uses."""
    check_int("channels", channels, 1)
    # beta C computed in float can land a hair below an integer (0.7 * 10 = 6.9999...)
    return max(1, int(routing.beta * channels + 1e-9))


def _check_steps(t: torch.Tensor, routing: TaskRouting) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype.is_floating_point:
        raise ValueError(f"t must be a (B,) integer tensor of steps, got {getattr(t, 'shape', type(t))}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= routing.n_steps):
        raise ValueError(f"t must be in [0, {routing.n_steps}), got [{int(t.min())}, {int(t.max())}]")


# show: start window
def window_start(t: torch.Tensor, channels: int,
                 routing: TaskRouting) -> torch.Tensor:
    """First active channel of each step: ``round((t/(T-1))**alpha (C - n_on))``.

    Returns (B,) int64 in ``[0, C - n_on]``.
    """
    _check_steps(t, routing)
    n_on = active_channels(channels, routing)
    T = routing.n_steps
    frac = t.double() / max(T - 1, 1)  # linspace(0, 1, T) at step t
    # round half to even, as NumPy does in the authors' code
    return torch.round(frac ** routing.alpha * (channels - n_on)).long()


def channel_mask(t: torch.Tensor, channels: int,
                 routing: TaskRouting) -> torch.Tensor:
    """The mask m_t: ones on channels ``start(t) .. start(t) + n_on - 1``.

    Returns (B, C) float32 of zeros and ones, on ``t``'s device.
    """
    start = window_start(t, channels, routing)[:, None]  # (B, 1)
    c = torch.arange(channels, device=t.device)[None]  # (1, C)
    on = (c >= start) & (c < start + active_channels(channels, routing))
    return on.float()
# show: end window


def mask_table(channels: int, routing: TaskRouting) -> torch.Tensor:
    """Every step's mask: (T, C) float32, row ``t`` is :func:`channel_mask` of step ``t``."""
    return channel_mask(torch.arange(routing.n_steps), channels, routing)

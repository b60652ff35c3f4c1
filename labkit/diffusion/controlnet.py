"""A ControlNet-style add-on computed beside the base encoder (SwiftDiffusion's parallel add-ons).

Paper: *SwiftDiffusion: Efficient Diffusion Model Serving with Add-on Modules* (Li et al., 2024,
arXiv:2407.02031), which runs ControlNets on separate devices in parallel with the base model.

The add-on (:class:`ControlAddon`; Zhang, Rao and Agrawala, 2023, arXiv:2302.05543) copies the
embedding, ``conv_in``, the down path and the middle block, adds the control image through a
convolution, and hands one residual per long skip (and one for the bottleneck) through 1 x 1
"zero" convolutions. It needs only ``x_t``, so it can run beside the base encoder
(:func:`controlled_noise` with an executor): the step then costs ``max(base encoder, add-on) +
decoder`` instead of their sum.

What the miniature leaves out: a trained ControlNet (ours is untrained: the timing and the
exactness of the parallel schedule are what is measured) and separate GPUs (threads of one CPU
process stand in for them, and share its interpreter lock).

Shapes: B batch, C channels, H x W image, S steps.
Section: chapter 09, "Serving: add-ons and patch parallelism".
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import torch
from torch import nn

from .sampling import ddim_loop, sample_labels
from .schedule import NoiseSchedule
from .unet import Features, TinyUNet

__all__ = ['ControlAddon', 'controlled_noise', 'sample_controlled']


# --- ControlNet-style add-on ---------------------------------------------------------------------


class ControlAddon(nn.Module):
    """A copy of the base encoder and middle block that turns a control image into skip residuals.

    Built from a base :class:`TinyUNet`: the embedding, ``conv_in``, the down path and the middle
    block are copied with their weights (ControlNet starts its trainable copy from the base);
    the control image enters through ``hint_in`` (a 3 x 3 convolution added after ``conv_in``),
    and each long skip and the bottleneck leave through a 1 x 1 convolution. ControlNet starts
    those at zero, so the add-on starts as a no-op; ``zero_init=False`` draws them small and
    random instead, so an untrained add-on visibly changes the output.

    Args:
        base: the model to copy.
        seed: seeds ``hint_in`` and the 1 x 1 convolutions.
        zero_init: ControlNet's zero convolutions.
    """

    def __init__(self, base: TinyUNet, *, seed: int = 0, zero_init: bool = True) -> None:
        super().__init__()
        if not isinstance(base, TinyUNet):
            raise TypeError(f"base must be a TinyUNet, got {type(base).__name__}")
        self.encoder = copy.deepcopy(base)
        del self.encoder.up, self.encoder.upsample, self.encoder.norm_out, self.encoder.conv_out
        cfg = base.cfg
        self.hint_in = nn.Conv2d(cfg.in_channels, cfg.base_channels, 3, padding=1)
        with torch.no_grad():
            feats = base.encode(torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size),
                                torch.zeros(1, dtype=torch.long),
                                torch.zeros(1, dtype=torch.long) if cfg.n_classes is not None else None)
        self.zero = nn.ModuleList([nn.Conv2d(s.shape[1], s.shape[1], 1) for s in feats.skips])
        self.zero_h = nn.Conv2d(feats.h.shape[1], feats.h.shape[1], 1)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in [*self.hint_in.named_parameters(), *self.zero.named_parameters(),
                            *self.zero_h.named_parameters()]:
                if zero_init and "hint" not in name:
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, hint: torch.Tensor) -> Features:
        """Residuals for the base model's skips and bottleneck, ``(h, skips, emb)`` like :class:`Features`.

        Shapes: x, hint (B, C, H, W); t, y (B,).
        """
        if hint.shape != x.shape:
            raise ValueError(f"hint must have x's shape {tuple(x.shape)}, got {tuple(hint.shape)}")
        enc = self.encoder
        emb = enc.embed(t, y)
        h = enc.conv_in(x) + self.hint_in(hint)  # the control image enters here
        skips = [h]
        for level, blocks in enumerate(enc.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(enc.downsample):
                h = enc.downsample[level](h)
                skips.append(h)
        for block in enc.mid:
            h = block(h, emb)
        return Features(h=self.zero_h(h), skips=[z(s) for z, s in zip(self.zero, skips)], emb=emb)


Event = tuple[str, str, float, float]  # (lane, what, start s, end s)
_Out = TypeVar("_Out")


def controlled_noise(model: TinyUNet, addon: ControlAddon, x: torch.Tensor, t: torch.Tensor,
                     y: torch.Tensor | None, hint: torch.Tensor, *, executor: Executor | None = None,
                     events: list[Event] | None = None, clock: float = 0.0) -> torch.Tensor:
    """The base model's noise prediction with the add-on's residuals added to its skips.

    Serial without ``executor``: base encoder, then add-on, then decoder. With an executor the
    add-on is submitted first and runs while this thread computes the base encoder (the two
    only share ``x_t``); the decoder waits for both. The results are identical.

    Args:
        model: the base UNet.
        addon: the ControlNet-style add-on.
        x: (B, C, H, W); t, y: (B,); hint: (B, C, H, W) control image.
        executor: e.g. a one-worker ``ThreadPoolExecutor`` (the second "device").
        events: if given, ``(lane, what, start, end)`` is appended for each phase (seconds since ``clock``).
        clock: ``time.perf_counter()`` origin of the event times.

    Returns:
        eps, (B, C, H, W).
    """
    def timed(lane: str, what: str, fn: Callable[..., _Out], *args: object) -> _Out:
        start = time.perf_counter()
        out = fn(*args)
        if events is not None:
            events.append((lane, what, start - clock, time.perf_counter() - clock))
        return out

    if executor is not None:
        future = executor.submit(timed, "add-on", "add-on encoder", addon, x, t, y, hint)
        feats = timed("base", "base encoder", model.encode, x, t, y)
        extra = future.result()
    else:
        feats = timed("base", "base encoder", model.encode, x, t, y)
        extra = timed("base", "add-on encoder", addon, x, t, y, hint)
    merged = Features(h=feats.h + extra.h, skips=[s + e for s, e in zip(feats.skips, extra.skips)], emb=feats.emb)
    return timed("base", "decoder", model.decode, merged)


@torch.no_grad()
def sample_controlled(model: TinyUNet, schedule: NoiseSchedule, addon: ControlAddon, *, hint: torch.Tensor,
                      x_T: torch.Tensor, steps: int = 20, labels: torch.Tensor | None = None,
                      executor: Executor | None = None) -> tuple[torch.Tensor, list[Event]]:
    """DDIM sampling with the add-on, serial or with the add-on in parallel; returns the timeline too.

    Args:
        model, schedule: the base model and its schedule.
        addon: the add-on.
        hint: (B, C, H, W) control images.
        x_T: (B, C, H, W) starting noise.
        steps: S.
        labels: (B,) classes (default 0, 1, 2, ...).
        executor: as for :func:`controlled_noise`.

    Returns:
        ``(images in [-1, 1], events)``; event times in seconds from the start of sampling.
    """
    model.eval()
    addon.eval()
    y = sample_labels(model, labels, x_T.shape[0])
    events: list[Event] = []
    clock = time.perf_counter()

    def eps_fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return controlled_noise(model, addon, x, t, y, hint, executor=executor, events=events, clock=clock)

    return ddim_loop(eps_fn, x_T, schedule, steps), events

"""Encoder propagation: reuse the UNet encoder's features across sampling steps (Faster Diffusion).

Faster Diffusion: Rethinking the Role of UNet Encoder in Diffusion Models (Li et al., 2023,
arXiv:2312.09608) observes that, along a sampling run, the encoder's features move less from
one step to the next than the decoder's (measured here by
:func:`labkit.diffusion.profiling.feature_change`). So at most steps the encoder can be
skipped: at a few *key* steps the whole UNet runs and the encoder's outputs (the bottleneck
input ``h`` and the long skips) are kept; at the non-key steps in between, only the decoder
runs, on the kept features and the *current* step's embedding ``model.embed(t, y)``.

Because a non-key step's decoder input is the kept features plus a timestep embedding, and
not the current ``x_t``, the decoders of a key step and of the non-key steps that follow it
can all run at once, as one batch (the paper's parallel decoding): ``G`` steps of ``B`` images
become one decoder call on ``G * B``. The DDIM updates stay sequential (each needs the previous
``x_t``) but they are a few elementwise operations. The result equals the sequential
propagation up to floating-point rounding.

Prior noise injection: reusing features smooths away fine texture, so at the later steps
(``t < injection_below``, by default the second half of the chain) a small multiple of the
starting noise is added back, ``x_t <- x_t + strength * x_T``, before each DDIM update. The
paper (and its code) uses strength 0.003 with Stable Diffusion's 50 DDIM steps;
:data:`PAPER_INJECTION` holds that value. Here it is applied after the network call of a step
and before its update, so that the parallel and sequential samplers agree.

Key steps are indices into the sampler's S steps (0 = the noisiest, first step), strictly
increasing, starting at 0 (nothing can be reused before the first step). Two presets:
:func:`uniform_key_steps` (every ``n``-th step) and :func:`paper_key_steps` (the paper's
non-uniform choice for 50 steps, ``0, 1, 2, 3, 5, 10, 15, 25, 35``: dense at the start, where
the image's layout forms, sparse later; rescaled to S steps).

The cost model is Amdahl's law: if the skipped part (encoder minus embedding) takes a share
``f`` of a step and a fraction ``k`` of the steps skip it, sampling gets at most
``1 / (1 - f k)`` faster (:func:`amdahl_speedup`).

What the miniature leaves out: classifier-free guidance (the paper batches conditional and
unconditional halves), text, video and ControlNet conditioning, DeepFloyd-IF's cascade, GPU
concurrency (on a CPU a batched decoder saves per-call overhead, not latency), and tuning the
key steps per model.

Shapes: B images, C channels, H x W image, S sampling steps, G steps sharing one key step.
Section: chapter 09, "Faster Diffusion: encoder propagation".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from labkit.validation import check_int

from .sampling import ddim_loop, start_state
from .schedule import NoiseSchedule, ddim_timesteps
from .unet import Features, TinyUNet

__all__ = ["PAPER_INJECTION", "PAPER_KEY_STEPS_50", "amdahl_speedup", "check_key_steps", "key_groups",
           "paper_key_steps", "sample_propagated", "skipped_fraction", "uniform_key_steps"]

#: Strength of prior noise injection in the paper's code for Stable Diffusion (added at t < T / 2).
PAPER_INJECTION = 0.003
#: The paper's key steps for 50 DDIM steps (indices, noisiest first).
PAPER_KEY_STEPS_50 = (0, 1, 2, 3, 5, 10, 15, 25, 35)


def check_key_steps(key_steps: Sequence[int], steps: int) -> tuple[int, ...]:
    """Validate key steps for a sampler of ``steps`` steps and return them as a tuple.

    Args:
        key_steps: step indices in [0, steps), strictly increasing, the first 0.
        steps: S.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: empty, out of range, not strictly increasing, or not starting at 0.
    """
    S = check_int("steps", steps, 1)
    if isinstance(key_steps, (str, bytes)) or not isinstance(key_steps, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"key_steps must be a sequence of ints, got {type(key_steps).__name__}")
    items = key_steps.tolist() if isinstance(key_steps, (np.ndarray, torch.Tensor)) else list(key_steps)
    keys = tuple(check_int(f"key_steps[{i}]", k, 0) for i, k in enumerate(items))
    if not keys:
        raise ValueError("key_steps must name at least one step (step 0)")
    if max(keys) >= S:
        raise ValueError(f"key_steps must lie in [0, {S}) for steps={S}, got {keys}")
    if any(b <= a for a, b in zip(keys, keys[1:])):
        raise ValueError(f"key_steps must be strictly increasing, got {keys}")
    if keys[0] != 0:
        raise ValueError(f"key_steps must start at 0 (the first step has no features to reuse), got {keys}")
    return keys


def uniform_key_steps(steps: int, *, every: int) -> tuple[int, ...]:
    """Every ``every``-th step is a key step: ``0, every, 2 every, ...`` below S.

    ``every = 1`` is ordinary sampling; ``every = S`` runs the encoder once.
    """
    S = check_int("steps", steps, 1)
    n = check_int("every", every, 1, S)
    return tuple(range(0, S, n))


def paper_key_steps(steps: int) -> tuple[int, ...]:
    """The paper's non-uniform key steps for 50 DDIM steps, rescaled to S steps.

    Each of :data:`PAPER_KEY_STEPS_50` becomes ``round(k * S / 50)`` (duplicates dropped), so
    S = 50 gives the paper's 9 key steps (82% of the steps skip the encoder) and S = 20 gives
    ``0, 1, 2, 4, 6, 10, 14``.
    """
    S = check_int("steps", steps, 1)
    return tuple(sorted({min(int(k * S / 50 + 0.5), S - 1) for k in PAPER_KEY_STEPS_50}))


def key_groups(key_steps: Sequence[int], steps: int) -> list[tuple[int, ...]]:
    """Split the S steps into runs that share one key step's encoder features.

    Returns:
        One tuple per key step: the key step and the non-key steps after it, e.g. key steps
        ``(0, 3)`` of 5 steps give ``[(0, 1, 2), (3, 4)]``.
    """
    keys = check_key_steps(key_steps, steps)
    ends = keys[1:] + (int(steps),)
    return [tuple(range(a, b)) for a, b in zip(keys, ends)]


def skipped_fraction(key_steps: Sequence[int], steps: int) -> float:
    """Fraction of the S steps that skip the encoder: ``1 - len(key_steps) / S``."""
    return 1.0 - len(check_key_steps(key_steps, steps)) / steps


def amdahl_speedup(share: float, skipped: float) -> float:
    """Amdahl's bound on the speedup of skipping a part of share ``share`` at a fraction ``skipped`` of the steps.

    ``1 / (1 - share * skipped)``: the rest of each step (decoder, embedding, update) still runs.

    Args:
        share: f, fraction of a step's time in the skipped part, in [0, 1).
        skipped: k, fraction of steps that skip it, in [0, 1].
    """
    for name, v, hi_open in (("share", share, True), ("skipped", skipped, False)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
        if not (0.0 <= v < 1.0 if hi_open else 0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be in [0, 1{')' if hi_open else ']'}, got {v}")
    return 1.0 / (1.0 - share * skipped)


@torch.no_grad()
def sample_propagated(model: TinyUNet, schedule: NoiseSchedule, *, n: int, steps: int = 50,
                      key_steps: Sequence[int] | None = None, parallel: bool = False,
                      injection: float = 0.0, injection_below: int | None = None, eta: float = 0.0,
                      labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      x_T: torch.Tensor | None = None, clip_x0: bool = False) -> torch.Tensor:
    """DDIM sampling with encoder propagation, parallel decoding and prior noise injection (Faster Diffusion).

    With ``key_steps = range(steps)``, ``parallel = False`` and no injection this is
    :func:`labkit.diffusion.sample`, call for call, and gives the same images.

    Args:
        model: the UNet (put in eval mode).
        schedule: its noise schedule.
        n: B images.
        steps: S DDIM steps.
        key_steps: indices of the steps that run the encoder (:func:`check_key_steps`); default
            :func:`paper_key_steps`.
        parallel: run the decoders of a key step and its following non-key steps as one batch
            (the paper's parallel decoding); same result up to rounding.
        injection: prior noise injection strength (0 = off; the paper uses
            :data:`PAPER_INJECTION` = 0.003).
        injection_below: inject at steps with ``t < injection_below`` (default T // 2, as the
            paper's code).
        eta, labels, generator, x_T, clip_x0: as for :func:`labkit.diffusion.sample`; random
            numbers are drawn in the same order, so the same generator gives the same noise.

    Returns:
        Images in [-1, 1], (B, C, H, W).
    """
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    check_int("n", n, 1)
    T = schedule.n_steps
    ts = ddim_timesteps(T, steps).tolist()  # (S,) noisiest first; raises on a bad `steps`
    groups = key_groups(paper_key_steps(steps) if key_steps is None else key_steps, steps)
    if not isinstance(parallel, bool):
        raise TypeError(f"parallel must be a bool, got {type(parallel).__name__}")
    if isinstance(injection, bool) or not isinstance(injection, (int, float)) or not 0.0 <= injection < 1.0:
        raise ValueError(f"injection must be a strength in [0, 1), got {injection!r}")
    below = T // 2 if injection_below is None else check_int("injection_below", injection_below, 0, T)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"eta must be a float >= 0, got {eta!r}")
    device = next(model.parameters()).device
    model.eval()
    x0_noise, y = start_state(model, n, x_T=x_T, labels=labels, generator=generator, device=device)
    group_of = {i: group for group in groups for i in group}
    feats: Features | None = None  # the current group's encoder features
    eps_group: list[torch.Tensor] = []  # with parallel decoding, the group's noise, decoded at once

    # show: start propagate
    def eps_fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        nonlocal feats, eps_group
        group = group_of[i]
        j = group.index(i)
        if j == 0:  # the key step: embedding + down path, kept for the group
            feats = model.encode(x, t, y)
            eps_group = []
            if parallel and len(group) > 1:
                G = len(group)
                t_all = torch.tensor([ts[k] for k in group], device=device)
                t_all = t_all.repeat_interleave(n)  # (G*B,)
                y_all = None if y is None else y.repeat(G)
                emb = model.embed(t_all, y_all)  # (G*B, E)
                wide = Features(h=feats.h.repeat(G, 1, 1, 1),
                                skips=[s.repeat(G, 1, 1, 1) for s in feats.skips],
                                emb=emb)
                # one decoder call for the G steps: G x (B, C, H, W)
                eps_group = list(model.decode(wide).split(n))
        if eps_group:
            return eps_group[j]
        if j == 0:
            return model.decode(feats)  # an ordinary step
        # propagation: old encoder features, this step's embedding
        return model.decode(feats, model.embed(t, y))
    # show: end propagate

    def inject(i: int, t: int, x: torch.Tensor) -> torch.Tensor:
        return x + injection * x0_noise if injection > 0 and t < below else x  # prior noise injection

    return ddim_loop(eps_fn, x0_noise, schedule, steps, before_update=inject, eta=eta, generator=generator,
                     clip_x0=clip_x0)

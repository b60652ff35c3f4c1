"""Removing UNet blocks: feature inheritance, an additive pruning criterion and normalised distillation.

Two papers shrink a diffusion UNet by taking whole blocks out of it.

*A-SDM: Accelerating Stable Diffusion through Model Assembly and Feature Inheritance Strategies*
skips computation without retraining: a skipped block hands its *input* on unchanged, so the next
block inherits the features the skipped one would have refined ("feature inheritance"), and the
skip can be restricted to some sampling steps. In a residual block ``x + f(x)`` that is simply
dropping ``f``, which is what :attr:`labkit.diffusion.ResBlock.skip` does; :func:`skipped` sets it
for a set of blocks and :func:`sample_inheriting` samples with a set skipped at chosen steps.

*LAPTOP-Diff: Layer Pruning and Normalized Distillation for Compressing Diffusion Models*
replaces hand-picked removals with a one-shot criterion. The damage of removing a block alone is
its *output loss*, the mean squared change of the predicted noise over a calibration set
(:func:`output_losses`, :func:`single_effects`). The paper's observation is that these losses
are nearly *additive*: the loss of removing a set is close to the sum of its members' single
losses, so the best set for a pruning budget is found without trying sets:
minimise the summed single losses subject to the budget (:func:`choose_removal`, an exact search
here). The pruned network is then retrained by distillation from the full one, on its output and
on intermediate features, with each feature term divided by the teacher feature's mean square so
that the few large-valued layers do not dominate the sum (:func:`distill_pruned`).

What the miniature leaves out: attention and cross-attention layers (the paper prunes those too),
width-changing blocks and the up path (a block that eats a long skip cannot become the identity
here, so 7 of the 16 blocks of ``UNetConfig(n_res=3)`` are prunable), A-SDM's model assembly,
multi-expert convolutions and UNet switching, and text conditioning; the pruning budget is
counted in multiply-adds, where the paper counts parameters.

Shapes: B batch, N calibration points, C channels, H x W image, K prunable blocks.
Section: chapter 09, "Feature inheritance and layer pruning".
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from labkit.runtime import seed_everything
from labkit.validation import check_int

from .sampling import ddim_loop, start_state
from .schedule import NoiseSchedule, ddim_timesteps
from .unet import TinyUNet

__all__ = ["CalibrationSet", "DistillConfig", "DistillResult", "block_macs", "calibration_set", "choose_removal",
           "distill_pruned", "feature_gaps", "forward_macs", "output_losses", "prunable_blocks", "pruned_copy",
           "random_removal", "sample_inheriting", "single_effects", "skipped", "stage_blocks"]


def _check_model(model: object) -> TinyUNet:
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    return model


def _blocks_by_name(model: TinyUNet, names: Sequence[str]) -> list[nn.Module]:
    table = dict(model.res_blocks())
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of block names, not the string {names!r}")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown blocks {unknown}; the model's blocks are {list(table)}")
    return [table[n] for n in names]


def prunable_blocks(model: TinyUNet) -> list[str]:
    """Names of the residual blocks that can become the identity (same width in and out), in execution order."""
    return [name for name, block in _check_model(model).res_blocks() if block.can_skip]


@contextmanager
def skipped(model: TinyUNet, names: Sequence[str]) -> Iterator[TinyUNet]:
    """Temporarily remove blocks: inside the ``with``, each named block returns its input (A-SDM's feature inheritance).

    The flags the blocks had before are restored on exit, also after an exception.

    Args:
        model: the network (modified in place while inside).
        names: blocks to skip, as named by :meth:`TinyUNet.res_blocks`.

    Raises:
        ValueError: an unknown name, or a block that changes width.
    """
    blocks = _blocks_by_name(_check_model(model), names)
    before = {name: block.skip for name, block in model.res_blocks()}
    try:
        for block in blocks:
            block.skip = True
        yield model
    finally:
        for name, block in model.res_blocks():
            block.skip = before[name]


def pruned_copy(model: TinyUNet, names: Sequence[str]) -> TinyUNet:
    """A deep copy of ``model`` with the named blocks permanently skipped (the student before retraining)."""
    student = copy.deepcopy(_check_model(model))
    for block in _blocks_by_name(student, names):
        block.skip = True
    return student


@torch.no_grad()
def forward_macs(model: TinyUNet, *, skip: Sequence[str] = ()) -> int:
    """Multiply-adds of one network evaluation for one image, counting convolutions and linear layers.

    A convolution costs ``out.numel() * in_channels / groups * kh * kw``, a linear layer
    ``out.numel() * in_features``; norms and activations are ignored. Skipped blocks cost nothing.
    """
    cfg = _check_model(model).cfg
    total = [0]

    def count(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += out.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total[0] += out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=next(model.parameters()).device)
        t = torch.zeros(1, dtype=torch.long, device=x.device)
        y = torch.zeros(1, dtype=torch.long, device=x.device) if cfg.n_classes is not None else None
        with skipped(model, skip):
            model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def block_macs(model: TinyUNet) -> dict[str, int]:
    """Multiply-adds per image that removing each prunable block saves alone: ``forward_macs()`` minus the pruned one's.
    """
    full = forward_macs(model)
    return {name: full - forward_macs(model, skip=[name]) for name in prunable_blocks(model)}


class CalibrationSet(NamedTuple):
    """Where the output loss is measured: ``x_t`` (N, C, H, W) from ``q_sample``, ``t`` (N,), ``y`` (N,) or None."""

    x_t: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None


def calibration_set(images: torch.Tensor, labels: torch.Tensor | None, schedule: NoiseSchedule, *, n: int,
                    seed: int = 0) -> CalibrationSet:
    """``n`` training images (drawn with replacement) noised to uniformly random steps (DDPM eq. 4).

    Args:
        images, labels: clean images in [-1, 1], (M, C, H, W), and their classes (M,) or None.
        schedule: the forward process; n: N, calibration points; seed: seeds the draws.
    """
    check_int("n", n, 1)
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be (M, C, H, W) with M >= 1, got {tuple(images.shape)}")
    if labels is not None and labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be (M,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (n,), generator=g)
    t = torch.randint(0, schedule.n_steps, (n,), generator=g)
    noise = torch.randn((n, *images.shape[1:]), generator=g)
    x_t = schedule.q_sample(images[idx].float(), t, noise)
    return CalibrationSet(x_t=x_t, t=t, y=labels[idx] if labels is not None else None)


@torch.no_grad()
def _eps(model: TinyUNet, calib: CalibrationSet, batch_size: int = 512) -> torch.Tensor:
    dev = next(model.parameters()).device
    out = []
    for i in range(0, calib.t.shape[0], batch_size):
        y = calib.y[i:i + batch_size].to(dev) if calib.y is not None else None
        out.append(model(calib.x_t[i:i + batch_size].to(dev), calib.t[i:i + batch_size].to(dev), y).cpu())
    return torch.cat(out)  # (N, C, H, W)


def output_losses(model: TinyUNet, calib: CalibrationSet,
                  subsets: Sequence[Sequence[str]]) -> list[float]:
    """LAPTOP-Diff's output loss of removing each set ``S``.

    The mean of ``(eps_{without S} - eps_full)^2`` over ``calib``.

    Args:
        model: the full network (left as it was); calib: the calibration set.
        subsets: sets of block names (an empty set has loss 0).

    Returns:
        One mean squared difference per pixel for each set, in order.
    """
    # (N, C, H, W), computed once for all sets
    full = _eps(_check_model(model), calib)
    losses = []
    for subset in subsets:
        with skipped(model, list(subset)):
            losses.append(F.mse_loss(_eps(model, calib), full).item())
    return losses


def single_effects(model: TinyUNet, calib: CalibrationSet, *, names: Sequence[str] | None = None) -> dict[str, float]:
    """The one-shot criterion: the output loss of removing each block alone.

    LAPTOP-Diff predicts the loss of removing a set ``S`` as ``sum_{b in S} effect[b]`` (its
    additivity property), so these K numbers stand in for all ``2^K`` sets.

    Args:
        model, calib: as for :func:`output_losses`.
        names: blocks to score (default: :func:`prunable_blocks`).

    Returns:
        block name -> output loss, in the order of ``names``.
    """
    names = prunable_blocks(model) if names is None else list(names)
    return dict(zip(names, output_losses(model, calib, [[n] for n in names])))


def choose_removal(effects: Mapping[str, float], costs: Mapping[str, float], *, target: float) -> tuple[str, ...]:
    """The set whose removal saves at least ``target`` cost with the smallest summed effect (exact search).

    Minimises ``sum_{b in S} effects[b]`` subject to ``sum_{b in S} costs[b] >= target`` over all
    ``2^K`` subsets (K <= 20); ties go to the cheaper set, then to the earlier one in
    ``effects``' order. With equal costs this is the ``k`` blocks of smallest effect.

    Args:
        effects: block -> predicted damage (:func:`single_effects`); costs: block -> what removing
            it saves (e.g. :func:`block_macs`), same keys; target: cost to remove, in (0, total].

    Returns:
        The chosen block names, in ``effects``' order.
    """
    names = list(effects)
    if set(names) != set(costs):
        raise ValueError(f"effects and costs must name the same blocks, got {sorted(effects)} and {sorted(costs)}")
    if not 1 <= len(names) <= 20:
        raise ValueError(f"exact search needs 1 to 20 blocks, got {len(names)}")
    if any(costs[n] < 0 for n in names):
        raise ValueError("costs must be >= 0")
    total = sum(costs[n] for n in names)
    if not 0 < target <= total:
        raise ValueError(f"target must be in (0, {total}] (the total cost), got {target}")
    best: tuple[float, float] | None = None
    chosen: tuple[str, ...] = ()
    for r in range(1, len(names) + 1):
        for subset in itertools.combinations(names, r):  # combinations keep the input order
            cost = sum(costs[n] for n in subset)
            if cost < target:
                continue
            key = (sum(effects[n] for n in subset), cost)
            if best is None or key < best:
                best, chosen = key, subset
    return chosen


def random_removal(costs: Mapping[str, float], *, target: float, generator: torch.Generator) -> tuple[str, ...]:
    """A random set: blocks in random order, added until they save at least ``target`` (the random baseline).

    Returns:
        Block names in ``costs``' order.
    """
    names = list(costs)
    total = sum(costs.values())
    if not names or not 0 < target <= total:
        raise ValueError(f"target must be in (0, {total}] (the total cost) and costs non-empty, got {target}")
    picked: set[str] = set()
    spent = 0.0
    for i in torch.randperm(len(names), generator=generator).tolist():
        picked.add(names[i])
        spent += costs[names[i]]
        if spent >= target:
            break
    return tuple(n for n in names if n in picked)


@torch.no_grad()
def sample_inheriting(model: TinyUNet, schedule: NoiseSchedule, *, skip: Sequence[str], n: int, steps: int,
                      x_T: torch.Tensor, labels: torch.Tensor | None = None,
                      active: Sequence[bool] | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling with ``skip`` removed at the steps where ``active`` is True (A-SDM).

    A-SDM's time-step-level feature inheritance: the skipped blocks pass their input on at the
    chosen steps only, and run normally at the others.

    Args:
        model, schedule: the network and its schedule.
        skip: blocks whose features are inherited.
        n: B images; ``x_T`` their starting noise, (B, C, H, W).
        steps: S DDIM steps.
        labels: (B,) classes (default ``0, 1, ..., 9, 0, ...`` for a conditional model).
        active: S flags, noisiest step first (default: all True).

    Returns:
        Images in [-1, 1], (B, C, H, W).
    """
    _check_model(model)
    check_int("n", n, 1)
    S = len(ddim_timesteps(schedule.n_steps, steps))  # raises on a bad `steps`
    active = [True] * S if active is None else list(active)
    if len(active) != S or not all(isinstance(a, bool) for a in active):
        raise ValueError(f"active must be {S} bools (one per step), got {active!r}")
    if not isinstance(x_T, torch.Tensor):
        raise TypeError(f"x_T must be a tensor (the starting noise), got {type(x_T).__name__}")
    x_T, y = start_state(model, n, x_T=x_T, labels=labels, generator=None, device=next(model.parameters()).device)
    model.eval()

    def eps_fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        with skipped(model, skip if active[i] else ()):
            return model(x, t, y)

    return ddim_loop(eps_fn, x_T, schedule, steps)


def stage_blocks(model: TinyUNet) -> list[str]:
    """The last block of every stage (each down level, the middle, each up level): where features are distilled."""
    _check_model(model)
    down = [f"down.{lv}.{len(b) - 1}" for lv, b in enumerate(model.down)]
    up = [f"up.{lv}.{len(model.up[lv]) - 1}" for lv in reversed(range(len(model.up)))]
    return down + [f"mid.{len(model.mid) - 1}"] + up


def _run_with_features(model: TinyUNet, names: Sequence[str], x: torch.Tensor, t: torch.Tensor,
                       y: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    feats: dict[str, torch.Tensor] = {}
    table = dict(model.res_blocks())
    hooks = [table[n].register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o)) for n in names]
    try:
        eps = model(x, t, y)
    finally:
        for h in hooks:
            h.remove()
    return eps, [feats[n] for n in names]


@torch.no_grad()
def feature_gaps(teacher: TinyUNet, student: TinyUNet, calib: CalibrationSet) -> dict[str, tuple[float, float]]:
    """Per stage: the plain feature loss ``mean (F_s - F_t)^2`` and the normalised one (divided by ``mean F_t^2``).

    Shows the imbalance that LAPTOP-Diff's normalisation is meant to remove.
    """
    names = stage_blocks(_check_model(teacher))
    dev = next(teacher.parameters()).device
    x, t, y = calib.x_t.to(dev), calib.t.to(dev), calib.y.to(dev) if calib.y is not None else None
    _, ft = _run_with_features(teacher.eval(), names, x, t, y)
    _, fs = _run_with_features(_check_model(student).eval(), names, x, t, y)
    return {n: (F.mse_loss(a, b).item(), (F.mse_loss(a, b) / b.square().mean()).item())
            for n, a, b in zip(names, fs, ft)}


@dataclass(frozen=True)
class DistillConfig:
    """Recipe of the retraining after pruning.

    Attributes:
        steps: optimiser steps; batch_size: B; lr: peak Adam learning rate (cosine decay to 5 %).
        task_weight: weight of the DDPM loss on the true noise.
        output_weight: weight of the output distillation ``mean (eps_s - eps_t)^2``.
        feature_weight: weight of the summed stage-feature terms (0: output-only distillation).
        normalise: divide each feature term by the teacher feature's mean square (LAPTOP-Diff).
    """

    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    task_weight: float = 1.0
    output_weight: float = 1.0
    feature_weight: float = 1.0
    normalise: bool = True

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("task_weight", "output_weight", "feature_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class DistillResult:
    """The retrained student and its curve: rows (step, task loss, output loss, feature loss)."""

    student: TinyUNet
    history: list[tuple[int, float, float, float]] = field(default_factory=list)


def distill_pruned(teacher: TinyUNet, skip: Sequence[str], images: torch.Tensor, labels: torch.Tensor | None, *,
                   schedule: NoiseSchedule, cfg: DistillConfig = DistillConfig(), seed: int = 0,
                   progress: bool = False) -> DistillResult:
    """Prune ``skip`` from a copy of ``teacher`` and retrain it by distillation (LAPTOP-Diff's retraining).

    Loss per batch, with ``F^l`` the output of stage ``l`` (:func:`stage_blocks`)::

        task_weight * |eps_s - eps|^2 + output_weight * |eps_s - eps_t|^2
            + feature_weight * sum_l |F_s^l - F_t^l|^2 / (mean (F_t^l)^2 if normalise else 1)

    (means over elements). The normalisation is LAPTOP-Diff's cure for the imbalance of plain
    feature distillation.

    Args:
        teacher: the full network (left unchanged); skip: blocks removed from the student.
        images, labels: training data, (M, C, H, W) in [-1, 1] and (M,) or None.
        schedule: the forward process; cfg: the recipe; seed: seeds batches, steps and noise.
        progress: show a tqdm bar.

    Returns:
        :class:`DistillResult`, student in eval mode.
    """
    if not isinstance(cfg, DistillConfig):
        raise TypeError(f"cfg must be a DistillConfig, got {type(cfg).__name__}")
    if images.dim() != 4 or (labels is not None and labels.shape != (images.shape[0],)):
        raise ValueError(f"images must be (M, C, H, W) and labels (M,), got {tuple(images.shape)} and "
                         f"{None if labels is None else tuple(labels.shape)}")
    student = pruned_copy(teacher, skip).train()
    teacher.eval()
    names = stage_blocks(teacher)
    gen = seed_everything(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    dev = next(teacher.parameters()).device
    data = images.to(dev)
    ys = labels.to(dev) if labels is not None else None
    result = DistillResult(student=student)
    for step in tqdm(range(cfg.steps), desc="distil", disable=not progress, leave=False):
        for group in opt.param_groups:  # cosine decay to 5 % of the peak
            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen).to(dev)
        t = torch.randint(0, schedule.n_steps, (cfg.batch_size,), generator=gen).to(dev)
        noise = torch.randn((cfg.batch_size, *data.shape[1:]), generator=gen).to(dev)
        x_t = schedule.q_sample(data[idx], t, noise)
        y = ys[idx] if ys is not None else None
        with torch.no_grad():
            eps_t, feats_t = _run_with_features(teacher, names, x_t, t, y)
        eps_s, feats_s = _run_with_features(student, names, x_t, t, y)
        task = F.mse_loss(eps_s, noise)
        out = F.mse_loss(eps_s, eps_t)
        feat = eps_s.new_zeros(())
        for fs, ft in zip(feats_s, feats_t):
            term = F.mse_loss(fs, ft)
            feat = feat + (term / ft.square().mean().clamp_min(1e-8) if cfg.normalise else term)
        loss = cfg.task_weight * task + cfg.output_weight * out + cfg.feature_weight * feat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        result.history.append((step + 1, task.item(), out.item(), feat.item()))
    student.eval()
    return result

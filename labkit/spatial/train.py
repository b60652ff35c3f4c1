"""Training and evaluation loops shared by the spatial chapter's models.

Kept apart from the mechanisms (:mod:`~labkit.spatial.scnn`, :mod:`~labkit.spatial.ponita`) so
that those modules hold the maths only. Plain Adam on full tensors: the miniatures fit in memory.

Section: chapter 03, "Spatial CNN: messages between rows" and "Position-orientation space"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from labkit.data.synthetic import make_generator
from labkit.validation import check_int, check_real

from .nbody import ChargedSystems
from .scnn import LaneScenes, span_iou

__all__ = ["LaneScores", "evaluate_lanes", "fit", "nbody_batch", "nbody_mse", "train_lane_net", "train_nbody"]


def fit(model: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, *, steps: int,
        batch_size: int, lr: float, seed: int = 0) -> list[float]:
    """Minimise ``loss_fn(batch_indices)`` with Adam over random batches of ``range(n)``.

    Returns:
        The loss of every step.
    """
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    lr = check_real("lr", lr, 0.0, strict=True)
    gen = make_generator(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, check_int("n", n, 1), (batch_size,), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def train_lane_net(model: nn.Module, scenes: LaneScenes, *, steps: int, batch_size: int = 16,
                   lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Fit a lane segmenter with pixel-wise BCE, lane pixels up-weighted by their rarity."""
    pos = scenes.masks.float().mean().clamp(min=1e-3)
    weight = ((1 - pos) / pos).sqrt()  # sqrt: recall and precision both matter for IoU

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        logits = model(scenes.images[idx])
        return F.binary_cross_entropy_with_logits(logits, scenes.masks[idx].float(), pos_weight=weight)

    return fit(model, loss_fn, len(scenes), steps=steps, batch_size=batch_size, lr=lr, seed=seed)


@dataclass(frozen=True)
class LaneScores:
    """Lane IoU of one model on a set of scenes.

    Attributes:
        visible: IoU on the rows outside the occluding bands.
        occluded: IoU inside the bands.
        empty: IoU of predicting no lane at all (0 wherever there is a lane), the floor.
        pred: (B, H, W) bool predictions.
    """

    visible: float
    occluded: float
    empty: float
    pred: torch.Tensor


@torch.no_grad()
def evaluate_lanes(model: nn.Module, scenes: LaneScenes) -> LaneScores:
    """Threshold the logits at 0 and score the visible and occluded spans."""
    model.eval()
    pred = model(scenes.images) > 0
    empty = torch.zeros_like(pred)
    everywhere = torch.ones_like(pred)
    return LaneScores(visible=span_iou(pred, scenes.masks, ~scenes.occluded),
                      occluded=span_iou(pred, scenes.masks, scenes.occluded),
                      empty=span_iou(empty, scenes.masks, everywhere), pred=pred)


def nbody_batch(systems: ChargedSystems, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Systems ``idx`` as one graph: ``(pos, vel, scalars, edge_index, target)`` with the
    points of all systems stacked (N = len(idx) * P), scalars ``[charge, speed]`` and the
    target displacement ``x_next - x``."""
    from .ponita import fully_connected

    x, v, q = systems.x[idx], systems.v[idx], systems.charges[idx]  # (S, P, 3), (S, P, 3), (S, P)
    s, p, _ = x.shape
    scalars = torch.stack([q, v.norm(dim=-1)], dim=-1).reshape(s * p, 2)
    target = (systems.x_next[idx] - x).reshape(s * p, 3)
    return x.reshape(s * p, 3), v.reshape(s * p, 3), scalars, fully_connected(p, n_graphs=s), target


def train_nbody(model: nn.Module, systems: ChargedSystems, *, steps: int, batch_size: int = 32,
                lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Fit a displacement model by mean squared error over random batches of systems."""

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        pos, vel, scalars, edges, target = nbody_batch(systems, idx)
        return ((model(pos, vel, scalars, edges) - target) ** 2).sum(-1).mean()

    return fit(model, loss_fn, len(systems), steps=steps, batch_size=batch_size, lr=lr, seed=seed)


@torch.no_grad()
def nbody_mse(model: nn.Module | None, systems: ChargedSystems) -> float:
    """Mean squared error of the predicted positions (per particle, summed over x, y, z);
    ``model=None`` predicts no motion."""
    pos, vel, scalars, edges, target = nbody_batch(systems, torch.arange(len(systems)))
    pred = torch.zeros_like(target) if model is None else model(pos, vel, scalars, edges)
    return float(((pred - target) ** 2).sum(-1).mean())

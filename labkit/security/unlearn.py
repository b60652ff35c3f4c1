"""Erasing a class from the tiny DDPM, and an embedding attack that brings it back.

Paper: "To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate
Unsafe Images ... For Now" (Zhang et al., 2023, arXiv:2310.11868), UnlearnDiffAtk. Concept
erasure fine-tunes a text-to-image model so that a prompt naming the concept no longer
produces it. The paper attacks such a model with the model itself: a diffusion model is a
classifier of its own conditions (the condition under which an image's noise is easiest to
predict is the one that fits it), so an adversarial prompt for the erased concept is one that
minimises the denoising loss on images of that concept,

    min_e  E_{x0 ~ images of c, t, eps} || eps_theta(x_t, t, e) - eps ||^2,
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,

with no auxiliary classifier and no access to the original model. The paper optimises a few
prompt tokens; the miniature optimises the condition embedding itself, in two spaces:

- ``"free"``: any vector e of the embedding width E;
- ``"mixture"``: e = softmax(w) @ [embeddings of the nine classes still allowed], a soft
  choice among the conditions a user may ask for (the analogue of picking prompt tokens from
  the vocabulary).

The erasure is ours, in the manner of ESD (Gandikota et al., 2023, arXiv:2303.07345) and
concept ablation (Kumari et al., 2023, arXiv:2303.13516): a copy of the model is fine-tuned so
that its noise prediction for the erased class c matches the frozen original's prediction for
an anchor class, while its predictions for the other classes stay those of the original,

    L_erase = E || eps_theta'(x_t, t, c) - eps_theta(x_t, t, anchor) ||^2
              + lambda E_{y != c} || eps_theta'(x_t, t, y) - eps_theta(x_t, t, y) ||^2,

with x_t images of c (first term) or of the other classes (second) noised by the forward
process.

What the miniature leaves out: text prompts and their tokens (the condition is one vector
that replaces ``class_emb(y)``), Stable Diffusion and the nudity, style and object concepts of
the paper, its image classifiers as judges (``pretrained_classifier`` judges here), and the
other unlearning methods it attacks.

Shapes: B batch, E embedding width (``time_dim``), K allowed classes.
Section: chapter 15, "UnlearnDiffAtk: bringing an erased digit back".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from labkit.diffusion.quality import DigitClassifier
from labkit.diffusion.sampling import ddim_loop
from labkit.diffusion.schedule import NoiseSchedule
from labkit.diffusion.unet import TinyUNet
from labkit.validation import check_int, check_real

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["ATTACK_SPACES", "AttackResult", "EraseResult", "allowed_classes", "attack_embedding", "attack_figure",
           "class_rates", "condition_embedding", "erase_class", "random_embeddings",
           "sample_with_embedding", "success_rate"]

#: The spaces :func:`attack_embedding` searches.
ATTACK_SPACES: tuple[str, ...] = ("free", "mixture")


def _check_space(space: object) -> str:
    if not isinstance(space, str) or space not in ATTACK_SPACES:
        raise ValueError(f"space must be one of {ATTACK_SPACES}, got {space!r}")
    return space


def _check_model(model: object) -> TinyUNet:
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    if model.class_emb is None:
        raise ValueError("model must be class-conditional (cfg.n_classes set)")
    return model


def _check_class(name: str, value: object, model: TinyUNet) -> int:
    n = model.cfg.n_classes
    assert n is not None  # checked by _check_model
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int class in [0, {n}), got {type(value).__name__}")
    if not 0 <= value < n:
        raise ValueError(f"{name} must be a class in [0, {n}), got {value}")
    return value


def _check_images(images: object) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got {shape}")
    return images


def allowed_classes(model: TinyUNet, target: int) -> torch.Tensor:
    """The classes other than ``target``, in order: those a user may still ask for.

    Returns:
        (K,) int64 with K = n_classes - 1.
    """
    _check_model(model)
    target = _check_class("target", target, model)
    n = model.cfg.n_classes
    assert n is not None
    return torch.tensor([k for k in range(n) if k != target])


def _noised(schedule: NoiseSchedule, x0: torch.Tensor, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, eps) for clean images x0, with t uniform in [0, T) and eps ~ N(0, I)."""
    t = torch.randint(0, schedule.n_steps, (x0.shape[0],), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    return schedule.q_sample(x0, t, eps), t, eps


@dataclass
class EraseResult:
    """The erased copy and its training curve.

    ``history`` rows are (step, erase term, preservation term), each averaged since the previous
    row.
    """

    model: TinyUNet
    target: int
    anchor: int
    history: list[tuple[int, float, float]] = field(default_factory=list)


def erase_class(model: TinyUNet, schedule: NoiseSchedule, images: torch.Tensor, labels: torch.Tensor, *,
                target: int, anchor: int, steps: int = 150, batch_size: int = 64, lr: float = 1e-3,
                preserve: float = 1.0, record_every: int = 25, seed: int = 0) -> EraseResult:
    """Fine-tune a copy of ``model`` so that asking for ``target`` yields ``anchor`` (ESD-style).

    Every step draws ``batch_size`` images of ``target`` and as many of the other classes,
    noises them, and takes one Adam step on ``L_erase`` of the module docstring. The original
    ``model`` is left untouched (it is the frozen teacher).

    Args:
        model: the trained class-conditional noise predictor.
        schedule: its schedule.
        images: training images in [-1, 1], (N, C, H, W).
        labels: their classes, (N,).
        target: c, the class to erase.
        anchor: the class whose noise prediction c is pulled toward (not ``target``).
        steps: optimiser steps.
        batch_size: images of each kind per step.
        lr: Adam's learning rate.
        preserve: lambda, weight of the preservation term (>= 0).
        record_every: a history row every this many steps (and at the end).
        seed: seeds the batches, the steps and the noise.

    Returns:
        :class:`EraseResult` with the erased copy in eval mode.
    """
    _check_model(model)
    target = _check_class("target", target, model)
    anchor = _check_class("anchor", anchor, model)
    if anchor == target:
        raise ValueError(f"anchor must differ from target, got {anchor} for both")
    images = _check_images(images)
    if not isinstance(labels, torch.Tensor) or labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels!r}")
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_int("record_every", record_every, 1)
    check_real("lr", lr, 0.0, strict=True)
    check_real("preserve", preserve, 0.0)
    pos, neg = images[labels == target], images[labels != target]
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError(f"images must hold class {target} and at least one other class")
    y_neg = labels[labels != target]

    teacher = model.eval()
    student = copy.deepcopy(model).train().requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    result = EraseResult(model=student, target=target, anchor=anchor)
    sums, count = [0.0, 0.0], 0
    for step in range(steps):
        # show: start erase
        i = torch.randint(0, pos.shape[0], (batch_size,), generator=gen)
        j = torch.randint(0, neg.shape[0], (batch_size,), generator=gen)
        x_c, t_c, _ = _noised(schedule, pos[i], gen)  # images of c, noised
        x_o, t_o, _ = _noised(schedule, neg[j], gen)  # images of the others
        c = torch.full((batch_size,), target)
        with torch.no_grad():  # the frozen original's predictions are the targets
            want_c = teacher(x_c, t_c, torch.full_like(c, anchor))
            want_o = teacher(x_o, t_o, y_neg[j])
        erase = F.mse_loss(student(x_c, t_c, c), want_c)  # c now means anchor
        keep = F.mse_loss(student(x_o, t_o, y_neg[j]), want_o)  # the rest stay
        loss = erase + preserve * keep
        # show: end erase
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums, count = [sums[0] + erase.item(), sums[1] + keep.item()], count + 1
        if (step + 1) % record_every == 0 or step + 1 == steps:
            result.history.append((step + 1, sums[0] / count, sums[1] / count))
            sums, count = [0.0, 0.0], 0
    student.eval().requires_grad_(False)
    return result


def condition_embedding(model: TinyUNet, space: str, params: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The condition vector e that a point ``params`` of an attack space stands for.

    ``"free"``: e = params (E,). ``"mixture"``: e = softmax(params) @ class_emb(allowed), with
    params (K,) logits over the allowed classes.

    Returns:
        (E,), differentiable in ``params``.
    """
    _check_model(model)
    space = _check_space(space)
    if space == "free":
        return params
    table = model.class_emb.weight[allowed]  # (K, E), the conditions a user may ask for
    return torch.softmax(params, dim=0) @ table  # (E,)


@dataclass
class AttackResult:
    """What :func:`attack_embedding` found.

    Attributes:
        space: the attack space.
        embedding: the final condition vector e, (E,).
        snapshots: ``{step: e after that many optimiser steps}``, step 0 the starting point.
        losses: the attack loss of every step.
    """

    space: str
    embedding: torch.Tensor
    snapshots: dict[int, torch.Tensor]
    losses: list[float]


def attack_embedding(model: TinyUNet, schedule: NoiseSchedule, images: torch.Tensor, *, target: int,
                     space: str, steps: int = 200, batch_size: int = 64, lr: float = 0.05,
                     record: Sequence[int] = (), seed: int = 0) -> AttackResult:
    """Search ``space`` for the condition under which ``model`` best denoises images of ``target``.

    Minimises the attack loss of the module docstring with Adam, the model frozen. Both spaces
    start from the same point, the mean of the allowed classes' embeddings (uniform mixture
    weights), a condition that names no class in particular.

    Args:
        model: the (erased) class-conditional noise predictor; not modified.
        schedule: its schedule.
        images: clean images of the target class in [-1, 1], (N, C, H, W).
        target: c, the erased class (excluded from the mixture).
        space: ``"free"`` or ``"mixture"``.
        steps: optimiser steps.
        batch_size: noised images per step.
        lr: Adam's learning rate.
        record: steps at which to keep a copy of e (0 = the start).
        seed: seeds the batches, the steps and the noise.

    Returns:
        :class:`AttackResult`.
    """
    _check_model(model)
    space = _check_space(space)
    target = _check_class("target", target, model)
    images = _check_images(images)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr, 0.0, strict=True)
    record = [check_int("record", r, 0, steps) for r in record]
    allowed = allowed_classes(model, target)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        start = model.class_emb.weight[allowed].mean(0)  # (E,)
    params = (start.clone() if space == "free" else torch.zeros(allowed.numel())).requires_grad_(True)
    opt = torch.optim.Adam([params], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    snapshots: dict[int, torch.Tensor] = {}
    losses: list[float] = []
    for step in range(steps + 1):
        if step in record:
            with torch.no_grad():
                snapshots[step] = condition_embedding(model, space, params, allowed).clone()
        if step == steps:
            break
        # show: start attack
        x0 = images[torch.randint(0, images.shape[0], (batch_size,), generator=gen)]
        x_t, t, eps = _noised(schedule, x0, gen)
        e = condition_embedding(model, space, params, allowed)  # (E,)
        pred = model(x_t, t, class_embedding=e.expand(batch_size, -1))
        loss = F.mse_loss(pred, eps)  # the model as its own classifier
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # show: end attack
        losses.append(loss.item())
    with torch.no_grad():
        final = condition_embedding(model, space, params, allowed).detach().clone()
    return AttackResult(space=space, embedding=final, snapshots=snapshots, losses=losses)


def random_embeddings(n: int, norm: float | torch.Tensor, dim: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` random condition vectors, uniform in direction, each of length ``norm``.

    The control for an attack: a vector as long as the attack's, pointing anywhere.

    Returns:
        (n, dim) float32.
    """
    check_int("n", n, 1)
    check_int("dim", dim, 1)
    norm = check_real("norm", float(norm), 0.0)
    z = torch.randn((n, dim), generator=torch.Generator().manual_seed(seed))
    return z / z.norm(dim=1, keepdim=True) * norm


@torch.no_grad()
def sample_with_embedding(model: TinyUNet, schedule: NoiseSchedule, embedding: torch.Tensor, *, n: int,
                          steps: int = 20, seed: int = 0) -> torch.Tensor:
    """``n`` DDIM samples (``eta = 0``) conditioned on ``embedding`` instead of a class label.

    Args:
        model: the class-conditional noise predictor.
        schedule: its schedule.
        embedding: one condition vector (E,) for all samples, or one per sample (n, E).
        n: number of images.
        steps: DDIM steps.
        seed: seeds the starting noise.

    Returns:
        Images in [-1, 1], (n, C, H, W).
    """
    _check_model(model)
    check_int("n", n, 1)
    cfg = model.cfg
    if not isinstance(embedding, torch.Tensor) or embedding.shape not in ((cfg.time_dim,), (n, cfg.time_dim)):
        raise ValueError(f"embedding must be ({cfg.time_dim},) or ({n}, {cfg.time_dim}), got "
                         f"{tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else embedding!r}")
    e = embedding.expand(n, -1) if embedding.dim() == 1 else embedding  # (B, E)
    model.eval()
    x_T = torch.randn((n, cfg.in_channels, cfg.image_size, cfg.image_size),
                      generator=torch.Generator().manual_seed(seed))
    return ddim_loop(lambda x, t, i: model(x, t, class_embedding=e), x_T, schedule, steps)


@torch.no_grad()
def success_rate(images: torch.Tensor, target: int, *, classifier: DigitClassifier) -> float:
    """Share of ``images`` that ``classifier`` reads as ``target``."""
    images = _check_images(images)
    check_int("target", target, 0, 9)
    return float((classifier(images).argmax(1) == target).float().mean())


@torch.no_grad()
def class_rates(model: TinyUNet, schedule: NoiseSchedule, *, classifier: DigitClassifier,
                n_per_class: int = 50, steps: int = 20, seed: int = 0) -> torch.Tensor:
    """For each class k, the share of samples asked for k that the classifier reads as k.

    Returns:
        (n_classes,) float32.
    """
    _check_model(model)
    check_int("n_per_class", n_per_class, 1)
    n = model.cfg.n_classes
    assert n is not None
    table = model.class_emb.weight  # (n_classes, E): sampling from the rows is sampling the labels
    rates = []
    for k in range(n):
        images = sample_with_embedding(model, schedule, table[k], n=n_per_class, steps=steps, seed=seed + k)
        rates.append(success_rate(images, k, classifier=classifier))
    return torch.tensor(rates)


def attack_figure(grids: dict[str, torch.Tensor], success: dict[str, dict[int, float]],
                  random_rate: dict[str, float], *, cols: int = 8, active: int = 0) -> "go.Figure":
    """Samples asked for the erased class (left) and attack success against steps (right).

    One dropdown entry per attack space. Each grid holds three rows of ``cols`` images: the
    original model, the erased model, the erased model under the attack's final embedding.

    Args:
        grids: space -> (3 * cols, 1, H, W) images, in the row order above.
        success: space -> {optimiser steps: share of samples read as the erased class}.
        random_rate: space -> the same share under norm-matched random embeddings.
        cols: images per row.
        active: the dropdown entry shown first.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from labkit.diffusion.report import image_grid
    from labkit.plotting import PALETTE, styled

    spaces = list(success)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.12,
                        subplot_titles=("rows: original, erased, attacked", "attack success"))
    per_space = 3
    for s_i, space in enumerate(spaces):
        shown = s_i == active
        fig.add_heatmap(z=image_grid(grids[space], rows=3, cols=cols)[::-1], colorscale="gray", zmin=-1,
                        zmax=1, showscale=False, visible=shown, row=1, col=1)
        steps = sorted(success[space])
        fig.add_scatter(x=steps, y=[100 * success[space][k] for k in steps], mode="lines+markers",
                        name=f"attack ({space})", line=dict(color=PALETTE[s_i]), visible=shown, row=1, col=2)
        fig.add_scatter(x=[steps[0], steps[-1]], y=[100 * random_rate[space]] * 2, mode="lines",
                        name="norm-matched random", line=dict(color=PALETTE[7], dash="dash"), visible=shown,
                        row=1, col=2)
    n = per_space * len(spaces)
    buttons = [dict(label=f"space: {space}", method="update",
                    args=[{"visible": [i // per_space == j for i in range(n)]}])
               for j, space in enumerate(spaces)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, active=active, x=1.0, y=1.22)])
    fig.update_xaxes(visible=False, scaleanchor="y", row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=1)
    # every axis gets the titles (styled checks them); the image axes are hidden
    return styled(fig, title="Bringing an erased digit back (dropdown: attack space)",
                  x_title="attack steps (optimiser updates)",
                  y_title="samples read as the erased digit (%)", height=430)

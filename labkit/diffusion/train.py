"""Training the tiny DDPM on scikit-learn's 8 x 8 digits.

DDPM's "simple" objective (Ho et al., 2020, arXiv:2006.11239, eq. 14) is a regression: draw a
clean image ``x0``, a step ``t`` uniformly and noise ``eps``, build ``x_t`` by eq. 4 and minimise
``|| eps - eps_theta(x_t, t) ||^2``. Every step of the chain is trained at once, with no
simulation of the chain.

:func:`train_ddpm` runs that loss with AdamW, a linear warm-up and a cosine decay for a fixed
number of steps (a step budget, not a time budget, so a seed gives the same weights on every
CPU), optionally keeping an exponential moving average of the weights as DDPM does.
:func:`pretrained_ddpm` wraps it in :func:`labkit.artifacts.load_or_train`, so each
(architecture, schedule, recipe, data, seed) is trained once and then loaded.
:func:`ddpm_recipe` holds the measured recipes of the book's tiers.

What the miniature leaves out: classifier-free guidance (no label dropout), mixed precision,
importance sampling of ``t``.

Shapes: B batch, C channels, H x W image, N images.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from labkit.artifacts import load_or_train, state_shapes
from labkit.data.synthetic import digits
from labkit.runtime import seed_everything
from labkit.tiers import validate_tier
from labkit.validation import check_int

from .schedule import NoiseSchedule
from .unet import TinyUNet, UNetConfig

__all__ = ["DDPMResult", "DiffusionTrainConfig", "LoggedStep", "ddpm_recipe", "digits_split", "pretrained_ddpm",
           "train_ddpm", "training_loop"]

_N_TEST = 360  # held-out digits (20 % of 1797), shared with the quality classifier


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """The training recipe.

    Attributes:
        steps: optimizer steps.
        batch_size: B images per step.
        lr: peak learning rate of AdamW.
        warmup: linear warm-up steps.
        eval_every: record the losses every this many steps (and at the end).
        ema: decay of an exponential moving average of the weights, or None (off); the model
            returned is then the average.
    """

    steps: int = 700
    batch_size: int = 128
    lr: float = 3e-3
    warmup: int = 50
    eval_every: int = 100
    ema: float | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("warmup", self.warmup, 0)
        check_int("eval_every", self.eval_every, 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema must be a decay in (0, 1) or None, got {self.ema}")


@dataclass
class DDPMResult:
    """A trained noise predictor, its schedule and its curves.

    ``history`` rows are (step, mean training loss since the previous row, loss on a fixed
    evaluation batch, seconds of training so far).
    """

    model: TinyUNet
    schedule: NoiseSchedule
    history: list[tuple[int, float, float, float]] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Loss on the fixed evaluation batch at the end of training."""
        return self.history[-1][2]


def ddpm_recipe(tier: str) -> DiffusionTrainConfig:
    """The measured training recipe of a tier, for the default :class:`UNetConfig` on 2 CPU cores.

    ``ci``: 300 steps of 64 images, about 22-25 steps/s, so 12-14 s; the samples are mostly
    recognisable digits. ``default``: 700 steps of 128 images, 13-16 steps/s, so 45-52 s; the
    samples are clearly digits of every class. ``gpu`` uses the ``default`` recipe (not measured
    on a GPU; the model is too small for a GPU to change what is worth training).
    """
    tier = validate_tier(tier)
    if tier == "ci":
        return DiffusionTrainConfig(steps=300, batch_size=64, lr=4e-3, warmup=20, eval_every=50)
    return DiffusionTrainConfig(steps=700, batch_size=128, lr=3e-3, warmup=50, eval_every=100)


def digits_split(*, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits shuffled by ``seed`` and split into 1437 training and 360 test images.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``, images in [-1, 1].

    Shapes:
        images: (N, 1, 8, 8) float32; labels: (N,) int64.
    """
    images, labels = digits(size=8, seed=seed)
    n = labels.numel() - _N_TEST
    return images[:n], labels[:n], images[n:], labels[n:]


def _lr_at(step: int, cfg: DiffusionTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine to 5 %


def _check_data(cfg: UNetConfig, images: torch.Tensor, labels: torch.Tensor | None) -> None:
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be (N, {shape[0]}, {shape[1]}, {shape[2]}), got {tuple(images.shape)}")
    if cfg.n_classes is not None:
        if labels is None or labels.shape != (images.shape[0],):
            raise ValueError(f"a class-conditional model needs labels of shape ({images.shape[0]},)")
        if int(labels.min()) < 0 or int(labels.max()) >= cfg.n_classes:
            raise ValueError(f"labels must be in [0, {cfg.n_classes}), got [{int(labels.min())}, {int(labels.max())}]")


@dataclass
class LoggedStep:
    """What :func:`training_loop` reports at a logging point.

    Attributes:
        step: optimizer steps done so far (from 1).
        losses: the mean of each loss returned by the step function since the previous point.
        clock: seconds spent inside training steps so far (observers and logging excluded).
        bar: the loop's progress bar (for ``set_postfix``).
    """

    step: int
    losses: tuple[float, ...]
    clock: float
    bar: tqdm


def training_loop(model: torch.nn.Module, train_cfg: DiffusionTrainConfig,
                  step_losses: Callable[[int], tuple[torch.Tensor, ...]], *, desc: str = "train",
                  progress: bool = True, ema: torch.nn.Module | None = None,
                  on_step: Callable[[int, torch.nn.Module, float], None] | None = None
                  ) -> Iterator[LoggedStep]:
    """The book's diffusion training loop, with the loss left to the caller.

    AdamW without weight decay, the recipe's linear warm-up and cosine decay, gradients clipped
    to norm 1 and, optionally, an exponential moving average of the weights. Every trainer of
    the tiny UNets (:func:`train_ddpm`, the joint image-label model of chapter 08, the
    super-resolution model) runs this loop and differs only in ``step_losses``.

    Args:
        model: the module to train (its parameters are optimised in place).
        train_cfg: the recipe (steps, learning rate, warm-up, logging period; ``ema`` is read by
            the caller, which passes the averaged copy as ``ema``).
        step_losses: ``step_losses(step)`` draws step ``step``'s batch and returns a tuple of
            scalar tensors; the first is minimised, all are averaged for the log.
        desc: the progress bar's label.
        progress: show a tqdm bar.
        ema: a copy of ``model`` to keep as the moving average (decay ``train_cfg.ema``).
        on_step: observer called after every optimizer step as ``on_step(step, model,
            grad_norm)``, with the gradient norm before clipping; outside the clock.

    Yields:
        :class:`LoggedStep` every ``train_cfg.eval_every`` steps and after the last step.
    """
    if ema is not None and train_cfg.ema is None:
        raise ValueError("an ema model needs train_cfg.ema (its decay), got None")
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=0.0)
    clock, sums, count = 0.0, [], 0
    bar = tqdm(range(train_cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        start = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, train_cfg)
        losses = step_losses(step)
        opt.zero_grad(set_to_none=True)
        losses[0].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # norm before clipping
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for p_avg, p in zip(ema.parameters(), model.parameters()):
                    p_avg.lerp_(p, 1.0 - train_cfg.ema)
        clock += time.perf_counter() - start
        if on_step is not None:  # outside the clock: observing is not training
            on_step(step, model, float(grad_norm))
        values = [loss.item() for loss in losses]
        sums, count = [a + b for a, b in zip(sums, values)] if sums else values, count + 1
        if (step + 1) % train_cfg.eval_every == 0 or step + 1 == train_cfg.steps:
            yield LoggedStep(step + 1, tuple(v / count for v in sums), clock, bar)
            sums, count = [], 0


def _simple_loss(model: TinyUNet, schedule: NoiseSchedule, x0: torch.Tensor,
                 y: torch.Tensor | None, t: torch.Tensor,
                 noise: torch.Tensor) -> torch.Tensor:
    x_t = schedule.q_sample(x0, t, noise)
    # eq. 14: L_simple = E || eps - eps_theta(x_t, t) ||^2,
    #         x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    return F.mse_loss(model(x_t, t, y), noise)


def train_ddpm(cfg: UNetConfig, images: torch.Tensor, labels: torch.Tensor | None,
               train_cfg: DiffusionTrainConfig, *, schedule: NoiseSchedule = NoiseSchedule(), seed: int = 0,
               device: torch.device | str = "cpu", progress: bool = True,
               on_step: Callable[[int, TinyUNet, float], None] | None = None) -> DDPMResult:
    """Train a fresh :class:`TinyUNet` of ``cfg`` to predict noise (DDPM eq. 14); deterministic on CPU.

    Args:
        cfg: architecture.
        images: training images in [-1, 1].
        labels: their classes (required when ``cfg.n_classes`` is set, ignored otherwise).
        train_cfg: recipe.
        schedule: the forward process.
        seed: seeds the initialisation, the batches, the steps and the noise.
        device: where to train.
        progress: show a tqdm bar.
        on_step: opt-in observer, called after every optimizer step as
            ``on_step(step, model, grad_norm)`` with the step index (from 0), the model being
            trained and the gradient norm *before* clipping (gradients are clipped to norm 1).
            Default None: nothing is called and training is unchanged.

    Returns:
        :class:`DDPMResult` with the model in eval mode (the EMA weights when ``train_cfg.ema``).

    Shapes:
        images: (N, C, H, W); labels: (N,).
    """
    if not isinstance(train_cfg, DiffusionTrainConfig):
        raise TypeError(f"train_cfg must be a DiffusionTrainConfig, got {type(train_cfg).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable or None, got {type(on_step).__name__}")
    _check_data(cfg, images, labels)
    gen = seed_everything(seed)
    model = TinyUNet(cfg, init_seed=seed).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if train_cfg.ema is not None else None
    data = images.to(device)
    ys = labels.to(device) if cfg.n_classes is not None else None
    N, T, B = data.shape[0], schedule.n_steps, train_cfg.batch_size

    # A fixed evaluation batch (images, steps, noise), so the curve is not the noise of the draws.
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    eval_idx = torch.randint(0, N, (256,), generator=eval_gen)
    eval_t = torch.randint(0, T, (256,), generator=eval_gen).to(device)
    eval_noise = torch.randn((256, *data.shape[1:]), generator=eval_gen).to(device)

    result = DDPMResult(model=model, schedule=schedule)

    def step_losses(step: int) -> tuple[torch.Tensor]:
        idx = torch.randint(0, N, (B,), generator=gen)
        t = torch.randint(0, T, (B,), generator=gen).to(device)
        noise = torch.randn((B, *data.shape[1:]), generator=gen).to(device)
        idx = idx.to(device)
        return (_simple_loss(model, schedule, data[idx], ys[idx] if ys is not None else None, t, noise),)

    for log in training_loop(model, train_cfg, step_losses, desc="train ddpm", progress=progress, ema=ema,
                             on_step=on_step):
        judged = ema if ema is not None else model
        judged.eval()
        with torch.no_grad():
            ev = _simple_loss(judged, schedule, data[eval_idx.to(device)],
                              ys[eval_idx.to(device)] if ys is not None else None, eval_t, eval_noise).item()
        judged.train()
        result.history.append((log.step, log.losses[0], ev, log.clock))
        log.bar.set_postfix(loss=f"{ev:.4f}")
    result.model = (ema if ema is not None else model).eval()
    return result


def pretrained_ddpm(cfg: UNetConfig = UNetConfig(), train_cfg: DiffusionTrainConfig = DiffusionTrainConfig(), *,
                    schedule: NoiseSchedule = NoiseSchedule(), seed: int = 0, device: torch.device | str = "cpu",
                    progress: bool = True, verbose: bool = True) -> DDPMResult:
    """Like :func:`train_ddpm` on the training split of :func:`digits_split`, trained once and then loaded.

    The artifact ``"tiny_ddpm"`` is keyed by the architecture, the recipe, the schedule, the seed
    and a description of the data; the history travels with the weights.

    Args:
        cfg, train_cfg, schedule, seed, device, progress: as for :func:`train_ddpm`.
        verbose: print where the weights came from.

    Returns:
        :class:`DDPMResult`, model in eval mode on ``device``.
    """
    if cfg.image_size != 8 or cfg.in_channels != 1:
        raise ValueError(f"pretrained_ddpm trains on 8 x 8 grey digits; cfg has image_size={cfg.image_size}, "
                         f"in_channels={cfg.in_channels}")
    data = "sklearn load_digits, 8x8, [-1, 1], digits_split(seed=0) train: 1437 images"
    fields = {"cfg": cfg.as_dict(), "train": asdict(train_cfg), "schedule": [schedule.n_steps, schedule.kind],
              "seed": seed, "data": data}

    def run() -> dict:
        x, y, _, _ = digits_split(seed=0)
        res = train_ddpm(cfg, x, y, train_cfg, schedule=schedule, seed=seed, device=device, progress=progress)
        state = {k: v.detach().cpu() for k, v in res.model.state_dict().items()}
        state["__history__"] = torch.tensor(res.history, dtype=torch.float64)
        return state

    model = TinyUNet(cfg, init_seed=seed)
    state = load_or_train("tiny_ddpm", fields, run, expected={**state_shapes(model), "__history__": None},
                          verbose=verbose)
    history = state.pop("__history__")
    model.load_state_dict(state)
    model.to(device).eval()
    rows = [(int(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in history.tolist()]
    return DDPMResult(model=model, schedule=schedule, history=rows)

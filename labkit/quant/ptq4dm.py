"""Timestep-aware calibration for a diffusion model: which inputs should the observers see?

Post-training Quantization on Diffusion Models (Shang et al., 2023, arXiv:2211.15736).

A noise predictor is called once per sampling step, and its inputs change with the step: at the
start it reads pure noise, at the end an almost clean image, and every residual block also reads
the step's embedding. So the range of values arriving at a quantized layer *drifts with the
timestep*, and a post-training quantizer calibrated on the inputs of one step covers the others
badly (clipping values it never saw, or wasting codes on a range they never use). PTQ4DM builds
the calibration set from the model's own generation process, with no training data: run the float
sampler from seeded noise, keep the network's input ``(x_t, t, y)`` at the chosen steps, and
choose the steps by a normal distribution over the timestep axis ("normally distributed
time-step calibration"), so that every part of the chain is represented but one region more than
the others.

Our reading of that distribution, stated once: a calibration sample's step is
``t = clamp(round(T (mu + sigma z)), 0, T - 1)`` with ``z ~ N(0, 1)`` and, as in the released
code, ``mu = sigma = 0.4``: in the model's own numbering (``t = 0`` is the clean end), centred
before the middle of the chain, with about 16% of the samples piled on the last step and 7% on
the first. A DDIM sampler of ``S`` steps visits only ``S`` of the ``T`` steps, so each draw is
moved to the nearest visited step; each calibration sample comes from its own trajectory (its
own starting noise). The other strategies here are the baselines: ``"first"`` (every sample at
``t = T - 1``), ``"last"`` (every sample at the final step) and ``"uniform"`` (evenly spread over
the visited steps).

What the miniature leaves out: the paper's study of quantized operations and of calibration
metrics (we calibrate every Linear/Conv2d input with one observer), its BRECQ/AdaRound
reconstruction, and its ImageNet/CIFAR models; the skew of its distribution is reproduced only
through the clamp at the two ends.

Shapes: S sampling steps, B trajectories, N calibration samples, C/H/W image, L layers.
Section: chapter 10, "Quantizing a diffusion model".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..diffusion.quality import classifier_confidence, feature_frechet_distance, pixel_deviation
from ..diffusion.sampling import balanced_labels, sample
from ..diffusion.schedule import NoiseSchedule, ddim_timesteps
from ..validation import check_int
from .fakequant import calibrating, quantize_model
from .quantizers import QSpec

__all__ = ["STRATEGIES", "CalibrationSet", "RangeTrace", "SampleFidelity", "SamplingPool", "calibrate",
           "calibration_set", "calibration_steps", "ptq_model", "sample_fidelity", "sampling_pool",
           "timestep_ranges"]

STRATEGIES: tuple[str, ...] = ("first", "last", "uniform", "normal")


@dataclass(frozen=True)
class SamplingPool:
    """The network's inputs along ``B`` float DDIM trajectories: what calibration draws from.

    Attributes:
        x: (S, B, C, H, W), the image the network read at each sampling step.
        t: (S,) int64, the step of each sampling step (descending, first ``T - 1``).
        y: (B,) class labels, or None for an unconditional model.
        n_train: T, the number of training steps of the schedule.
    """

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    n_train: int

    @property
    def steps(self) -> int:
        """S."""
        return self.x.shape[0]

    @property
    def n(self) -> int:
        """B."""
        return self.x.shape[1]

    def flatten(self) -> CalibrationSet:
        """Every step of every trajectory, S * B inputs (strategy ``"all"``): data to distil on."""
        S, B = self.steps, self.n
        y = None if self.y is None else self.y.repeat(S)  # (S * B,), trajectory-minor like x
        return CalibrationSet(x=self.x.reshape(S * B, *self.x.shape[2:]), t=self.t.repeat_interleave(B), y=y,
                              strategy="all")


def sampling_pool(model: nn.Module, schedule: NoiseSchedule, *, n: int, steps: int, x_T: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None, generator: torch.Generator | None = None) -> SamplingPool:
    """Run the float model's own DDIM sampler and keep its input at every step (no data needed).

    Args:
        model: the float noise predictor (a :class:`labkit.diffusion.TinyUNet`).
        schedule: its schedule.
        n: B, trajectories.
        steps: S, DDIM steps.
        x_T, labels, generator: as for :func:`labkit.diffusion.sample`.

    Returns:
        :class:`SamplingPool` on the CPU.

    Shapes:
        x_T: (B, C, H, W); labels: (B,).
    """
    check_int("n", n, 1)
    _, traj = sample(model, schedule, n=n, steps=steps, x_T=x_T, labels=labels, generator=generator,
                     return_trajectory=True)
    y = None
    if model.cfg.n_classes is not None:
        y = (balanced_labels(n, model.cfg.n_classes) if labels is None else labels).cpu()
    # traj = [x_T, x_{t_1}, ..., x_0]: the input of step i is traj[i]
    x = torch.stack(traj[:-1])  # (S, B, C, H, W)
    return SamplingPool(x=x, t=ddim_timesteps(schedule.n_steps, steps), y=y, n_train=schedule.n_steps)


def calibration_steps(strategy: str, *, size: int, steps: int, n_train: int, mean: float = 0.4, std: float = 0.4,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Which sampling step each of ``size`` calibration samples is taken from.

    ``"first"``: all at step index 0 (``t = T - 1``, pure noise). ``"last"``: all at the final step.
    ``"uniform"``: evenly spaced over the ``S`` steps. ``"normal"`` (PTQ4DM): draw
    ``t = clamp(round(T (mean + std z)), 0, T - 1)`` and take the visited step nearest to ``t``.

    Args:
        strategy: one of :data:`STRATEGIES`.
        size: N.
        steps: S, the sampler's steps.
        n_train: T.
        mean, std: ``mu`` and ``sigma`` of the normal strategy, as fractions of T (std > 0).
        generator: for the normal draws.

    Returns:
        (N,) int64 step indices in [0, S) (0 = the noisiest step).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    N = check_int("size", size, 1)
    S = check_int("steps", steps, 1)
    T = check_int("n_train", n_train, S)
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if strategy == "first":
        return torch.zeros(N, dtype=torch.int64)
    if strategy == "last":
        return torch.full((N,), S - 1, dtype=torch.int64)
    if strategy == "uniform":
        return torch.linspace(0, S - 1, N, dtype=torch.float64).round().long()
    # show: start normal
    z = torch.randn(N, generator=generator, dtype=torch.float64)
    t = (T * (mean + std * z)).round().clamp(0, T - 1)  # (N,) training steps, 0 = clean end
    visited = ddim_timesteps(T, S).double()  # (S,)
    return (t[:, None] - visited[None, :]).abs().argmin(dim=1)  # nearest visited step
    # show: end normal


@dataclass(frozen=True)
class CalibrationSet:
    """Network inputs to calibrate (and finetune) on.

    Attributes:
        x: (N, C, H, W); t: (N,) int64 steps; y: (N,) labels or None.
        strategy: how the steps were chosen.
    """

    x: torch.Tensor
    t: torch.Tensor
    y: torch.Tensor | None
    strategy: str

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, *, device: torch.device | str | None = None):
        """Consecutive ``(x, t, y)`` batches of at most ``batch_size``, moved to ``device``."""
        check_int("batch_size", batch_size, 1)
        for i in range(0, len(self), batch_size):
            sl = slice(i, i + batch_size)
            y = None if self.y is None else self.y[sl].to(device)
            yield self.x[sl].to(device), self.t[sl].to(device), y


def calibration_set(pool: SamplingPool, strategy: str, *, size: int, mean: float = 0.4, std: float = 0.4,
                    generator: torch.Generator | None = None) -> CalibrationSet:
    """``size`` network inputs from ``pool``: sample ``j`` is trajectory ``j`` at the step the strategy picks.

    Args:
        pool: float trajectories (:func:`sampling_pool`), at least ``size`` of them.
        strategy, mean, std, generator: as for :func:`calibration_steps`.
        size: N, at most ``pool.n``.

    Returns:
        :class:`CalibrationSet`.
    """
    check_int("size", size, 1)
    if size > pool.n:
        raise ValueError(f"size={size} needs as many trajectories, the pool has {pool.n}")
    idx = calibration_steps(strategy, size=size, steps=pool.steps, n_train=pool.n_train, mean=mean, std=std,
                            generator=generator)  # (N,)
    j = torch.arange(size)
    y = None if pool.y is None else pool.y[:size]
    return CalibrationSet(x=pool.x[idx, j], t=pool.t[idx], y=y, strategy=strategy)


def calibrate(qmodel: nn.Module, calib: CalibrationSet, *, batch_size: int = 256) -> nn.Module:
    """Run ``calib`` through ``qmodel`` inside :func:`labkit.quant.calibrating`; returns it, quantized."""
    if len(calib) == 0:
        raise ValueError("the calibration set is empty")
    device = next(qmodel.parameters()).device
    with calibrating(qmodel):
        for x, t, y in calib.batches(batch_size, device=device):
            qmodel(x, t, y)
    return qmodel


def ptq_model(model: nn.Module, calib: CalibrationSet, *, w_bits: int, a_bits: int, observer: str = "minmax",
              observer_kwargs: dict | None = None, keep: tuple[str, ...] | list[str] = (), keep_bits: int = 8,
              batch_size: int = 256) -> nn.Module:
    """A calibrated WxAy copy of ``model``: every Linear/Conv2d gets per-output-channel symmetric
    ``w_bits`` weights and per-tensor affine ``a_bits`` inputs, ranges from ``calib``.

    Args:
        model: the float model (left untouched).
        calib: the calibration inputs.
        w_bits, a_bits: 2..8.
        observer: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        observer_kwargs: passed to the observer (e.g. ``grid``, ``max_samples`` of the MSE one).
        keep: names of layers quantized at ``keep_bits`` (weights and inputs) instead, e.g. the
            first and last convolution, which low-bit diffusion PTQ usually keeps at 8 bits.
        keep_bits: their bits, 2..8.
        batch_size: calibration batch.
    """
    check_int("w_bits", w_bits, 2, 8)
    check_int("a_bits", a_bits, 2, 8)
    check_int("keep_bits", keep_bits, 2, 8)
    if not isinstance(calib, CalibrationSet):
        raise TypeError(f"calib must be a CalibrationSet, got {type(calib).__name__}")
    keep = tuple(keep)
    names = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    missing = [n for n in keep if n not in names]
    if missing:
        raise ValueError(f"keep names layers the model does not have: {missing}")
    kw = dict(observer=observer, observer_kwargs=observer_kwargs)
    q = quantize_model(model, w_spec=QSpec(w_bits, granularity="channel"), a_spec=QSpec(a_bits, symmetric=False),
                       include=lambda name, _m: name not in keep, **kw)
    if keep:  # a second pass wraps the kept layers, still plain modules in the copy
        q = quantize_model(q, w_spec=QSpec(keep_bits, granularity="channel"),
                           a_spec=QSpec(keep_bits, symmetric=False), include=lambda name, _m: name in keep, **kw)
    return calibrate(q, calib, batch_size=batch_size)


@dataclass(frozen=True)
class RangeTrace:
    """Input range of every Linear/Conv2d at every sampling step.

    Attributes:
        layers: L layer names.
        t: (S,) steps.
        lo, hi: (L, S) smallest and largest input value over the pool's images at each step.
    """

    layers: tuple[str, ...]
    t: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def width(self) -> torch.Tensor:
        """(L, S) ``hi - lo``."""
        return self.hi - self.lo

    def drift(self) -> torch.Tensor:
        """(L,) largest over smallest per-step width: how much a layer's range moves along the chain."""
        w = self.width
        return w.amax(dim=1) / w.amin(dim=1).clamp(min=1e-12)


@torch.no_grad()
def timestep_ranges(model: nn.Module, pool: SamplingPool) -> RangeTrace:
    """Replay the pool's inputs step by step and record each layer's input range per step.

    Args:
        model: the float model whose Linear/Conv2d inputs are watched (forward pre-hooks).
        pool: :func:`sampling_pool` of that model.

    Returns:
        :class:`RangeTrace`.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer to watch")
    L, S = len(layers), pool.steps
    lo, hi = torch.full((L, S), float("inf")), torch.full((L, S), float("-inf"))
    step = [0]

    def hook(i):
        def fn(_module, args):
            x = args[0].detach()
            lo[i, step[0]] = min(float(lo[i, step[0]]), float(x.min()))
            hi[i, step[0]] = max(float(hi[i, step[0]]), float(x.max()))
        return fn

    device = next(model.parameters()).device
    y = None if pool.y is None else pool.y.to(device)
    handles = [m.register_forward_pre_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    try:
        model.eval()
        for s in range(S):
            step[0] = s
            t = torch.full((pool.n,), int(pool.t[s]), dtype=torch.long, device=device)
            model(pool.x[s].to(device), t, y)
    finally:
        for h in handles:
            h.remove()
    return RangeTrace(layers=tuple(n for n, _ in layers), t=pool.t.clone(), lo=lo, hi=hi)


@dataclass(frozen=True)
class SampleFidelity:
    """How a quantized model's samples compare with the float model's from the same noise.

    Attributes:
        deviation: mean |pixel difference| from the float samples ([-1, 1] scale).
        agreement: share of samples the classifier reads as the same digit as the float sample.
        accuracy: share read as the class they were conditioned on.
        confidence: mean top classifier probability.
        frechet: feature Frechet distance to the reference (real) images.
    """

    deviation: float
    agreement: float
    accuracy: float
    confidence: float
    frechet: float


@torch.no_grad()
def sample_fidelity(images: torch.Tensor, float_images: torch.Tensor, *, labels: torch.Tensor,
                    classifier: nn.Module, reference: torch.Tensor) -> SampleFidelity:
    """Score ``images`` against the float model's ``float_images`` (same noise) and real digits.

    Args:
        images, float_images: (B, 1, 8, 8) in [-1, 1].
        labels: (B,) the classes the samples were conditioned on.
        classifier: a :class:`labkit.diffusion.DigitClassifier`.
        reference: real images for the Frechet distance, (B_r, 1, 8, 8).
    """
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be (B,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    images, float_images = images.float().cpu(), float_images.float().cpu()
    dev = pixel_deviation(images, float_images)
    classifier.eval()
    pred, pred_float = classifier(images).argmax(1), classifier(float_images).argmax(1)
    fa, fb = classifier.features(images), classifier.features(reference.float().cpu())
    return SampleFidelity(deviation=dev, agreement=float((pred == pred_float).float().mean()),
                          accuracy=float((pred == labels.cpu()).float().mean()),
                          confidence=classifier_confidence(images, classifier=classifier),
                          frechet=feature_frechet_distance(fa, fb))

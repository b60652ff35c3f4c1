"""Noise schedules, the forward process and the DDIM update.

Denoising Diffusion Probabilistic Models (Ho, Jain and Abbeel, 2020, arXiv:2006.11239) corrupt
an image ``x0`` in ``T`` small Gaussian steps with variances ``beta_1 .. beta_T``. Because a sum
of Gaussians is Gaussian, the noisy image at any step has a closed form (DDPM eq. 4):

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    abar_t = prod_{s <= t} (1 - beta_s),

so training never runs the chain: it draws ``t`` and ``eps`` and asks the network for ``eps``.
Sampling runs the chain backwards. Denoising Diffusion Implicit Models (Song, Meng and Ermon,
2020, arXiv:2010.02502) showed that the same trained network defines a family of reverse
processes indexed by ``eta`` (DDIM eq. 12): ``eta = 0`` is deterministic and can jump over many
training steps at once, ``eta = 1`` has the variance of DDPM's ancestral sampler. Fewer steps is
the first, and simplest, way to make sampling cheaper; chapter 09 measures the rest.

Steps are numbered from 0 here (``t = 0 .. T-1``; the paper's ``t = 1 .. T``), and ``t = -1``
stands for the clean image, where ``abar = 1``.

What the miniature leaves out: learned variances, v- or x0-prediction, other solvers
(DPM-Solver, PNDM), and dynamic thresholding.

Shapes: B batch, C channels, H x W image, S sampling steps.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from labkit.validation import check_int

__all__ = ["NoiseSchedule", "ddim_step", "ddim_timesteps"]

_KINDS = ("linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """The variances ``beta_t`` of the forward process and the products derived from them.

    ``kind="linear"`` is DDPM's schedule (Section 4: beta rising linearly from 1e-4 to 0.02 over
    T = 1000 steps), with both ends scaled by ``1000 / T`` so a shorter chain still ends in almost
    pure noise. ``kind="cosine"`` is the schedule of Nichol and Dhariwal (arXiv:2102.09672,
    eq. 17), whose ``abar_t`` falls like ``cos^2``, with each beta clipped at 0.999.

    Two schedules are equal when ``n_steps`` and ``kind`` are (the tensors are derived), so a
    schedule can key cached weights.

    Attributes:
        n_steps: T, the number of training steps.
        kind: ``"linear"`` or ``"cosine"``.
        betas: (T,) float32, ``beta_t``.
        alphas: (T,) float32, ``1 - beta_t``.
        alphas_cumprod: (T,) float32, ``abar_t``, strictly decreasing inside (0, 1).
    """

    n_steps: int = 1000
    kind: str = "linear"
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("n_steps", self.n_steps, 1)
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        T = int(self.n_steps)
        if self.kind == "linear":
            scale = 1000.0 / T
            betas = torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=torch.float64)
        else:
            s = 0.008  # offset so beta_1 is not vanishingly small (Nichol & Dhariwal, Section 3.2)
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # eq. 17
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        alphas = 1.0 - betas
        # Computed in float64, stored in float32: the product of 1000 factors keeps its digits.
        object.__setattr__(self, "betas", betas.float())
        object.__setattr__(self, "alphas", alphas.float())
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(alphas, 0).float())

    def abar(self, t: torch.Tensor | int, *, device: torch.device | str | None = None) -> torch.Tensor:
        """``abar_t`` for step(s) ``t``, with ``abar_{-1} = 1`` (the clean image).

        Args:
            t: an int or an int tensor of any shape, each in [-1, T).
            device: where to put the result (default: ``t``'s device, or CPU for an int).

        Returns:
            float32 tensor of ``t``'s shape (a 0-d tensor for an int).
        """
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must hold integer steps, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < -1 or int(t.max()) >= self.n_steps):
            raise ValueError(f"t must be in [-1, {self.n_steps}), got values in [{int(t.min())}, {int(t.max())}]")
        table = torch.cat([torch.ones(1), self.alphas_cumprod])  # index 0 is t = -1
        return table[(t.cpu() + 1).long()].to(device if device is not None else t.device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t`` from ``q(x_t | x_0)`` in one step (DDPM eq. 4).

        Args:
            x0: clean images.
            t: one step per image, int64 in [0, T).
            noise: ``eps ~ N(0, I)``, shaped like ``x0``.

        Returns:
            ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``.

        Shapes:
            x0, noise, result: (B, C, H, W); t: (B,).
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        if t.dim() != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must be (B,) with B = {x0.shape[0]}, got shape {tuple(t.shape)}")
        if int(t.min()) < 0:
            raise ValueError(f"t must be in [0, {self.n_steps}) for q_sample, got {int(t.min())}")
        # show: start forward
        abar = self.abar(t, device=x0.device).to(x0.dtype)
        abar = abar.view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
        # eq. 4: q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        # show: end forward


def ddim_timesteps(n_train: int, n_sample: int) -> torch.Tensor:
    """The ``S`` training steps a sampler of ``S`` steps visits, evenly spaced, noisiest first.

    They run from ``T - 1`` down to 0, spaced ``(T - 1) / (S - 1)`` apart and rounded half up,
    so ``S = T`` visits every step and ``S = 1`` only the last one (``T - 1``).

    Args:
        n_train: T, the steps the model was trained with.
        n_sample: S, the steps to sample with, in [1, T].

    Returns:
        (S,) int64, strictly decreasing, first ``T - 1``, last 0 (when S > 1).
    """
    T = check_int("n_train", n_train, 1)
    S = check_int("n_sample", n_sample, 1, T)
    if S == 1:
        return torch.tensor([T - 1], dtype=torch.int64)
    grid = torch.arange(S, dtype=torch.float64) * ((T - 1) / (S - 1))  # spacing >= 1, so no repeats
    return torch.floor(grid + 0.5).long().flip(0)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, schedule: NoiseSchedule, *,
              eta: float = 0.0, noise: torch.Tensor | None = None, clip_x0: bool = False) -> torch.Tensor:
    """One reverse step from ``x_t`` to ``x_{t_prev}`` given the predicted noise (DDIM eq. 12).

    The step first estimates the clean image, ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``,
    then moves it to the noise level of ``t_prev``, re-using ``eps`` as the direction and adding
    fresh noise of standard deviation ``sigma`` (DDIM eq. 16):

        sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev).

    With ``eta = 0`` the step is deterministic; with ``eta = 1`` and consecutive steps it is
    DDPM's ancestral step. ``t_prev = -1`` returns the clean estimate itself.

    Args:
        x_t: the current images.
        eps: the network's noise prediction at ``(x_t, t)``.
        t: current step in [0, T).
        t_prev: next (less noisy) step in [-1, t).
        schedule: the schedule the model was trained with.
        eta: 0 (DDIM) .. 1 (DDPM-like); must be >= 0.
        noise: ``N(0, I)`` for the stochastic part; drawn with the global generator when
            ``eta > 0`` and omitted.
        clip_x0: clamp the clean estimate to [-1, 1] (the data range) before moving on.

    Returns:
        ``x_{t_prev}``, shaped like ``x_t``.

    Shapes:
        x_t, eps, noise, result: (B, C, H, W).
    """
    T = schedule.n_steps
    t = check_int("t", t, 0, T - 1)
    t_prev = check_int("t_prev", t_prev, -1, t - 1)
    if eps.shape != x_t.shape:
        raise ValueError(f"eps must have x_t's shape {tuple(x_t.shape)}, got {tuple(eps.shape)}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta < float("inf"):
        raise ValueError(f"eta must be a float >= 0, got {eta!r}")
    # show: start ddim-update
    a_t = float(schedule.abar(t))
    a_prev = float(schedule.abar(t_prev))
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # "predicted x0" of eq. 12
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    # eq. 16
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    # eq. 12: sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
    # show: end ddim-update
    if sigma > 0:
        if noise is None:
            noise = torch.randn_like(x_t)
        elif noise.shape != x_t.shape:
            raise ValueError(f"noise must have x_t's shape {tuple(x_t.shape)}, got {tuple(noise.shape)}")
        x_prev = x_prev + sigma * noise
    return x_prev

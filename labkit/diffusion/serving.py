"""Serving a diffusion model with LoRAs: timed request drivers and a cost model (SwiftDiffusion).

Paper: *SwiftDiffusion: Efficient Diffusion Model Serving with Add-on Modules* (Li et al., 2024,
arXiv:2407.02031). SwiftDiffusion measures that the add-ons, not the base model, dominate serving
latency, and its answers include overlapping LoRA loading with the first denoising steps
(bounded asynchronous LoRA loading) and running ControlNets beside the base model
(:mod:`labkit.diffusion.controlnet`). The LoRA mechanism itself is :mod:`labkit.diffusion.lora`.

- :func:`serve_with_loras` serves DDIM requests with LoRAs merged or on the fly, timed by phase;
  with ``per_image=True`` requests with different LoRAs share one batch (on the fly only).
- :func:`serve_bounded_async` loads LoRA files in a thread while the base model runs its first
  steps, and patches them in after at most k steps.
- :class:`LoRACost` models both ways as straight lines in S: merging wins for long runs and the
  branch for short ones, and it predicts where they cross.

What the miniature leaves out: separate GPUs and a request queue (one CPU process serves one
request at a time; the loader is a thread sharing its interpreter lock).

Shapes: B batch, C channels, H x W image, K LoRAs, S steps.
Section: chapter 09, "Serving: add-ons and patch parallelism".
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from labkit.validation import check_int

from .lora import LoRA, check_loras, load_lora, lora_branches, merge_loras, unmerge_loras
from .sampling import EpsFn, ddim_loop, sample_labels
from .schedule import NoiseSchedule
from .unet import TinyUNet

__all__ = ["AsyncLoad", "LoRACost", "ServeTiming", "serve_bounded_async", "serve_with_loras"]

_MODES = ("merge", "on_the_fly")


def _whole_model(model: TinyUNet, y: torch.Tensor | None) -> EpsFn:
    """The base model (with whatever LoRAs are patched in) as the sampling loop's noise predictor."""
    return lambda x, t, i: model(x, t, y)


@dataclass(frozen=True)
class ServeTiming:
    """Wall-clock seconds of one request served with LoRAs, by phase.
    """

    patch_s: float
    sample_s: float
    unpatch_s: float

    @property
    def total_s(self) -> float:
        """All three phases."""
        return self.patch_s + self.sample_s + self.unpatch_s


@torch.no_grad()
def serve_with_loras(model: TinyUNet, schedule: NoiseSchedule, loras: Sequence[LoRA], *, mode: str,
                     x_T: torch.Tensor, steps: int = 20, labels: torch.Tensor | None = None,
                     per_image: bool = False) -> tuple[torch.Tensor, ServeTiming]:
    """Serve DDIM requests with LoRAs applied by merging or on the fly, timed by phase.

    With ``per_image=False`` one request draws all B images with all K LoRAs: ``"merge"`` merges
    them, samples and restores the weights; ``"on_the_fly"`` samples inside :func:`lora_branches`.
    With ``per_image=True`` there are K = B requests of one image each, image b with LoRA b:
    ``"merge"`` must serve them one after the other (the weights hold one patch at a time),
    ``"on_the_fly"`` serves them as one batch with a per-image mask.

    Args:
        model, schedule: the base model and its schedule.
        loras: K >= 0 LoRAs (K = B when ``per_image``).
        mode: ``"merge"`` or ``"on_the_fly"``.
        x_T: (B, C, H, W) starting noise.
        steps: S.
        labels: (B,) classes (default 0, 1, 2, ...).
        per_image: one request (and LoRA) per image.

    Returns:
        ``(images in [-1, 1], ServeTiming)``; the model is left as it was.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    loras = check_loras(model, loras)
    B = x_T.shape[0]
    if per_image and len(loras) != B:
        raise ValueError(f"per_image needs one LoRA per image: {len(loras)} LoRAs for {B} images")
    y = sample_labels(model, labels, B)
    model.eval()
    patch = sample = unpatch = 0.0
    if mode == "merge":
        groups = [([lora], slice(b, b + 1)) for b, lora in enumerate(loras)] if per_image else [(loras, slice(0, B))]
        outs = []
        for group, rows in groups:
            t0 = time.perf_counter()
            merged = merge_loras(model, group) if group else None
            t1 = time.perf_counter()
            outs.append(ddim_loop(_whole_model(model, None if y is None else y[rows]), x_T[rows], schedule, steps))
            t2 = time.perf_counter()
            if merged is not None:
                unmerge_loras(model, merged)
            t3 = time.perf_counter()
            patch, sample, unpatch = patch + t1 - t0, sample + t2 - t1, unpatch + t3 - t2
        images = torch.cat(outs) if outs else ddim_loop(_whole_model(model, y), x_T, schedule, steps)
    else:
        t0 = time.perf_counter()
        with lora_branches(model, loras, assign=torch.arange(B) if per_image else None):
            t1 = time.perf_counter()
            images = ddim_loop(_whole_model(model, y), x_T, schedule, steps)
            t2 = time.perf_counter()
        patch, sample, unpatch = t1 - t0, t2 - t1, time.perf_counter() - t2
    return images, ServeTiming(patch_s=patch, sample_s=sample, unpatch_s=unpatch)


@dataclass(frozen=True)
class AsyncLoad:
    """How a request with bounded asynchronous LoRA loading went.

    Attributes:
        patched_at: the step index before which the LoRAs were merged (0 = from the start).
        load_s: seconds the loader thread spent reading the files.
        wait_s: seconds the sampler stood waiting for the loader.
        total_s: wall-clock seconds of the whole request.
    """

    patched_at: int
    load_s: float
    wait_s: float
    total_s: float


@torch.no_grad()
def serve_bounded_async(model: TinyUNet, schedule: NoiseSchedule, paths: Sequence[str | Path], *, bound: int,
                        x_T: torch.Tensor, steps: int = 20, labels: torch.Tensor | None = None,
                        patch_at: int | None = None) -> tuple[torch.Tensor, AsyncLoad]:
    """SwiftDiffusion's bounded asynchronous LoRA loading (BAL): sample while the LoRAs load.

    A loader thread reads the LoRA files while the base model runs its first steps. Before each
    step the sampler checks: once the files are in, it merges them and carries on with the LoRAs;
    it never runs more than ``bound`` steps without them (at step ``bound`` it waits). The first
    steps, which set the layout rather than the style, are the ones that may go without.

    Args:
        model, schedule: the base model and its schedule.
        paths: files written by :func:`save_lora`.
        bound: k, the most steps allowed without the LoRAs, in [0, S].
        x_T: (B, C, H, W) starting noise.
        steps: S.
        labels: (B,) classes.
        patch_at: merge exactly before this step (waiting if needed), for experiments that need
            the same patching step on every run; default: as soon as loaded, at most ``bound``.

    Returns:
        ``(images in [-1, 1], AsyncLoad)``; the model is left as it was.
    """
    steps = check_int("steps", steps, 1)
    bound = check_int("bound", bound, 0, steps)
    if patch_at is not None:
        check_int("patch_at", patch_at, 0, steps)
    paths = [Path(p) for p in paths]
    y = sample_labels(model, labels, x_T.shape[0])
    model.eval()
    start = time.perf_counter()
    state: dict = {"merged": None, "at": steps, "wait": 0.0}

    def read() -> tuple[list[LoRA], float]:
        t0 = time.perf_counter()
        return [load_lora(p) for p in paths], time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(read)

        def before_step(i: int) -> None:
            if state["merged"] is not None:
                return
            due = i == (bound if patch_at is None else patch_at)
            if due or (patch_at is None and future.done()):
                t0 = time.perf_counter()
                loras, _ = future.result()
                state["wait"] += time.perf_counter() - t0
                state["merged"], state["at"] = merge_loras(model, loras), i

        try:
            images = ddim_loop(_whole_model(model, y), x_T, schedule, steps, before_step=before_step)
        finally:
            if state["merged"] is not None:
                unmerge_loras(model, state["merged"])
        _, load_s = future.result()
    return images, AsyncLoad(patched_at=state["at"], load_s=load_s, wait_s=state["wait"],
                             total_s=time.perf_counter() - start)


@dataclass(frozen=True)
class LoRACost:
    """Two ways of serving with LoRAs as straight lines in S: ``merge + S * step`` vs ``setup + S * step'``.

    Attributes:
        merge_s: seconds to merge the LoRAs and restore the weights (per request).
        merged_step_s: seconds of one sampling step with merged weights.
        setup_s: seconds to install (and remove) the on-the-fly branches.
        fly_step_s: seconds of one step with the branches.
    """

    merge_s: float
    merged_step_s: float
    setup_s: float
    fly_step_s: float

    def __post_init__(self) -> None:
        for name in ("merge_s", "merged_step_s", "setup_s", "fly_step_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")

    def merged(self, steps: int) -> float:
        """Predicted seconds of S steps served by merging."""
        return self.merge_s + check_int("steps", steps, 1) * self.merged_step_s

    def on_the_fly(self, steps: int) -> float:
        """Predicted seconds of S steps served with the branches."""
        return self.setup_s + check_int("steps", steps, 1) * self.fly_step_s

    @property
    def crossover_steps(self) -> float:
        """S where both lines meet (``inf`` if parallel); can be below 1 or negative (no crossover in range)."""
        slope = self.fly_step_s - self.merged_step_s
        return float("inf") if slope == 0 else (self.merge_s - self.setup_s) / slope

"""Diffusion acceleration (chapter 09) on the tiny DDPM lab animal, reused by chapter 10.

Papers and the modules that implement them (ids as in ``book/_data/papers.yml``):

- Faster Diffusion (``faster_diffusion``), section 02 "Faster Diffusion: encoder propagation":
  :mod:`~labkit.diffusion.faster` (encoder propagation, parallel decoding, prior noise
  injection), measured with :mod:`~labkit.diffusion.profiling`;
- A-SDM (``a_sdm``) and LAPTOP-Diff (``laptop_diff``), section 03 "Feature inheritance and layer
  pruning": :mod:`~labkit.diffusion.pruning` (feature inheritance, the additive pruning
  criterion, normalised distillation);
- SwiftDiffusion (``swiftdiffusion``), section 04 "Serving: add-ons and patch parallelism":
  :mod:`~labkit.diffusion.lora` (the LoRA add-on, merged or on the fly),
  :mod:`~labkit.diffusion.serving` (timed request drivers, bounded asynchronous loading, the
  cost model) and :mod:`~labkit.diffusion.controlnet` (a ControlNet-style add-on in parallel);
- PCPP (``pcpp``), with DistriFusion, section 04: :mod:`~labkit.diffusion.patch_parallel`
  (stale halos, partial conditioning, bytes of both transports).

Chapter 08, diffusion training as multi-task learning: negative transfer
(``negative_transfer``), section 01 "Negative transfer between denoising tasks":
:mod:`~labkit.diffusion.affinity` (task affinity from gradients, interval clustering of the
timesteps by dynamic programming, short continuations on a cluster of steps); Denoising Task
Routing (``dtr``), section 02 "Denoising task routing": :mod:`~labkit.diffusion.routing` (a
sliding window of active channels per step, switched on by ``UNetConfig.task_routing``).

Chapter 08, ScaleLong (``scalelong``), section 03 "Scaling long skip connections":
:mod:`~labkit.diffusion.skipscale` (the ``1/sqrt(2)`` and ``kappa ** i`` rules for the long
skips, switched on by ``UNetConfig.skip_scale``; gradient and feature traces over training,
their oscillation, the sensitivity to input noise).

Chapter 08, section 04 "Joint image-label generation with one diffusion model": MT-Diffusion
(``multitask_diffusion``), :mod:`~labkit.diffusion.multitask` (a digit's label diffused with its
image, a shared TinyUNet with a label encoder and a label head, the two-task loss, joint DDIM
sampling, agreement with a judge calibrated by shuffling).

Chapter 08, section 05 "Structure-modulated super-resolution": SAM-DiffSR (``sam_diffsr``),
:mod:`~labkit.diffusion.superres` (regions of the digit by ``scipy.ndimage.label``, their
position codes, the noise modulated per region during training only, 4 x 4 -> 8 x 8
super-resolution with ``UNetConfig.cond_channels``).

Chapter 08, LayerDiffusion (``layerdiffusion``), section 06 "Latent transparency":
:mod:`~labkit.diffusion.transparency` (seeded RGBA sprites, a frozen RGB autoencoder, the
transparency encoder's latent offset and decoder, the harmlessness term).

The lab animal and section 01, "Where sampling time goes" (DDPM and DDIM, no paper of the list
of their own): :mod:`~labkit.diffusion.schedule` (noise schedules, the DDIM update),
:mod:`~labkit.diffusion.unet` (the UNet, split into encoder and decoder),
:mod:`~labkit.diffusion.norm` (GroupNorm + SiLU, reference and Triton),
:mod:`~labkit.diffusion.train` (training and cached weights), :mod:`~labkit.diffusion.sampling`
(the one DDIM loop every sampler runs), :mod:`~labkit.diffusion.quality` (sample quality
without downloads), :mod:`~labkit.diffusion.profiling` (where the time goes) and
:mod:`~labkit.diffusion.report` (the UNet drawing and the pages' layout helpers).
"""

from .lora import (LoRA, MergedWeights, load_lora, lora_branches, lora_targets, merge_loras, random_lora, save_lora,
                   train_lora, unmerge_loras)
from .serving import AsyncLoad, LoRACost, ServeTiming, serve_bounded_async, serve_with_loras
from .controlnet import ControlAddon, controlled_noise, sample_controlled
from .faster import (PAPER_INJECTION, PAPER_KEY_STEPS_50, amdahl_speedup, check_key_steps, key_groups,
                     paper_key_steps, sample_propagated, skipped_fraction, uniform_key_steps)
from .norm import group_norm_silu, group_norm_silu_reference
from .patch_parallel import (PatchConfig, PatchRun, canvas_forward, canvas_tiles, conditioned_layers, halo_layers,
                             merge_patches, sample_canvas, sample_patch_parallel, split_patches)
from . import pruning
from .profiling import (BlockProfile, FeatureChange, OpBreakdown, TimeSplit, feature_change, op_breakdown, op_kind,
                        part_params, profile_blocks, time_split, unet_blocks)
from ..runtime import interleaved_times, paired_speedup  # the general timers, re-exported
from .quality import (ClassifierResult, DigitClassifier, SampleQuality, class_diversity, classifier_confidence,
                      feature_frechet_distance, pixel_deviation, pretrained_classifier, sample_quality)
from .sampling import balanced_labels, ddim_loop, sample
from .schedule import NoiseSchedule, ddim_step, ddim_timesteps
from .train import DDPMResult, DiffusionTrainConfig, ddpm_recipe, digits_split, pretrained_ddpm, train_ddpm
from .routing import TaskRouting
from .unet import Features, ResBlock, TinyUNet, UNetConfig, timestep_embedding

__all__ = ["PAPER_INJECTION", "PAPER_KEY_STEPS_50", "BlockProfile", "FeatureChange", "OpBreakdown", "TimeSplit",
           "amdahl_speedup", "check_key_steps", "feature_change", "interleaved_times", "key_groups", "op_breakdown",
           "op_kind", "paired_speedup", "paper_key_steps", "part_params", "profile_blocks", "pruning",
           "sample_propagated", "skipped_fraction", "time_split", "uniform_key_steps", "unet_blocks", "AsyncLoad",
           "ControlAddon", "LoRA", "LoRACost", "MergedWeights", "PatchConfig", "PatchRun", "ServeTiming",
           "canvas_forward", "canvas_tiles", "conditioned_layers", "controlled_noise", "halo_layers", "load_lora",
           "lora_branches", "lora_targets", "merge_loras", "merge_patches", "random_lora", "sample_canvas",
           "sample_controlled", "sample_patch_parallel", "save_lora", "serve_bounded_async", "serve_with_loras",
           "split_patches", "train_lora", "unmerge_loras", "ClassifierResult", "DDPMResult", "DiffusionTrainConfig",
           "DigitClassifier", "Features", "NoiseSchedule", "ResBlock", "SampleQuality", "TaskRouting", "TinyUNet",
           "UNetConfig",
           "balanced_labels", "class_diversity", "classifier_confidence", "ddim_loop", "ddim_step", "ddim_timesteps",
           "ddpm_recipe", "digits_split", "feature_frechet_distance", "group_norm_silu", "group_norm_silu_reference",
           "pixel_deviation", "pretrained_classifier", "pretrained_ddpm", "sample", "sample_quality",
           "timestep_embedding", "train_ddpm"]

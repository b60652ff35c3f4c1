"""Where sampling time goes: time per UNet block, time per kind of op, and how much each block's
output drifts from one sampling step to the next.

Before making a sampler faster it pays to know what it spends its time on. A DDIM sampler of
``S`` steps calls the whole UNet ``S`` times, so its cost is ``S`` times the cost of one call
plus a small update per step; the acceleration methods of chapter 09 either shrink ``S`` or
skip part of the call. Three measurements guide the choice:

- :func:`profile_blocks`: forward hooks on every block (embedding, ``conv_in``, each residual
  block, the down- and up-samplers, the output head) read the clock when the block ends, for
  every step of a real sampling run; a block is charged the time since the previous one ended,
  so the glue between blocks counts too. Each block runs once per step, so the k-th call of a
  block is step k and the result is a (step x block) table.
- :func:`op_breakdown`: ``torch.profiler`` over a sampling run, with each operator's *self*
  time (time not spent in the operators it calls) grouped into kinds: convolution, GroupNorm,
  SiLU, linear, data movement (cat, interpolate, copies) and the rest.
- :func:`feature_change`: hooks again, now keeping each block's previous output and measuring
  ``||f_{s+1} - f_s|| / ||f_s||`` between adjacent steps. Faster Diffusion: Rethinking the
  Role of UNet Encoder in Diffusion Models (Li et al., 2023, arXiv:2312.09608)
  reports that on Stable Diffusion the encoder's features change gently from step to step
  while the decoder's vary a lot, and builds encoder propagation on that observation.

:func:`time_split` times one encoder call, one embedding, one decoder call and one DDIM update
at a given batch, the numbers an Amdahl-style bound on encoder reuse needs.
The samplers themselves are timed with :func:`labkit.runtime.interleaved_times`, which runs them
round-robin so that a load change on a shared machine hits all of them alike, and compared with
:func:`labkit.runtime.paired_speedup`, round by round.
Every timer takes ``clock="wall"`` or ``clock="cpu"``: the second reads the calling thread's CPU
time, which (with one PyTorch thread) excludes the time other processes held the core; on the
shared 2-core machines this book is built on, it turns speedups that scatter by tens of percent
into ones that repeat within a few percent.

What the miniature leaves out: attention blocks (where most of Stable Diffusion's time goes),
GPU timing (CUDA events and kernel-level traces), memory traffic as a separate cost, and the
variance across prompts that the paper averages over.

Shapes: B images, C channels, H x W image, S sampling steps, K blocks.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from labkit.runtime import clock_reader, device_syncer, interleaved_times
from labkit.validation import check_int

from .sampling import balanced_labels, sample
from .schedule import NoiseSchedule, ddim_step, ddim_timesteps
from .unet import TinyUNet

__all__ = ["BlockProfile", "FeatureChange", "OpBreakdown", "TimeSplit", "feature_change", "op_breakdown", "op_kind",
           "part_params", "profile_blocks", "time_split", "unet_blocks"]

PARTS = ("embed", "encoder", "decoder")

# Kinds of operators. Names are aten's without the namespace and leading underscores. The first three
# match by substring (so fused or backend-specific variants land there); the rest by exact name.
_BY_SUBSTRING = (("convolution", "conv"), ("GroupNorm", "group_norm"), ("SiLU", "silu"))
_BY_NAME = {
    "linear": {"linear", "addmm", "mm", "matmul", "t", "transpose", "embedding"},
    "data movement": {"cat", "upsample_nearest2d", "copy", "copy_", "to_copy", "to", "clone", "contiguous",
                      "empty", "empty_like", "empty_strided", "as_strided", "as_strided_", "expand", "view",
                      "reshape", "slice", "select", "unsqueeze", "index_select", "resize_", "flip"},
    "elementwise": {"add", "add_", "mul", "sub", "rsub", "div", "sqrt", "clamp", "exp", "sin", "cos", "neg",
                    "fill_", "floor", "remainder", "resolve_neg", "resolve_conj"},
}


def unet_blocks(model: TinyUNet) -> list[tuple[str, str, nn.Module]]:
    """The blocks a sampling step runs, in execution order, as ``(name, part, module)``.

    Parts: ``"embed"`` (``time_mlp`` and ``class_emb``, recomputed even when the encoder is
    reused), ``"encoder"`` (``conv_in``, the down path's blocks and down-samplers: what Faster
    Diffusion skips) and ``"decoder"`` (middle blocks, the up path and the output head). Names
    are those of ``model.named_modules()``.
    """
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    out: list[tuple[str, str, nn.Module]] = [("time_mlp", "embed", model.time_mlp)]
    if model.class_emb is not None:
        out.append(("class_emb", "embed", model.class_emb))
    out.append(("conv_in", "encoder", model.conv_in))
    for level, blocks in enumerate(model.down):
        out += [(f"down.{level}.{i}", "encoder", b) for i, b in enumerate(blocks)]
        if level < len(model.downsample):
            out.append((f"downsample.{level}", "encoder", model.downsample[level]))
    out += [(f"mid.{i}", "decoder", b) for i, b in enumerate(model.mid)]
    for level in reversed(range(len(model.up))):
        out += [(f"up.{level}.{i}", "decoder", b) for i, b in enumerate(model.up[level])]
        if level > 0:
            out.append((f"upsample.{level - 1}", "decoder", model.upsample[level - 1]))
    out.append(("head", "decoder", model.conv_out))  # GroupNorm + SiLU + conv_out, timed up to conv_out's end
    return out


def part_params(model: TinyUNet) -> dict[str, int]:
    """Parameters of each part of :func:`unet_blocks`: ``embed``, ``encoder`` and ``decoder`` (the rest)."""
    counts = {p: 0 for p in PARTS}
    for _, part, module in unet_blocks(model):
        if part != "decoder":
            counts[part] += sum(q.numel() for q in module.parameters())
    counts["decoder"] = model.n_params() - counts["embed"] - counts["encoder"]
    return counts


def _check_run(model: Any, n: int, steps: int, schedule: NoiseSchedule) -> None:
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    check_int("n", n, 1)
    check_int("steps", steps, 1, schedule.n_steps)


@dataclass(frozen=True)
class BlockProfile:
    """Seconds spent in each block at each step of one sampling run.

    Attributes:
        names, parts: the K blocks of :func:`unet_blocks`.
        timesteps: the training step ``t`` of each of the S sampling steps.
        seconds: (S, K) float64, time charged to each block (since the previous block ended).
        wall: seconds of the whole run (hooks included), for the share outside the blocks, on
            the same clock as ``seconds``.
    """

    names: tuple[str, ...]
    parts: tuple[str, ...]
    timesteps: tuple[int, ...]
    seconds: torch.Tensor
    wall: float

    @property
    def per_call(self) -> torch.Tensor:
        """(K,) median seconds per call of each block over the steps."""
        return self.seconds.median(dim=0).values

    def part_seconds(self, part: str) -> float:
        """Total seconds of one part (``"embed"``, ``"encoder"``, ``"decoder"``) over the run."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        cols = [k for k, p in enumerate(self.parts) if p == part]
        return float(self.seconds[:, cols].sum())

    @property
    def outside(self) -> float:
        """Seconds of the run outside every block: DDIM updates, concatenations, hooks, Python."""
        return max(self.wall - float(self.seconds.sum()), 0.0)


@torch.no_grad()
def profile_blocks(model: TinyUNet, schedule: NoiseSchedule, *, n: int = 100, steps: int = 50,
                   generator: torch.Generator | None = None, clock: str = "wall") -> BlockProfile:
    """Time every block of :func:`unet_blocks` at every step of a DDIM sampling run.

    Args:
        model: the UNet (put in eval mode).
        schedule: its noise schedule.
        n: B, images sampled at once.
        steps: S, DDIM steps.
        generator: CPU generator for the starting noise.
        clock: ``"wall"`` or ``"cpu"`` (the calling thread's CPU time), as for
            :func:`labkit.runtime.interleaved_times`.

    Returns:
        :class:`BlockProfile` with an (S, K) table of seconds.
    """
    _check_run(model, n, steps, schedule)
    blocks = unet_blocks(model)
    device = next(model.parameters()).device
    now = clock_reader(clock, device)
    sync = device_syncer(device)  # on a GPU, wait for each block's kernels
    last = [0.0]
    spent: list[list[float]] = [[] for _ in blocks]
    handles = []

    def first_pre(_m: nn.Module, _inp: Any) -> None:  # a step starts with the embedding
        sync()
        last[0] = now()

    handles.append(blocks[0][2].register_forward_pre_hook(first_pre))
    for k, (_, _, module) in enumerate(blocks):
        def post(_m: nn.Module, _inp: Any, _out: Any, k: int = k) -> None:
            sync()
            end = now()
            spent[k].append(end - last[0])  # since the previous block ended: glue included
            last[0] = end

        handles.append(module.register_forward_hook(post))
    try:
        t0 = now()
        sample(model, schedule, n=n, steps=steps, generator=generator)
        wall = now() - t0
    finally:
        for h in handles:
            h.remove()
    if any(len(s) != steps for s in spent):
        raise RuntimeError("a block did not run exactly once per step; was the model modified?")
    seconds = torch.tensor(spent, dtype=torch.float64).T  # (S, K)
    ts = tuple(int(t) for t in ddim_timesteps(schedule.n_steps, steps))
    return BlockProfile(names=tuple(b[0] for b in blocks), parts=tuple(b[1] for b in blocks), timesteps=ts,
                        seconds=seconds, wall=wall)


@dataclass(frozen=True)
class OpBreakdown:
    """Self CPU time of the operators of a sampling run, grouped by kind.

    Attributes:
        kinds: names of the groups, largest first.
        seconds: total self time of each group.
        ops: per aten op name, its self seconds (for a closer look).
    """

    kinds: tuple[str, ...]
    seconds: tuple[float, ...]
    ops: Mapping[str, float]

    def share(self, kind: str) -> float:
        """Fraction of the total self time spent in one kind of op."""
        if kind not in self.kinds:
            raise ValueError(f"kind must be one of {self.kinds}, got {kind!r}")
        return self.seconds[self.kinds.index(kind)] / max(sum(self.seconds), 1e-12)


def op_kind(name: str) -> str:
    """The kind of an operator by its profiler name (``"aten::mkldnn_convolution"`` -> ``"convolution"``).

    Kinds: convolution, GroupNorm, SiLU, linear, data movement, elementwise, other.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    op = name.split("::")[-1].lstrip("_").lower()
    for kind, key in _BY_SUBSTRING:
        if key in op:
            return kind
    for kind, names in _BY_NAME.items():
        if op in names:
            return kind
    return "other"


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: some profiler builds log every start and stop from C++.

    Python-level warnings and exceptions are unaffected (they do not write to the raw descriptor
    inside Jupyter, and exceptions propagate).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@torch.no_grad()
def op_breakdown(model: TinyUNet, schedule: NoiseSchedule, *, n: int = 100, steps: int = 50,
                 generator: torch.Generator | None = None) -> OpBreakdown:
    """Run a DDIM sampling under ``torch.profiler`` and group the operators' self time by kind.

    Args:
        model, schedule, n, steps, generator: as for :func:`profile_blocks`.

    Returns:
        :class:`OpBreakdown`. Self times exclude the time of nested operators, so the groups add
        up to the operators' total without double counting (``aten::conv2d`` itself is only
        dispatch; its work is in ``aten::mkldnn_convolution`` or a similar leaf).
    """
    _check_run(model, n, steps, schedule)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        sample(model, schedule, n=n, steps=steps, generator=generator)
    ops: dict[str, float] = {}
    for ev in prof.key_averages():
        ops[ev.key] = ops.get(ev.key, 0.0) + ev.self_cpu_time_total / 1e6  # profiler reports microseconds
    totals: dict[str, float] = {}
    for name, sec in ops.items():
        totals[op_kind(name)] = totals.get(op_kind(name), 0.0) + sec
    order = sorted(totals, key=totals.get, reverse=True)
    return OpBreakdown(kinds=tuple(order), seconds=tuple(totals[k] for k in order), ops=dict(ops))


@dataclass(frozen=True)
class FeatureChange:
    """Relative change of each block's output between adjacent sampling steps.

    Attributes:
        names, parts: the K blocks (the embedding excluded: it does not see the image).
        timesteps: the S training steps visited.
        change: (K, S - 1) float64, ``||f_{s+1} - f_s|| / ||f_s||`` (norms over the whole batch).
        x_change: (S - 1,) the same for the sampler's state ``x_t`` itself, as a yardstick.
    """

    names: tuple[str, ...]
    parts: tuple[str, ...]
    timesteps: tuple[int, ...]
    change: torch.Tensor
    x_change: torch.Tensor

    def part_mean(self, part: str) -> float:
        """Mean relative change over the blocks of one part and all step pairs."""
        if part not in ("encoder", "decoder"):
            raise ValueError(f"part must be 'encoder' or 'decoder', got {part!r}")
        rows = [k for k, p in enumerate(self.parts) if p == part]
        return float(self.change[rows].mean())

    def block(self, name: str) -> torch.Tensor:
        """(S - 1,) relative change of one block's output."""
        if name not in self.names:
            raise ValueError(f"unknown block {name!r}; known: {self.names}")
        return self.change[self.names.index(name)]


@torch.no_grad()
def feature_change(model: TinyUNet, schedule: NoiseSchedule, *, n: int = 100, steps: int = 50,
                   generator: torch.Generator | None = None, x_T: torch.Tensor | None = None) -> FeatureChange:
    """How much every block's output moves between adjacent DDIM steps (Faster Diffusion's analysis).

    The sampler runs normally; a hook on each block keeps its previous output and records
    ``||f_{s+1} - f_s||_2 / ||f_s||_2`` (one number per block and step pair, over the batch).

    Args:
        model, schedule, n, steps, generator: as for :func:`profile_blocks`.
        x_T: (B, C, H, W) starting noise (default: drawn from ``generator``).

    Returns:
        :class:`FeatureChange`, with a (K, S - 1) table.
    """
    _check_run(model, n, steps, schedule)
    check_int("steps", steps, 2, schedule.n_steps)  # a change needs two steps
    blocks = [b for b in unet_blocks(model) if b[1] != "embed"]
    prev: dict[int, torch.Tensor] = {}
    changes: list[list[float]] = [[] for _ in blocks]
    handles = []
    for k, (_, _, module) in enumerate(blocks):
        def post(_m: nn.Module, _inp: Any, out: torch.Tensor, k: int = k) -> None:
            out = out.detach().double()
            if k in prev:
                changes[k].append(float((out - prev[k]).norm() / prev[k].norm().clamp_min(1e-12)))
            prev[k] = out

        handles.append(module.register_forward_hook(post))
    try:
        _, traj = sample(model, schedule, n=n, steps=steps, generator=generator, x_T=x_T, return_trajectory=True)
    finally:
        for h in handles:
            h.remove()
    xs = [x.double() for x in traj[:-1]]  # the S states the network saw
    x_change = torch.tensor([float((b - a).norm() / a.norm()) for a, b in zip(xs, xs[1:])], dtype=torch.float64)
    ts = tuple(int(t) for t in ddim_timesteps(schedule.n_steps, steps))
    return FeatureChange(names=tuple(b[0] for b in blocks), parts=tuple(b[1] for b in blocks), timesteps=ts,
                         change=torch.tensor(changes, dtype=torch.float64), x_change=x_change)


@dataclass(frozen=True)
class TimeSplit:
    """Median seconds of the pieces of one sampling step at batch B.

    ``encode`` includes the embedding; ``embed`` is the embedding alone (a reused encoder still
    needs it for the decoder); ``update`` is one DDIM step. ``skippable_share`` is the fraction
    of a step that encoder reuse removes, ``(encode - embed) / (encode + decode + update)``,
    computed within each round (the four pieces ran back to back) and then the median over
    rounds, so a burst of load on a shared machine does not tilt it.
    """

    encode: float
    embed: float
    decode: float
    update: float
    skippable_share: float

    @property
    def step(self) -> float:
        """One full sampling step: encoder + decoder + update."""
        return self.encode + self.decode + self.update


@torch.no_grad()
def time_split(model: TinyUNet, schedule: NoiseSchedule, *, n: int = 100, repeats: int = 50,
               t: int | None = None, clock: str = "wall") -> TimeSplit:
    """Median times of encoder, embedding, decoder and DDIM update, measured interleaved.

    Args:
        model, schedule: the UNet and its schedule.
        n: B.
        repeats: rounds; each round times the four pieces once, in turn.
        t: the step the network is called at (default T / 2; the cost does not depend on it).
        clock: ``"wall"`` or ``"cpu"``, as for :func:`labkit.runtime.interleaved_times`.

    Returns:
        :class:`TimeSplit`.
    """
    _check_run(model, n, 1, schedule)
    check_int("repeats", repeats, 1)
    T = schedule.n_steps
    t = T // 2 if t is None else check_int("t", t, 1, T - 1)
    cfg = model.cfg
    model.eval()
    g = torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(dev)
    tb = torch.full((n,), t, dtype=torch.long, device=dev)
    y = balanced_labels(n, cfg.n_classes, device=dev) if cfg.n_classes is not None else None
    feats = model.encode(x, tb, y)
    eps = model.decode(feats)
    pieces: dict[str, Callable[[], Any]] = {
        "encode": lambda: model.encode(x, tb, y),
        "embed": lambda: model.embed(tb, y),
        "decode": lambda: model.decode(feats),
        "update": lambda: ddim_step(x, eps, t, t - 1, schedule),
    }
    tm = interleaved_times(pieces, repeats=repeats, warmup=2, device=dev, clock=clock)
    shares = [max(e - m, 0.0) / (e + d + u) for e, m, d, u in
              zip(tm["encode"].times, tm["embed"].times, tm["decode"].times, tm["update"].times)]
    return TimeSplit(**{k: v.median for k, v in tm.items()}, skippable_share=statistics.median(shares))

"""Patch parallelism for the tiny UNet: DistriFusion's stale halos and PCPP's partial conditioning.

Papers: *DistriFusion: Distributed Parallel Inference for High-Resolution Diffusion Models*
(Li et al., 2024, arXiv:2402.19481) and *Partially Conditioned Patch Parallelism for Accelerated
Diffusion Model Inference* (PCPP; Zhang, Luo and Lu, 2024, arXiv:2412.02962).

Intuition. Cut the image into P vertical strips and give each device one strip: every device
runs the whole UNet, but on 1/P of the pixels. A 3 x 3 convolution at a strip's edge needs one
column of its neighbour's activation (the *halo*), layer after layer, and GroupNorm needs the
statistics of the whole image. Waiting for those at every layer would serialise the devices.
DistriFusion's *displaced* patch parallelism uses the neighbours' activations of the *previous*
sampling step instead, which were sent while the device computed: adjacent steps differ little,
so a one-step-stale halo is almost right, and the exchange hides behind computation. Its
implementation gathers what each device sends with an all-gather, so every device receives every
other device's tensors. PCPP conditions each patch on only part of its neighbours and exchanges
with neighbours alone (point to point), which cuts the bytes moved (about 70 % in the paper).

In this miniature (a UNet without attention, where DistriFusion and PCPP spend most of their bytes
on keys and values) the only cross-patch paths are the halos of the 3 x 3 convolutions and the
GroupNorm statistics, so *partial conditioning* means: exchange the halos of only a fraction of
the convolution layers; the others pad the strip with a copy of its own edge column (``fill``).
The first layer reads the latent itself, which DistriFusion gathers whole after every step, so its
halo is always fresh. Every run counts the bytes two transports would move for the same tensors:
an all-gather (DistriFusion) and neighbour-to-neighbour messages (PCPP).

The devices are simulated in one process, in lock-step, layer by layer: each "device" is an entry
of a Python list, and a halo is a slice of another entry (fresh) or of a buffer kept from the
previous step (stale). Nothing runs concurrently, so the simulation measures bytes and deviation,
not speed.

What the miniature leaves out: attention (and PCPP's partial keys/values), splitting along both
axes, real asynchronous communication, and the speedup itself.

Shapes: B batch, C channels, H x W canvas, P patches (devices), w = W / P patch width, S steps.
Section: chapter 09, "Serving: add-ons and patch parallelism".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from labkit.validation import check_int

from .sampling import ddim_loop, sample_labels
from .schedule import NoiseSchedule
from .unet import ResBlock, TinyUNet

__all__ = ["PatchConfig", "PatchRun", "canvas_forward", "canvas_tiles", "conditioned_layers", "halo_layers",
           "merge_patches", "sample_canvas", "sample_patch_parallel", "split_patches"]

_FILLS = ("replicate", "zeros")


@dataclass(frozen=True)
class PatchConfig:
    """How the P simulated devices condition on each other.

    Attributes:
        n_patches: P, strips along the width.
        stale: use the neighbours' halos and statistics of the previous step (DistriFusion's
            displaced patch parallelism); False exchanges fresh ones at every layer (exact).
        warmup: the first ``warmup`` steps are synchronous (fresh), to fill the buffers.
        conditioned: fraction in [0, 1] of the 3 x 3 convolutions whose halos are exchanged,
            taken in the order of :func:`halo_layers` (PCPP's knob; 1 = DistriFusion).
        fill: what an unexchanged halo becomes: ``"replicate"`` (the strip's own edge column) or
            ``"zeros"`` (as if the strip edge were the image edge).
        exchange_norm: combine GroupNorm statistics over all patches (else each patch uses its own).
    """

    n_patches: int = 4
    stale: bool = True
    warmup: int = 1
    conditioned: float = 1.0
    fill: str = "replicate"
    exchange_norm: bool = True

    def __post_init__(self) -> None:
        check_int("n_patches", self.n_patches, 1)
        check_int("warmup", self.warmup, 0)
        for name in ("stale", "exchange_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        c = self.conditioned
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
            raise ValueError(f"conditioned must be a fraction in [0, 1], got {c!r}")
        if self.fill not in _FILLS:
            raise ValueError(f"fill must be one of {_FILLS}, got {self.fill!r}")


@dataclass(frozen=True, eq=False)
class PatchRun:
    """A patch-parallel sampling run.

    Attributes:
        images: (B, C, H, W) in [-1, 1], the strips put back together.
        bytes_p2p: per step, bytes sent neighbour to neighbour (halos each neighbour needs, plus
            GroupNorm statistics sent to every other device).
        bytes_allgather: per step, bytes an all-gather of the same tensors moves (every device
            receives both edge columns of every other device).
        layers: the 3 x 3 convolutions whose halos were exchanged.
        breakdown: run totals ``(p2p, all-gather)`` per kind of tensor: ``"latent"`` (the first
            layer's input, exchanged fresh every step), ``"halos"`` (deeper layers' edge
            columns) and ``"norm"`` (GroupNorm sums, sent to every device by both transports).
    """

    images: torch.Tensor
    bytes_p2p: tuple[int, ...]
    bytes_allgather: tuple[int, ...]
    layers: tuple[str, ...]
    breakdown: dict[str, tuple[int, int]]

    @property
    def total_p2p(self) -> int:
        """Bytes of the whole run, neighbour to neighbour."""
        return sum(self.bytes_p2p)

    @property
    def total_allgather(self) -> int:
        """Bytes of the whole run with an all-gather."""
        return sum(self.bytes_allgather)


def split_patches(x: torch.Tensor, n_patches: int) -> list[torch.Tensor]:
    """Cut a canvas into ``n_patches`` vertical strips of equal width.

    Args:
        x: (B, C, H, W).
        n_patches: P, must divide W.

    Returns:
        P tensors (B, C, H, W / P), left to right (views of ``x``).
    """
    P = check_int("n_patches", n_patches, 1)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[3] % P:
        raise ValueError(f"n_patches={P} must divide the width W={x.shape[3]}")
    return list(x.split(x.shape[3] // P, dim=3))


def merge_patches(patches: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`split_patches`: concatenate strips along the width, (B, C, H, W)."""
    if not patches:
        raise ValueError("patches must hold at least one tensor")
    return torch.cat(patches, dim=3)


def canvas_tiles(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Cut canvases into ``size x size`` tiles so the 8 x 8 digit classifier can judge them.

    Args:
        images: (B, C, H, W), H and W multiples of ``size``.

    Returns:
        (B * H/size * W/size, C, size, size), tiles of each image row by row.
    """
    size = check_int("size", size, 1)
    if images.dim() != 4 or images.shape[2] % size or images.shape[3] % size:
        raise ValueError(f"images must be (B, C, H, W) with H, W multiples of {size}, got {tuple(images.shape)}")
    B, C = images.shape[:2]
    tiles = images.unfold(2, size, size).unfold(3, size, size)  # (B, C, H/s, W/s, s, s)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, C, size, size)


def halo_layers(model: TinyUNet) -> list[str]:
    """Names of the convolutions wider than 1 x 1 (those that need halos), in execution order."""
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    names: list[str] = []
    with torch.no_grad():
        _walk(model, [torch.zeros(1, model.cfg.in_channels, 2 ** len(model.cfg.channel_mults),
                                  2 ** len(model.cfg.channel_mults))],
              model.embed(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
                          if model.cfg.n_classes is not None else None), _Recorder(names))
    return names


def conditioned_layers(model: TinyUNet, fraction: float) -> tuple[str, ...]:
    """The ``round(fraction * L)`` halo layers PCPP-style partial conditioning keeps, outermost first.

    The L layers of :func:`halo_layers` are taken from both ends of the network towards the
    bottleneck: ``conv_in``, ``conv_out``, the first block's convolutions, the last block's, and
    so on. The layers nearest the pixels go first because an edge column filled by guesswork there
    lands on the output directly (the notebook measures it layer by layer).

    Args:
        model: the UNet.
        fraction: in [0, 1].

    Returns:
        Layer names, in the order they are added as ``fraction`` grows.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    names = halo_layers(model)
    order = [names[i // 2] if i % 2 == 0 else names[-1 - i // 2] for i in range(len(names))]  # outside in
    return tuple(order[: int(math.floor(fraction * len(names) + 0.5))])


# --- the UNet, walked layer by layer over a list of patches ------------------------------------


class _Ops:
    """Single device: each list holds one tensor and the layers run as themselves."""

    def conv(self, name: str, conv: nn.Conv2d, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for x in xs]

    def norm(self, name: str, norm: nn.GroupNorm, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [norm(x) for x in xs]


class _Recorder(_Ops):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def conv(self, name: str, conv: nn.Conv2d, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if conv.kernel_size[1] > 1:
            self.names.append(name)
        return super().conv(name, conv, xs)


def _res(block: ResBlock, xs: list[torch.Tensor], emb: torch.Tensor, ops: _Ops, name: str) -> list[torch.Tensor]:
    """ResBlock.forward, patch-wise: the same layers in the same order."""
    if block.skip:
        return xs
    h = [F.silu(a) for a in ops.norm(f"{name}.norm1", block.norm1, xs)]
    h = ops.conv(f"{name}.conv1", block.conv1, h)
    e = block.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C, 1, 1): no halo needed
    h = [F.silu(a) for a in ops.norm(f"{name}.norm2", block.norm2, [a + e for a in h])]
    h = ops.conv(f"{name}.conv2", block.conv2, h)
    return [block.shortcut(x) + a for x, a in zip(xs, h)]  # the shortcut is 1 x 1: local


def _walk(model: TinyUNet, xs: list[torch.Tensor], emb: torch.Tensor, ops: _Ops) -> list[torch.Tensor]:
    """TinyUNet.decode(TinyUNet.encode(x)), spelled out so each layer can see its neighbours."""
    h = ops.conv("conv_in", model.conv_in, xs)
    skips = [h]
    for level, blocks in enumerate(model.down):
        for i, block in enumerate(blocks):
            h = _res(block, h, emb, ops, f"down.{level}.{i}")
            skips.append(h)
        if level < len(model.downsample):
            h = ops.conv(f"downsample.{level}", model.downsample[level], h)  # (B, c, h/2, w/2)
            skips.append(h)
    for i, block in enumerate(model.mid):
        h = _res(block, h, emb, ops, f"mid.{i}")
    for level in reversed(range(len(model.up))):
        for i, block in enumerate(model.up[level]):
            skip = skips.pop()
            h = _res(block, [torch.cat([a, s], dim=1) for a, s in zip(h, skip)], emb, ops, f"up.{level}.{i}")
        if level > 0:
            h = [F.interpolate(a, scale_factor=2.0, mode="nearest") for a in h]  # local per patch
            h = ops.conv(f"upsample.{level - 1}", model.upsample[level - 1], h)
    h = [F.silu(a) for a in ops.norm("norm_out", model.norm_out, h)]
    return ops.conv("conv_out", model.conv_out, h)


def _check_canvas(model: TinyUNet, x: torch.Tensor, n_patches: int) -> None:
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    cfg = model.cfg
    factor = 2 ** (len(cfg.channel_mults) - 1)
    if x.dim() != 4 or x.shape[1] != cfg.in_channels:
        raise ValueError(f"x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
    H, W = x.shape[2:]
    if H % factor or W % factor:
        raise ValueError(f"H and W must be multiples of 2**(levels - 1) = {factor}, got {H} x {W}")
    if W % n_patches or (W // n_patches) % factor:
        raise ValueError(f"n_patches={n_patches} must divide W={W} into strips whose width is a multiple of "
                         f"{factor} (the UNet halves the width {len(cfg.channel_mults) - 1} time(s))")


@torch.no_grad()
def canvas_forward(model: TinyUNet, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The UNet's noise prediction on a canvas of any size (it is fully convolutional).

    :meth:`TinyUNet.encode` insists on ``image_size x image_size`` inputs; this runs the same
    layers on an H x W canvas, with H and W multiples of ``2 ** (levels - 1)``. On an
    ``image_size`` square it equals ``model(x, t, y)``.

    Args:
        model: the noise predictor.
        x: (B, C, H, W) noisy canvases.
        t: (B,) steps; y: (B,) labels (one class per canvas) or None.

    Returns:
        eps, (B, C, H, W).
    """
    _check_canvas(model, x, 1)
    return _walk(model, [x], model.embed(t, y), _Ops())[0]


class _PatchOps(_Ops):
    """P simulated devices in lock-step; halos fresh or from the previous step; bytes counted."""

    def __init__(self, config: PatchConfig, layers: frozenset[str], first: str) -> None:
        self.config, self.layers, self.first = config, layers, first
        self.edges: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # last step's (left, right) columns
        self.stats: dict[str, list[torch.Tensor]] = {}  # last step's GroupNorm (sum, sum of squares)
        self.fresh = True
        self.sent: dict[str, list[int]] = {}  # category -> [p2p bytes, all-gather bytes] of this step

    def count(self, category: str, p2p: int, allgather: int) -> None:
        tally = self.sent.setdefault(category, [0, 0])
        tally[0] += p2p
        tally[1] += allgather

    def conv(self, name: str, conv: nn.Conv2d, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        kw = conv.kernel_size[1]
        if kw == 1:
            return [conv(x) for x in xs]
        if kw != 3 or conv.padding != (1, 1):
            raise ValueError(f"{name}: only 1 x 1 and padded 3 x 3 convolutions are supported, got {conv}")
        P = len(xs)
        # show: start halo
        # what each device would send: (B, C, h, 1) each
        edges = [(x[..., :1], x[..., -1:]) for x in xs]
        # The first layer reads the latent, which is exchanged after every step
        # (DistriFusion gathers it whole): always fresh. Deeper layers read last
        # step's columns once stale.
        stale = not self.fresh and name != self.first and name in self.edges
        source = self.edges[name] if stale else edges
        self.edges[name] = edges
        exchanged = name in self.layers and P > 1  # partial conditioning
        if exchanged:
            col = edges[0][0].numel() * edges[0][0].element_size()  # one halo column
            # a stride-2 window over an even strip never reads its right halo
            sides = 1 + int(conv.stride[1] == 1)
            if name == self.first:  # all-gather: every device gets every latent strip
                strip = xs[0].numel() * xs[0].element_size()
                self.count("latent", (P - 1) * col * sides, P * (P - 1) * strip)
            else:  # all-gather: every device gets both edges of every other device
                self.count("halos", (P - 1) * col * sides, P * (P - 1) * 2 * col)
        out = []
        for p, x in enumerate(xs):
            zero = torch.zeros_like(x[..., :1])
            replicate = self.config.fill == "replicate"
            own_l, own_r = (x[..., :1], x[..., -1:]) if replicate else (zero, zero)
            left = zero if p == 0 else (source[p - 1][1] if exchanged else own_l)
            right = zero if p == P - 1 else (source[p + 1][0] if exchanged else own_r)
            ext = torch.cat([left, x, right], dim=3)  # (B, C, h, w + 2)
            out.append(F.conv2d(ext, conv.weight, conv.bias, conv.stride, (1, 0)))
        # show: end halo
        return out

    def norm(self, name: str, norm: nn.GroupNorm, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        P, G = len(xs), norm.num_groups
        if P == 1 or not self.config.exchange_norm:
            return [norm(x) for x in xs]
        B = xs[0].shape[0]
        grouped = [x.reshape(B, G, -1) for x in xs]  # (B, G, C/G * h * w)
        mine = [torch.stack([g.sum(-1), g.square().sum(-1)]) for g in grouped]  # (2, B, G) per device
        others = mine if self.fresh or name not in self.stats else self.stats[name]
        self.stats[name] = mine
        nbytes = P * (P - 1) * mine[0].numel() * mine[0].element_size()  # statistics go to every device
        self.count("norm", nbytes, nbytes)
        count = sum(g.shape[-1] for g in grouped)
        out = []
        for p, (x, g) in enumerate(zip(xs, grouped)):
            # DistriFusion's corrected asynchronous GroupNorm: own statistics fresh, the others' stale
            total = mine[p] + sum(others[q] for q in range(P) if q != p)  # (2, B, G)
            mean = total[0] / count
            var = (total[1] / count - mean.square()).clamp(min=0.0)
            normed = (g - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)  # (B, G, C/G * h * w)
            out.append(normed.reshape_as(x) * norm.weight[:, None, None] + norm.bias[:, None, None])
        return out


@torch.no_grad()
def sample_canvas(model: TinyUNet, schedule: NoiseSchedule, *, x_T: torch.Tensor, steps: int = 20,
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling of whole canvases on one device: the reference for patch parallelism.

    Args:
        model: the noise predictor.
        schedule: its schedule.
        x_T: (B, C, H, W) starting noise.
        steps: S.
        labels: (B,) one class per canvas (default 0, 1, 2, ...).

    Returns:
        (B, C, H, W) in [-1, 1].
    """
    _check_canvas(model, x_T, 1)
    model.eval()
    y = sample_labels(model, labels, x_T.shape[0])
    return ddim_loop(lambda x, t, i: canvas_forward(model, x, t, y), x_T, schedule, steps)


@torch.no_grad()
def sample_patch_parallel(model: TinyUNet, schedule: NoiseSchedule, *, x_T: torch.Tensor, steps: int = 20,
                          labels: torch.Tensor | None = None, config: PatchConfig = PatchConfig()) -> PatchRun:
    """DDIM sampling with the canvas split over P simulated devices (DistriFusion / PCPP).

    Each device holds one strip of ``x_t`` and runs every layer on it. At a 3 x 3 convolution
    whose halo is exchanged it pads its strip with its neighbours' edge columns, from this step
    (``stale=False``, or during the ``warmup`` steps) or from the previous one (DistriFusion's
    displaced patch parallelism); an unexchanged halo is filled from the strip itself (PCPP's
    partial conditioning). GroupNorm combines every device's sums, the others' one step stale.
    The DDIM update is local to each strip.

    Args:
        model: the noise predictor.
        schedule: its schedule.
        x_T: (B, C, H, W) starting noise (the same as :func:`sample_canvas`'s, to compare).
        steps: S.
        labels: (B,) one class per canvas.
        config: P, staleness, the conditioned fraction, the fill.

    Returns:
        :class:`PatchRun` with the images and the bytes of each step under both transports.

    Shapes:
        each device's strip: (B, C, H, W / P).
    """
    if not isinstance(config, PatchConfig):
        raise TypeError(f"config must be a PatchConfig, got {type(config).__name__}")
    _check_canvas(model, x_T, config.n_patches)
    model.eval()
    y = sample_labels(model, labels, x_T.shape[0])
    layers = conditioned_layers(model, config.conditioned)
    ops = _PatchOps(config, frozenset(layers), halo_layers(model)[0])
    per_step: list[dict[str, list[int]]] = []

    def before_step(i: int) -> None:
        ops.fresh = not config.stale or i < config.warmup
        ops.sent = {}  # filled by this step's exchanges
        per_step.append(ops.sent)

    def eps_fn(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        emb = model.embed(t, y)  # every device computes it
        eps = _walk(model, split_patches(x, config.n_patches), emb, ops)  # P strips (B, C, H, w)
        # The DDIM update is elementwise, so running it on the reassembled canvas gives each
        # strip exactly what its own device would compute.
        return merge_patches(eps)

    images = ddim_loop(eps_fn, x_T, schedule, steps, before_step=before_step)
    breakdown = {k: (sum(s.get(k, [0, 0])[0] for s in per_step), sum(s.get(k, [0, 0])[1] for s in per_step))
                 for k in ("latent", "halos", "norm")}
    return PatchRun(images=images,
                    bytes_p2p=tuple(sum(v[0] for v in s.values()) for s in per_step),
                    bytes_allgather=tuple(sum(v[1] for v in s.values()) for s in per_step),
                    layers=layers, breakdown=breakdown)

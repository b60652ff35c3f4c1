"""The tiny UNet: the diffusion lab animal, split into an encoder and a decoder.

A UNet (Ronneberger, Fischer and Brox, 2015, arXiv:1505.04597) contracts an image through a
down path, then expands it through an up path that concatenates the down path's activations of
the same resolution (the "long skips"), so fine detail does not have to squeeze through the
bottleneck. DDPM (Ho et al., 2020, arXiv:2006.11239, Appendix B) made it the noise predictor of
diffusion models: residual blocks with GroupNorm, a sinusoidal embedding of the step ``t`` added
inside every block, and here also a learned embedding of the digit class.

The model is built for the acceleration chapter, which needs three handles:

- :meth:`TinyUNet.encode` / :meth:`TinyUNet.decode`. Faster Diffusion (Li et al., 2023,
  arXiv:2312.09608) observes that the encoder's features change little between adjacent
  sampling steps, reuses them, and runs only the decoder. Here the *encoder* is the embedding,
  ``conv_in`` and the down path (the down blocks, as in the paper); the *decoder* is the middle
  block, the up path and the output head. The middle block is counted with the decoder so that
  reuse freezes only the down path's features and the bottleneck is still recomputed with the
  current step's embedding.
- :meth:`TinyUNet.res_blocks`: the residual blocks by name, in execution order, for layer
  pruning in the manner of A-SDM and LAPTOP-Diff (Zhang et al., 2024, arXiv:2404.11098); a
  block whose ``skip`` is set becomes the identity.
- name-seeded initialisation (:meth:`TinyUNet.reset_parameters`), so a pruned or modified copy
  starts from the same weights wherever it has the same parameter.

The default (``base_channels=24``, two levels) has 342k parameters.

What the miniature leaves out: self-attention (at 4 x 4 pixels a 3 x 3 convolution already sees
most of the image), dropout, classifier-free guidance, and anything beyond 8 x 8 digits in
practice (larger sizes work but train too slowly on CPU).

Shapes: B batch, C channels, H x W image, E embedding width (``time_dim``).
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from labkit.diffusion.norm import group_norm_silu
from labkit.diffusion.skipscale import check_skip_scale, skip_scales
from labkit.diffusion.routing import TaskRouting, channel_mask
from labkit.validation import check_int

__all__ = ["OPT_IN_DEFAULTS", "Features", "ResBlock", "TinyUNet", "UNetConfig", "timestep_embedding"]

#: Fields added to :class:`UNetConfig` after weights were first cached, with the default that
#: reproduces the original architecture; :meth:`UNetConfig.as_dict` omits them at that default.
OPT_IN_DEFAULTS: dict[str, object] = {
    "task_routing": None,  # DTR channel masks per step (chapter 08)
    "cond_channels": 0,  # condition channels at conv_in (super-resolution, chapter 08)
    "skip_scale": None,  # long-skip scaling (ScaleLong, chapter 08)
}


@dataclass(frozen=True)
class UNetConfig:
    """Everything that determines a tiny UNet's architecture (hashable, so it keys cached weights).

    Attributes:
        image_size: H = W; must be divisible by ``2 ** (len(channel_mults) - 1)``.
        in_channels: C of the images (1 for digits).
        base_channels: width of the first level.
        channel_mults: width of each level as a multiple of ``base_channels``; a level halves the
            resolution of the previous one.
        n_res: residual blocks per level on the way down (the way up has ``n_res + 1``).
        time_dim: E, width of the step (and class) embedding.
        n_classes: number of classes for class conditioning, or None for an unconditional model.
        groups: GroupNorm groups; every width must be divisible by it.
        cond_channels: opt-in; extra input channels (a condition image, e.g. the upsampled
            low-resolution image) concatenated after the ``in_channels`` of ``x`` at ``conv_in``;
            the output keeps ``in_channels``. Default 0 (no condition).
        skip_scale: opt-in; ScaleLong's scaling of the long skips before the decoder
            concatenates them (:mod:`labkit.diffusion.skipscale`): a ``kappa > 0`` multiplies
            the ``i``-th skip (``i = 0`` the outermost) by ``kappa ** i``, ``"sqrt2"`` every skip
            by ``1/sqrt(2)``. Default None (unscaled).
        task_routing: opt-in; Denoising Task Routing (:mod:`labkit.diffusion.routing`): every
            residual block gates its branch's input with the step's sliding channel window.
            Computed from ``t``, no parameters. Default None (every channel at every step).
    """

    image_size: int = 8
    in_channels: int = 1
    base_channels: int = 24
    channel_mults: tuple[int, ...] = (1, 2)
    n_res: int = 1
    time_dim: int = 64
    n_classes: int | None = 10
    groups: int = 8
    task_routing: TaskRouting | None = None
    cond_channels: int = 0
    skip_scale: float | str | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "base_channels", "n_res", "time_dim", "groups"):
            check_int(name, getattr(self, name), 1)
        check_int("cond_channels", self.cond_channels, 0)
        object.__setattr__(self, "skip_scale", check_skip_scale(self.skip_scale))
        if self.n_classes is not None:
            check_int("n_classes", self.n_classes, 1)
        mults = tuple(self.channel_mults)
        object.__setattr__(self, "channel_mults", mults)
        if not mults:
            raise ValueError("channel_mults must name at least one level, got ()")
        for i, m in enumerate(mults):
            check_int(f"channel_mults[{i}]", m, 1)
        factor = 2 ** (len(mults) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size must be divisible by 2**(levels - 1) = {factor} for "
                             f"channel_mults={mults}, got {self.image_size}")
        for width in self.widths:
            if width % self.groups:
                raise ValueError(f"groups={self.groups} must divide every level width {self.widths}")
        if self.base_channels % 2:
            raise ValueError(f"base_channels must be even (it is the sinusoid width), got {self.base_channels}")
        if self.task_routing is not None and not isinstance(self.task_routing, TaskRouting):
            raise TypeError(f"task_routing must be a TaskRouting or None, got {type(self.task_routing).__name__}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of each level."""
        return tuple(self.base_channels * m for m in self.channel_mults)

    def as_dict(self) -> dict:
        """Plain dict of the fields (for cache keys and printing).

        Opt-in fields (those in :data:`OPT_IN_DEFAULTS`) are left out while they hold their
        default, so configurations that do not use them keep the keys of their cached weights.
        """
        fields = asdict(self)
        for name, default in OPT_IN_DEFAULTS.items():
            if name in fields and fields[name] == default:
                del fields[name]
        return fields


class Features(NamedTuple):
    """What the encoder hands to the decoder.

    Attributes:
        h: the bottleneck input, (B, C_last, H / 2**(L-1), W / 2**(L-1)).
        skips: the down path's activations in the order they were made (the decoder pops them
            from the end), one per long skip.
        emb: the step (and class) embedding, (B, E).
        t: the steps, (B,), for models with task routing (the decoder's masks); None otherwise.
    """

    h: torch.Tensor
    skips: list[torch.Tensor]
    emb: torch.Tensor
    t: torch.Tensor | None = None


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the step, as the Transformer embeds positions (DDPM Appendix B).

    Args:
        t: steps (ints or floats).
        dim: output width (even).
        max_period: longest wavelength.

    Returns:
        ``[sin(t w_k), cos(t w_k)]`` with ``w_k = max_period ** (-k / (dim / 2))``.

    Shapes:
        t: (B,); result: (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``F.silu(norm(x))`` through the fused op; the reference while autograd records (Triton is forward-only)."""
    backend = "reference" if torch.is_grad_enabled() else None
    return group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, backend=backend)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> Conv3x3 (+ embedding) -> GroupNorm -> SiLU -> Conv3x3, plus the input.

    The embedding enters as a per-channel bias after the first convolution. When the width
    changes, the residual goes through a 1 x 1 convolution.

    Setting ``skip = True`` removes the block: it returns its input unchanged. That is only
    meaningful when the input and output widths agree (otherwise the next layer would receive the
    wrong number of channels), so it raises ``ValueError`` for a block that changes width.

    Args:
        in_ch, out_ch: input and output channels.
        emb_dim: E.
        groups: GroupNorm groups.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.norm1 = nn.GroupNorm(math.gcd(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self._skip = False
        self.routing: TaskRouting | None = None  # set by TinyUNet from UNetConfig.task_routing

    @property
    def can_skip(self) -> bool:
        """Whether the block keeps the width, so that removing it leaves a valid network."""
        return self.in_ch == self.out_ch

    @property
    def skip(self) -> bool:
        """When True the block is the identity (pruned)."""
        return self._skip

    @skip.setter
    def skip(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"skip must be a bool, got {type(value).__name__}")
        if value and not self.can_skip:
            raise ValueError(f"cannot skip a block that changes width ({self.in_ch} -> {self.out_ch} channels)")
        self._skip = value

    def forward(self, x: torch.Tensor, emb: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """(B, in_ch, H, W), (B, E) -> (B, out_ch, H, W); ``t`` (B,) steps, needed with ``routing``."""
        if self._skip:
            return x
        inner = x
        if self.routing is not None:  # DTR: the branch sees only the step's channel window
            if t is None:
                raise ValueError("this block routes channels by step (task_routing); pass t")
            inner = x * channel_mask(t, self.in_ch, self.routing)[:, :, None, None]
        h = self.conv1(_norm_silu(self.norm1, inner))
        # (B, out_ch, 1, 1), broadcast over H, W
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(_norm_silu(self.norm2, h))
        return self.shortcut(x) + h


class TinyUNet(nn.Module):
    """Noise predictor ``eps(x_t, t, y)`` for small images, with an explicit encoder/decoder split.

    ``forward(x, t, y) == decode(encode(x, t, y))``. With ``channel_mults=(1, 2)`` and ``n_res=1``
    the layers are::

        encoder: embed(t, y); conv_in; down.0 = [res 24->24]; downsample 8->4; down.1 = [res 24->48]
        decoder: mid = [res 48->48, res 48->48]; up.1 = 2 x [res (48+skip)->48]; upsample 4->8;
                 up.0 = 2 x [res (24+skip)->24]; GroupNorm; SiLU; conv_out

    (the up path has one more block per level than the down path, each eating one long skip).

    Args:
        cfg: the architecture.
        init_seed: seed of :meth:`reset_parameters` (default ``torch.initial_seed()``).
    """

    def __init__(self, cfg: UNetConfig = UNetConfig(), *, init_seed: int | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, UNetConfig):
            raise TypeError(f"cfg must be a UNetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        C, E, G, widths = cfg.base_channels, cfg.time_dim, cfg.groups, cfg.widths
        self.time_mlp = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        self.class_emb = nn.Embedding(cfg.n_classes, E) if cfg.n_classes is not None else None
        self.conv_in = nn.Conv2d(cfg.in_channels + cfg.cond_channels, C, 3, padding=1)

        skip_chs = [C]  # widths of the long skips, in the order the encoder makes them
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = C
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(cfg.n_res):
                blocks.append(ResBlock(ch, width, E, G))
                ch = width
                skip_chs.append(ch)
            self.down.append(blocks)
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, E, G), ResBlock(ch, ch, E, G)])
        #: coefficient of each long skip, in the encoder's order (all 1 unless cfg.skip_scale)
        self.skip_scales = skip_scales(len(skip_chs), cfg.skip_scale)

        self.up = nn.ModuleList()  # up[level], run from the last level back to the first
        self.upsample = nn.ModuleList()
        ups: list[nn.ModuleList] = []
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.n_res + 1):
                blocks.append(ResBlock(ch + skip_chs.pop(), widths[level], E, G))
                ch = widths[level]
            ups.append(blocks)
        self.up.extend(reversed(ups))  # stored by level so names read up.0 (full size) .. up.L-1
        for level in range(len(widths) - 1):
            self.upsample.append(nn.Conv2d(widths[level + 1], widths[level + 1], 3, padding=1))
        self.norm_out = nn.GroupNorm(G, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)
        for _, block in self.res_blocks():
            block.routing = cfg.task_routing
        self.reset_parameters(torch.initial_seed() if init_seed is None else init_seed)

    def reset_parameters(self, seed: int) -> None:
        """Initialise every parameter from a generator seeded by ``seed`` and the parameter's *name*.

        Weights are uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default scale), biases zero,
        norms identity, embeddings N(0, 1). As in DDPM, the last convolution of each residual
        block and ``conv_out`` start at zero, so every block starts as the identity and the
        untrained network predicts zero noise.
        """
        for name, param in self.named_parameters():
            digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
            g = torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)
            leaf = name.rsplit(".", 1)[-1]
            with torch.no_grad():
                if ".norm" in name or name.startswith("norm_out"):
                    param.fill_(1.0 if leaf == "weight" else 0.0)
                elif leaf == "bias" or ".conv2." in name or name.startswith("conv_out"):
                    param.zero_()
                elif name.startswith("class_emb"):
                    param.copy_(torch.randn(param.shape, generator=g))
                else:
                    bound = (param[0].numel()) ** -0.5  # 1 / sqrt(fan_in)
                    param.copy_((torch.rand(param.shape, generator=g) * 2 - 1) * bound)

    def n_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def res_blocks(self) -> list[tuple[str, ResBlock]]:
        """The residual blocks in execution order, named as in ``named_modules`` (``"down.0.0"``).
        """
        encoder = [(f"down.{lv}.{i}", b) for lv, blocks in enumerate(self.down) for i, b in enumerate(blocks)]
        middle = [(f"mid.{i}", b) for i, b in enumerate(self.mid)]
        decoder = [(f"up.{lv}.{i}", self.up[lv][i]) for lv in reversed(range(len(self.up)))
                   for i in range(len(self.up[lv]))]
        return encoder + middle + decoder

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None, *,
              class_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The step (and class) embedding the blocks receive.

        Args:
            t: (B,) int steps.
            y: (B,) int64 classes in [0, n_classes); required for a class-conditional model,
                forbidden for an unconditional one.
            class_embedding: (B, E) vectors used instead of ``class_emb(y)`` (then ``y`` must be
                None): any point of the condition space, not only the learned rows. Default
                None, the learned row of each label.

        Returns:
            (B, E).
        """
        if t.dim() != 1:
            raise ValueError(f"t must be (B,) steps, got shape {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.cfg.base_channels))  # (B, E)
        if class_embedding is not None:
            if self.class_emb is None:
                raise ValueError("this model is unconditional (n_classes=None); class_embedding must be None")
            if y is not None:
                raise ValueError("pass either y or class_embedding, not both")
            if not isinstance(class_embedding, torch.Tensor) or class_embedding.shape != emb.shape:
                shape = tuple(class_embedding.shape) if isinstance(class_embedding, torch.Tensor) else None
                raise ValueError(f"class_embedding must be a (B, E) = {tuple(emb.shape)} tensor, got {shape}")
            return emb + class_embedding
        if self.class_emb is None:
            if y is not None:
                raise ValueError("this model is unconditional (n_classes=None); pass y=None")
            return emb
        if y is None:
            raise ValueError(f"this model is class-conditional; pass y, labels in [0, {self.cfg.n_classes})")
        if y.shape != t.shape or y.dtype.is_floating_point:
            raise ValueError(f"y must be (B,) integer labels like t {tuple(t.shape)}, got {tuple(y.shape)} {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.cfg.n_classes):
            raise ValueError(f"y must hold labels in [0, {self.cfg.n_classes}), got [{int(y.min())}, {int(y.max())}]")
        return emb + self.class_emb(y)

    def encode(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
               class_embedding: torch.Tensor | None = None) -> Features:
        """Embedding, ``conv_in`` and the down path: everything Faster Diffusion may reuse.

        Args:
            x: noisy images, (B, C_in, H, W) with H = W = ``image_size``.
            t: (B,) steps in [0, T).
            y: (B,) class labels (see :meth:`embed`).
            class_embedding: (B, E) condition vectors instead of the labels' (see :meth:`embed`).

        Returns:
            :class:`Features` ``(h, skips, emb)``.
        """
        cfg = self.cfg
        c_in = cfg.in_channels + cfg.cond_channels  # the condition image rides along as channels
        if x.dim() != 4 or x.shape[1:] != (c_in, cfg.image_size, cfg.image_size):
            raise ValueError(f"x must be (B, {c_in}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.embed(t, y, class_embedding=class_embedding)
        h = self.conv_in(x)  # (B, C, H, W)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb, t)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)  # (B, c, H/2, W/2)
                skips.append(h)
        return Features(h=h, skips=skips, emb=emb, t=t)

    def decode(self, feats: Features, emb: torch.Tensor | None = None) -> torch.Tensor:
        """Middle block, up path with the long skips, and the output head: the predicted noise.

        Args:
            feats: what :meth:`encode` returned (possibly at another step, when reused).
            emb: the embedding to condition the decoder on; default ``feats.emb``. Pass
                ``model.embed(t, y)`` of the current step when reusing older encoder features.

        Returns:
            eps, (B, C_in, H, W).
        """
        emb = feats.emb if emb is None else emb
        skips = list(feats.skips)  # popped below; the caller's list stays whole for reuse
        h = feats.h
        for block in self.mid:
            h = block(h, emb, feats.t)
        for level in reversed(range(len(self.up))):
            for block in self.up[level]:
                skip = skips.pop()
                if self.cfg.skip_scale is not None:  # ScaleLong: the i-th skip times its coefficient
                    skip = skip * self.skip_scales[len(skips)]
                h = block(torch.cat([h, skip], dim=1), emb, feats.t)  # long skip: (B, c + c_skip, h, w)
            if level > 0:
                h = self.upsample[level - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, c, 2h, 2w)
        if skips:
            raise ValueError(f"feats.skips has {len(feats.skips)} tensors, {len(skips)} more than the decoder uses")
        return self.conv_out(_norm_silu(self.norm_out, h))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                class_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``eps(x_t, t, y)``, (B, C_in, H, W); equal to ``decode(encode(x, t, y))``.

        ``class_embedding`` (B, E), opt-in, conditions on those vectors instead of
        ``class_emb(y)`` (see :meth:`embed`); the default None changes nothing.
        """
        return self.decode(self.encode(x, t, y, class_embedding=class_embedding))

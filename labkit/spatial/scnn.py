"""Spatial CNN: messages passed slice by slice across a feature map.

After *Spatial As Deep: Spatial CNN for Traffic Scene Understanding* (Pan et al., 2017,
arXiv:1712.06080). A stack of 3x3 convolutions sees a window that grows by two pixels per layer,
so a lane hidden behind a car for longer than that window cannot be filled in from the visible
parts around it. SCNN treats the rows of a feature map as a chain of nodes: row ``i`` receives a
message from row ``i - 1``, a 1-D convolution across width and channels followed by a ReLU, and
adds it to its own features before passing itself on (eq. 1 of the paper, downward). The same
sweep runs upward, rightward and leftward, so evidence travels across the whole image in one
layer. The miniature: seeded 1-channel road scenes with thin curved lanes and occluding bands,
three models of equal parameter count, and the lane IoU split into occluded and visible spans.
It leaves out the real backbone (VGG), the lane-existence branch and the real datasets.

Shapes: B images, C channels, H rows, W columns.
Section: chapter 03, "Spatial CNN: messages between rows"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from labkit.data.synthetic import make_generator
from labkit.validation import check_int, check_real, check_tensor

__all__ = ["DIRECTIONS", "LaneNet", "LaneScenes", "SpatialConv", "lane_scenes", "receptive_field", "span_iou"]

#: The four sweeps of SCNN, in the paper's order.
DIRECTIONS: tuple[str, ...] = ("down", "up", "right", "left")


@dataclass(frozen=True)
class LaneScenes:
    """A batch of synthetic road scenes.

    Attributes:
        images: (B, 1, H, W) float32 intensities; lanes bright, occluders a flat grey.
        masks: (B, H, W) bool, the lanes including their hidden parts (the target).
        occluded: (B, H, W) bool, the pixels inside an occluding band.
        gap: (B,) int64, the height in rows of each scene's occluding band.
    """

    images: torch.Tensor
    masks: torch.Tensor
    occluded: torch.Tensor
    gap: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]


def lane_scenes(n: int, *, height: int = 64, width: int = 32, gap: tuple[int, int] = (16, 24),
                n_lanes: int = 2, noise: float = 0.3, seed: int = 0) -> LaneScenes:
    """Seeded road scenes: thin curved lanes running top to bottom, one occluding band each.

    Each lane is a column ``c(y) = c0 + a * sin(2 pi f y / H + phase)`` one to two pixels wide.
    A band of ``g`` consecutive rows (``g`` drawn uniformly in ``gap``, inclusive) hides every
    lane: its pixels are replaced by a flat grey. The target mask keeps the lanes under the band,
    so filling the band needs evidence from above and below it.

    Args:
        n: B, number of scenes (>= 1).
        height, width: H and W (H >= 8, W >= 8).
        gap: smallest and largest band height in rows, ``0 <= gap[0] <= gap[1] <= H - 4``.
        n_lanes: lanes per scene (>= 1).
        noise: standard deviation of the Gaussian pixel noise (>= 0).
        seed: seed of the draw.
    """
    n = check_int("n", n, 1)
    height = check_int("height", height, 8)
    width = check_int("width", width, 8)
    n_lanes = check_int("n_lanes", n_lanes, 1)
    noise = check_real("noise", noise, 0.0)
    if not isinstance(gap, Sequence) or len(gap) != 2:
        raise TypeError(f"gap must be a pair (smallest, largest) of ints, got {gap!r}")
    if any(isinstance(g, int) and not isinstance(g, bool) and g < 0 for g in gap):
        raise ValueError(f"gap (the occlusion length) must be >= 0, got {tuple(gap)}")
    g_lo = check_int("gap[0]", gap[0], 0, height - 4)
    g_hi = check_int("gap[1]", gap[1], g_lo, height - 4)
    gen = make_generator(seed)
    y = torch.arange(height, dtype=torch.float32)[:, None]  # (H, 1)
    x = torch.arange(width, dtype=torch.float32)[None, :]  # (1, W)
    masks = torch.zeros(n, height, width, dtype=torch.bool)
    slot = width / n_lanes
    for lane in range(n_lanes):
        c0 = slot * (lane + 0.5) + (torch.rand(n, 1, 1, generator=gen) - 0.5) * slot * 0.3
        amp = torch.rand(n, 1, 1, generator=gen) * slot * 0.3
        freq = 0.25 + 0.5 * torch.rand(n, 1, 1, generator=gen)
        phase = torch.rand(n, 1, 1, generator=gen) * 2 * torch.pi
        centre = c0 + amp * torch.sin(2 * torch.pi * freq * y / height + phase)  # (B, H, 1)
        masks |= (x - centre).abs() <= 1.0
    gaps = torch.randint(g_lo, g_hi + 1, (n,), generator=gen)
    starts = (torch.rand(n, generator=gen) * (height - 4 - gaps + 1).float()).long() + 2
    occluded = (y[None, :, 0] >= starts[:, None]) & (y[None, :, 0] < (starts + gaps)[:, None])
    occluded = occluded[:, :, None].expand(n, height, width).clone()  # (B, H, W)
    images = masks.float() + noise * torch.randn(n, height, width, generator=gen)
    images = torch.where(occluded, torch.full_like(images, 0.5), images)
    return LaneScenes(images.unsqueeze(1), masks, occluded, gaps)


class SpatialConv(nn.Module):
    """SCNN's message passing between slices (eq. 1), in any subset of the four directions.

    Args:
        channels: C.
        kernel: width of the 1-D convolution along a slice (odd, the paper uses 9).
        directions: which sweeps to run, in order, from :data:`DIRECTIONS`.
    """

    def __init__(self, channels: int, *, kernel: int = 9, directions: Sequence[str] = DIRECTIONS) -> None:
        super().__init__()
        channels = check_int("channels", channels, 1)
        kernel = check_int("kernel", kernel, 1)
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the message is centred), got {kernel}")
        bad = [d for d in directions if d not in DIRECTIONS]
        if bad or not directions:
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {tuple(directions)}")
        self.directions = tuple(directions)
        self.convs = nn.ModuleDict({d: nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
                                    for d in self.directions})

    # show: start sweep
    @staticmethod
    def sweep(x: torch.Tensor, conv: nn.Conv1d, reverse: bool) -> torch.Tensor:
        """One downward sweep over the rows of ``x`` (B, C, H, W), upward if ``reverse``.

        ``X_i <- X_i + relu(K * X_{i-1})``: each row adds a message computed from the row before
        it *after* that row was updated, so information crosses the whole map in one sweep.
        """
        b, c, h, w = x.shape
        # K * row, a 1-D convolution across width and channels, is a linear map of the
        # flattened row: build its (C*W, C*W) matrix once, then each message is one matmul
        basis = torch.eye(c * w, dtype=x.dtype, device=x.device).view(c * w, c, w)
        kernel = F.conv1d(basis, conv.weight, padding=conv.padding).reshape(c * w, c * w)
        bias = conv.bias.repeat_interleave(w)  # (C*W,)
        rows = list(x.permute(2, 0, 1, 3).reshape(h, b, c * w).unbind(0))  # H x (B, C*W)
        order = range(h - 2, -1, -1) if reverse else range(1, h)
        step = 1 if reverse else -1  # where the message comes from
        for i in order:
            message = torch.addmm(bias, rows[i + step], kernel)  # K * X_{i-1}
            rows[i] = rows[i] + F.relu(message)  # eq. 1
        return torch.stack(rows).reshape(h, b, c, w).permute(1, 2, 0, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for d in self.directions:
            if d in ("down", "up"):
                x = self.sweep(x, self.convs[d], reverse=d == "up")
            else:  # columns are the rows of the transposed map
                x = self.sweep(x.transpose(2, 3), self.convs[d], reverse=d == "left").transpose(2, 3)
        return x
    # show: end sweep


def _conv(c_in: int, c_out: int, dilation: int = 1, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, stride=stride)


class LaneNet(nn.Module):
    """A small lane segmenter; the three kinds differ only in their middle block.

    A 3x3 stem at full resolution, a stride-2 3x3 layer, ``depth`` 3x3 layers at half resolution,
    then the middle block, then a 2x upsampling whose features meet the stem's in a 1x1 head (as
    in the paper, SCNN runs on a downsampled feature map). The middle block is, for
    ``kind="plain"``, ``n_extra`` 3x3 layers; for ``"dilated"`` the same layers with
    ``dilations``; for ``"scnn"`` a :class:`SpatialConv` of kernel 9 over ``directions``. A 1-D
    convolution of width 9 over C channels has the weights of a 3x3 one (9 C^2 + C), so with
    ``len(directions) == len(dilations)`` the three kinds have the same number of parameters.

    Args:
        kind: ``"plain"``, ``"dilated"`` or ``"scnn"``.
        channels: C.
        depth: 3x3 layers at half resolution shared by all kinds.
        dilations: one dilation per extra layer of ``"dilated"`` (their number is the block's
            depth for ``"plain"`` too).
        directions: SCNN's sweeps.
        height, width: the image size the model accepts, both even (checked in ``forward``).
    """

    def __init__(self, kind: str, *, channels: int = 8, depth: int = 1, dilations: Sequence[int] = (2, 2, 4, 4),
                 directions: Sequence[str] = DIRECTIONS, height: int = 64, width: int = 32) -> None:
        super().__init__()
        if kind not in ("plain", "dilated", "scnn"):
            raise ValueError(f"kind must be 'plain', 'dilated' or 'scnn', got {kind!r}")
        channels = check_int("channels", channels, 1)
        depth = check_int("depth", depth, 0)
        if not dilations:
            raise ValueError("dilations must hold at least one int")
        dilations = [check_int("dilation", d, 1) for d in dilations]
        height, width = check_int("height", height, 2), check_int("width", width, 2)
        if height % 2 or width % 2:
            raise ValueError(f"height and width must be even (one 2x downsampling), got {height}x{width}")
        self.kind, self.size = kind, (height, width)
        self.stem = nn.Sequential(_conv(1, channels), nn.ReLU())
        layers: list[nn.Module] = [_conv(channels, channels, stride=2), nn.ReLU()]
        for _ in range(depth):
            layers += [_conv(channels, channels), nn.ReLU()]
        if kind == "scnn":
            layers.append(SpatialConv(channels, kernel=9, directions=directions))
        else:
            for d in (dilations if kind == "dilated" else [1] * len(dilations)):
                layers += [_conv(channels, channels, d), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(2 * channels, 1, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Lane logits (B, H, W) of images (B, 1, H, W) of the model's size."""
        check_tensor("images", images, dims=4, dtype="float", shape="(B, 1, H, W)")
        if images.shape[1] != 1 or tuple(images.shape[2:]) != self.size:
            raise ValueError(f"images must have shape (B, 1, {self.size[0]}, {self.size[1]}) for this model, "
                             f"got {tuple(images.shape)}")
        low = self.stem(images)  # (B, C, H, W)
        deep = self.body(low)  # (B, C, H/2, W/2)
        up = F.interpolate(deep, scale_factor=2, mode="nearest")  # (B, C, H, W)
        return self.head(torch.cat([low, up], dim=1)).squeeze(1)


def receptive_field(model: nn.Module, *, height: int, width: int) -> int:
    """Rows of the input that can change the output pixel at the image's centre, measured.

    Back-propagates from the centre logit of a random image and counts the rows whose gradient
    is not zero, so strides, dilations and SCNN's sweeps are all taken into account.
    """
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    x = torch.randn(1, 1, height, width, generator=make_generator(0), requires_grad=True)
    model(x)[0, height // 2, width // 2].backward()
    rows = (x.grad[0, 0].abs().sum(dim=1) > 0).nonzero()
    return int(rows.max() - rows.min() + 1)


def span_iou(pred: torch.Tensor, masks: torch.Tensor, region: torch.Tensor) -> float:
    """IoU of predicted and true lane pixels, counted inside ``region`` only.

    ``|pred & mask & region| / |(pred | mask) & region|`` pooled over the batch; 1.0 when the
    region holds neither predicted nor true lane pixels.

    Args:
        pred, masks, region: (B, H, W) bool tensors of one shape.
    """
    for name, t in (("pred", pred), ("masks", masks), ("region", region)):
        check_tensor(name, t, dims=3, dtype=torch.bool, shape="(B, H, W)")
    if not (pred.shape == masks.shape == region.shape):
        raise ValueError(f"pred, masks and region must have one shape, got {tuple(pred.shape)}, "
                         f"{tuple(masks.shape)} and {tuple(region.shape)}")
    inter = int((pred & masks & region).sum())
    union = int(((pred | masks) & region).sum())
    return 1.0 if union == 0 else inter / union

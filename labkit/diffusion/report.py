"""Figures and layout helpers of chapter 09's pages: the UNet drawn as blocks, sample grids,
controls placed below a figure.

Reporting only: nothing here computes a result the chapter asserts. The UNet drawing is built
from the model itself (:meth:`~labkit.diffusion.unet.TinyUNet.res_blocks` and its levels), so it
shows the encoder/decoder split that Faster Diffusion's reuse, feature inheritance and patch
parallelism all work on.

Shapes: B images, C channels, H x W image.
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labkit.validation import check_int

from .unet import TinyUNet

__all__ = ["UNetNode", "controls_below", "cost_model_agreement", "image_grid", "unet_diagram", "unet_layout"]


@dataclass(frozen=True)
class UNetNode:
    """One box of the UNet drawing.

    Attributes:
        name: the module's name (``"down.0.1"``, ``"mid.0"``, ``"conv_in"`` ...).
        part: ``"encoder"`` or ``"decoder"`` (the split of :meth:`TinyUNet.encode`).
        level: resolution level, 0 = full size; the middle blocks sit one below the last level.
        order: position in execution order, 0 = ``conv_in``.
    """

    name: str
    part: str
    level: int
    order: int


def unet_layout(model: TinyUNet) -> tuple[list[UNetNode], list[tuple[str, str]]]:
    """The UNet's boxes in execution order and its long skips as ``(producer, consumer)`` pairs.

    The encoder produces one skip per ``conv_in``, down block and downsampling; the decoder's
    up blocks take them back last-in, first-out, exactly as :meth:`TinyUNet.decode` pops them.
    """
    if not isinstance(model, TinyUNet):
        raise TypeError(f"model must be a TinyUNet, got {type(model).__name__}")
    n_levels = len(model.down)
    nodes: list[tuple[str, str, int]] = [("conv_in", "encoder", 0)]
    for lv, blocks in enumerate(model.down):
        nodes += [(f"down.{lv}.{i}", "encoder", lv) for i in range(len(blocks))]
        if lv < len(model.downsample):
            nodes.append((f"downsample.{lv}", "encoder", lv + 1))
    skips = [name for name, _, _ in nodes]  # every encoder box feeds one long skip
    nodes += [(f"mid.{i}", "decoder", n_levels) for i in range(len(model.mid))]
    consumers = []
    for lv in reversed(range(len(model.up))):
        for i in range(len(model.up[lv])):
            nodes.append((f"up.{lv}.{i}", "decoder", lv))
            consumers.append(f"up.{lv}.{i}")
        if lv > 0:
            nodes.append((f"upsample.{lv - 1}", "decoder", lv - 1))
    nodes.append(("out", "decoder", 0))
    pairs = list(zip(reversed(skips), consumers))  # last made, first used
    return [UNetNode(n, p, lv, k) for k, (n, p, lv) in enumerate(nodes)], pairs


def unet_diagram(model: TinyUNet, *, title: str | None = None):
    """The UNet as a U of boxes: encoder (reused by Faster Diffusion) left, decoder right.

    Boxes are drawn with plotly shapes (they survive the static book), coloured by part with
    :data:`labkit.plotting.PALETTE`; solid lines follow execution, dashed curves are the long
    skips. Returns a styled ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    from labkit.plotting import PALETTE, styled

    nodes, pairs = unet_layout(model)
    colour = {"encoder": PALETTE[0], "decoder": PALETTE[1]}
    pos = {nd.name: (float(nd.order), -1.6 * nd.level) for nd in nodes}
    w, h = 0.42, 0.42
    shapes: list[dict] = []
    notes: list[dict] = []
    for a, b in zip(nodes, nodes[1:]):  # execution order
        (x0, y0), (x1, y1) = pos[a.name], pos[b.name]
        shapes.append(dict(type="line", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color=PALETTE[7], width=1), layer="below"))
    for k, (src, dst) in enumerate(pairs):  # long skips, arched over the boxes between
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        top = max(y0, y1) + 1.3 + 0.4 * (k % 2)
        shapes.append(dict(type="path", path=f"M {x0},{y0 + h} C {x0},{top} {x1},{top} {x1},{y1 + h}",
                           line=dict(color=PALETTE[5], dash="dash", width=1)))
    for nd in nodes:
        x, y = pos[nd.name]
        shapes.append(dict(type="rect", x0=x - w, x1=x + w, y0=y - h, y1=y + h, fillcolor=colour[nd.part],
                           line=dict(color=PALETTE[7], width=1)))
        notes.append(dict(x=x, y=y - h - 0.1, text=nd.name, showarrow=False, textangle=-45, yanchor="top",
                          font=dict(size=10)))
    n_enc = sum(nd.part == "encoder" for nd in nodes)
    for part, x in (("encoder: encode()", (n_enc - 1) / 2), ("decoder: decode()", (n_enc + len(nodes) - 1) / 2)):
        notes.append(dict(x=x, y=2.2, text=f"<b>{part}</b>", showarrow=False,
                          font=dict(color=colour[part.split(":")[0]], size=13)))
    fig = go.Figure(layout=dict(shapes=shapes, annotations=notes))  # one validation, not one per shape
    depth = max(nd.level for nd in nodes)
    fig.update_xaxes(visible=False, range=[-1, len(nodes)])
    fig.update_yaxes(visible=False, range=[-1.6 * depth - 1.3, 2.5])
    fig.update_layout(showlegend=False, margin=dict(t=70))
    return styled(fig, title=title or "The tiny UNet: encoder (left) and decoder (right); dashed: long skips",
                  height=380)


def image_grid(images: torch.Tensor, *, rows: int = 2, cols: int = 10) -> np.ndarray:
    """The first ``rows * cols`` single-channel images as one array, a NaN gap between them.

    Shapes:
        images (B, 1, H, W) with B >= rows * cols -> (rows * (H + 1) - 1, cols * (W + 1) - 1).
    """
    check_int("rows", rows, 1)
    check_int("cols", cols, 1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError("images must be a (B, 1, H, W) tensor")
    if images.shape[0] < rows * cols:
        raise ValueError(f"images holds {images.shape[0]} images, fewer than rows * cols = {rows * cols}")
    H, W = images.shape[2:]
    out = np.full((rows * (H + 1) - 1, cols * (W + 1) - 1), np.nan)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        out[r * (H + 1): r * (H + 1) + H, c * (W + 1): c * (W + 1) + W] = images[i, 0].detach().cpu().numpy()
    return out


def controls_below(fig, *, gap: float = 0.28, margin: int = 150):
    """Move a figure's dropdowns and sliders under its plot area, so they never cover the title.

    Each ``updatemenus`` and ``sliders`` entry is anchored at its top ``gap`` (a fraction of the
    plot height) below the plot, left-aligned, and the bottom margin grows to ``margin`` pixels
    to make room. Dropdowns open upwards, over the plot, so a long list is not cut off at the
    figure's lower edge. Returns the figure.
    """
    if not (isinstance(gap, (int, float)) and not isinstance(gap, bool) and gap >= 0):
        raise ValueError(f"gap must be a number >= 0, got {gap!r}")
    check_int("margin", margin, 0)
    fig.update_layout(margin=dict(b=margin))
    fig.update_layout(updatemenus=[dict(m.to_plotly_json(), x=0.0, xanchor="left", y=-gap, yanchor="top",
                                        direction="up")
                                   for m in fig.layout.updatemenus])
    fig.update_layout(sliders=[dict(s.to_plotly_json(), x=0.0, xanchor="left", y=-gap, yanchor="top", len=1.0)
                               for s in fig.layout.sliders])
    return fig


def cost_model_agreement(costs, measured, points, *, clear_gap: float = 1.5) -> tuple[float, list[bool]]:
    """How well a LoRA cost model (:class:`~labkit.diffusion.serving.LoRACost`) predicts timed requests.

    For each point ``(key, S)``, the predicted ratio of the two modes' times, merge / on the fly,
    is compared with the measured one ``measured[key, S, mode]``; the result is the median of
    ``max(r, 1/r)`` of their quotient ``r`` (1 = perfect), and, at every point where the model
    predicts one mode at least ``clear_gap`` times faster, whether that mode was measured faster.

    Args:
        costs: key -> LoRACost.
        measured: ``(key, S, "merge" | "on_the_fly")`` -> seconds.
        points: the ``(key, S)`` pairs to compare.
        clear_gap: the predicted ratio from which a verdict counts (> 1).

    Returns:
        ``(median factor, verdicts)``.
    """
    if not points:
        raise ValueError("points must name at least one (key, S) pair")
    if not (isinstance(clear_gap, (int, float)) and not isinstance(clear_gap, bool) and clear_gap > 1):
        raise ValueError(f"clear_gap must be a number > 1, got {clear_gap!r}")
    factors, verdicts = [], []
    for key, steps in points:
        c = costs[key]
        pred = {"merge": c.merged(steps), "on_the_fly": c.on_the_fly(steps)}
        meas = {m: measured[key, steps, m] for m in pred}
        r = (meas["merge"] / meas["on_the_fly"]) / (pred["merge"] / pred["on_the_fly"])
        factors.append(max(r, 1 / r))
        if max(pred.values()) >= clear_gap * min(pred.values()):
            verdicts.append(min(pred, key=pred.get) == min(meas, key=meas.get))
    return sorted(factors)[len(factors) // 2], verdicts

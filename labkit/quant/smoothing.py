"""Smoothing: move activation outliers into the weights with a per-input-channel scale.

*SVDQunat: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion Models* (Li et al.,
2024) starts, as SmoothQuant (Xiao et al., 2023) does, from an identity of the product ``X W``
(here ``W`` is the (C, O) matrix a layer multiplies by, the transpose of ``nn.Linear.weight``):
for any positive ``lambda`` of one value per input channel ``j``,

    X W = (X diag(lambda)^-1) (diag(lambda) W) = X_hat W_hat.

Activations of large models concentrate their outliers in a few channels, always the same
ones; dividing those channels by a large ``lambda_j`` shrinks them, and multiplying the matching
row of ``W`` by the same factor keeps the product exact. SmoothQuant's choice balances the two
ranges,

    lambda_j = max|X_j|^alpha / max|W_j|^(1 - alpha),

with a migration strength ``alpha`` in [0, 1] (0.5 makes ``max|X_hat_j| = max|W_hat_j|``).
The ranges ``max|X_j|`` come from calibration data: :func:`capture_inputs` records the inputs of
chosen layers while some batches run, :func:`channel_absmax` reduces them per channel.

Convolutions are treated as matrix products over image patches (im2col): an input channel ``j``
appears at every kernel position, so ``lambda_j`` divides channel ``j`` of the feature map and
multiplies ``weight[:, j, :, :]``.

What the miniature leaves out: folding ``1 / lambda`` into the previous layer (LayerNorm or
linear) so that smoothing costs nothing at run time; here the division happens on the fly.

Shapes: N rows (tokens, or pixels of a feature map), C input channels, O output channels.
Section: chapter 10, "SVDQuant: 4-bit weights and activations with a low-rank branch".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["capture_inputs", "channel_absmax", "channels_last", "scale_input_channels", "smoothing_factors",
           "weight_absmax"]


def channels_last(x: torch.Tensor, *, conv: bool) -> torch.Tensor:
    """``x`` with its channel dimension moved last: (B, C, H, W) -> (B, H, W, C) for a convolution.

    Linear inputs (..., C) already have it last and are returned unchanged.
    """
    if conv:
        if x.dim() != 4:
            raise ValueError(f"a Conv2d input must be (B, C, H, W), got shape {tuple(x.shape)}")
        return x.movedim(1, -1)
    return x


def channel_absmax(x: torch.Tensor, *, conv: bool = False) -> torch.Tensor:
    """``max |x_j|`` per input channel ``j``: the activation side of the smoothing factor.

    Args:
        x: inputs of one layer, (..., C) for a Linear or (B, C, H, W) for a Conv2d.
        conv: whether ``x`` is a feature map (channels in dimension 1).

    Returns:
        (C,) float32.
    """
    if not x.is_floating_point():
        raise TypeError(f"channel_absmax needs a float tensor, got {x.dtype}")
    x = channels_last(x.detach(), conv=conv)
    return x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()


def weight_absmax(weight: torch.Tensor) -> torch.Tensor:
    """``max |W_j|`` per input channel ``j`` of a Linear (O, C) or Conv2d (O, C, kh, kw) weight.

    Returns:
        (C,) float32: the maximum over output channels (and kernel positions).
    """
    if weight.dim() not in (2, 4):
        raise ValueError(f"weight must be (O, C) or (O, C, kh, kw), got shape {tuple(weight.shape)}")
    return weight.detach().abs().transpose(0, 1).reshape(weight.shape[1], -1).amax(dim=1).float()


def smoothing_factors(x_absmax: torch.Tensor, weight: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-channel factors ``lambda_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``.

    Args:
        x_absmax: (C,) calibrated activation ranges (:func:`channel_absmax`).
        weight: the layer's weight, (O, C) or (O, C, kh, kw).
        alpha: migration strength in [0, 1]: 0 leaves activations alone (``lambda = 1 / max|W_j|``
            only normalises the weight), 1 moves the whole range into the weight.

    Returns:
        (C,) positive factors; divide the input by them and multiply the weight's input channels.
        A channel that never fired (range 0) gets factor 1.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    w_max = weight_absmax(weight)
    if x_absmax.dim() != 1 or x_absmax.numel() != w_max.numel():
        raise ValueError(f"x_absmax must be (C,) = ({w_max.numel()},) for this weight, got {tuple(x_absmax.shape)}")
    if (x_absmax < 0).any():
        raise ValueError("x_absmax must be non-negative (it is a max of |x|)")
    x_max = x_absmax.float().clamp(min=1e-5)
    lam = x_max.pow(alpha) / w_max.clamp(min=1e-5).pow(1.0 - alpha)
    return torch.where(x_absmax > 0, lam, torch.ones_like(lam))


def scale_input_channels(weight: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``W_hat = diag(lambda) W``: input channel ``j`` of the weight times ``factors[j]``.

    Args:
        weight: a Linear (O, C) or Conv2d (O, C, kh, kw) weight.
        factors: (C,) smoothing factors (:func:`smoothing_factors`).

    Returns:
        The scaled weight, same shape; with the input divided by ``factors`` the layer is unchanged.
    """
    if weight.dim() not in (2, 4) or factors.shape != (weight.shape[1],):
        raise ValueError(f"factors must be (C,) = ({weight.shape[1] if weight.dim() > 1 else '?'},) for a weight of "
                         f"shape {tuple(weight.shape)}, got {tuple(factors.shape)}")
    shape = (1, -1) + (1,) * (weight.dim() - 2)  # broadcast over O (and kh, kw)
    return weight * factors.to(weight.dtype).reshape(shape)


def capture_inputs(model: nn.Module, run: Callable[[nn.Module], object], *,
                   include: Callable[[str, nn.Module], bool] | None = None,
                   max_rows: int | None = None) -> dict[str, torch.Tensor]:
    """The inputs every chosen Linear/Conv2d of ``model`` receives while ``run(model)`` executes.

    Args:
        model: any module (not modified; hooks are removed afterwards).
        run: calls the model on calibration data, e.g. ``lambda m: m(tokens)``.
        include: ``include(name, module)`` picks the layers; default every Linear and Conv2d.
        max_rows: keep at most this many leading rows (batch entries) per layer.

    Returns:
        ``{name: inputs}``, the calls of each layer concatenated along the batch dimension,
        detached, on the CPU.
    """
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) and (include is None or include(name, m))}
    if not layers:
        raise ValueError("no nn.Linear or nn.Conv2d layer was selected")
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def hook(name: str) -> Callable:
        def record(_module: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            seen[name].append(args[0].detach().cpu())
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, xs in seen.items():
        if not xs:
            raise RuntimeError(f"layer {name!r} received no input while run(model) executed")
        x = torch.cat(xs)
        out[name] = x[:max_rows] if max_rows is not None else x
    return out

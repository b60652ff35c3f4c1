"""SVDQuant: absorb outliers in a 16-bit low-rank branch, quantize the rest to 4 bits (W4A4).

*SVDQunat: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion Models* (Li et al.,
2024). At 4 bits both operands of a layer's product ``X W`` are hard to quantize: activations
have outlier channels, and weights have outliers of their own. Smoothing
(:mod:`labkit.quant.smoothing`) only moves the difficulty from one side to the other. SVDQuant
first smooths, so that the activation ``X_hat = X diag(lambda)^-1`` becomes easy and the weight
``W_hat = diag(lambda) W`` collects the outliers, then splits that weight with a singular value
decomposition,

    W_hat = L1 L2 + R,        X W = X_hat L1 L2 + X_hat R,

where ``L1 L2`` (L1: C x r, L2: r x O) is the best rank-``r`` approximation of ``W_hat``, kept
in 16 bits as a small extra branch, and only the residual ``R`` goes through the 4-bit path,
``Q(X_hat) Q(R)``. Outliers of a weight concentrate in a few large singular directions, so ``R``
has a much smaller range than ``W_hat``. The error of the layer is

    X W - (X_hat L1 L2 + Q(X_hat) Q(R)) = (X_hat - Q(X_hat)) R + Q(X_hat) (R - Q(R)):

the activation's rounding error is multiplied by the small ``R`` instead of the whole weight,
and the weight's rounding error is that of ``R``, ``R - Q(R)``, whose step is set by the small
range of ``R`` rather than by that of ``W_hat``; it meets the (easy, smoothed) quantized input.
The paper bounds the layer's error by these two terms.

:func:`svdquant_layer` builds one :class:`SVDQuantLayer` from a ``nn.Linear`` or ``nn.Conv2d``
and calibration inputs; :func:`svdquant_model` does it for a whole model. The four variants the
section compares differ only in two switches of :class:`SVDQuantConfig` (:func:`variant_config`):
``naive`` (no smoothing, no branch), ``smoothing``, ``low-rank`` (SVD of the unsmoothed weight)
and ``svdquant`` (both). All use the same 4-bit format: groups of ``group_size`` input channels
share a scale, per output channel for the weight and per token (or pixel of a feature map) for
the activation, whose scales are computed on the fly. Convolutions are matrix products over
image patches: the branch is a convolution with ``r`` output channels followed by a 1 x 1
convolution, and groups run along input channels at each kernel position.

What the miniature leaves out: Nunchaku, the engine that fuses the branch's down projection into
the 4-bit kernel's activation quantization and its up projection into the 4-bit GEMM's epilogue
(:mod:`labkit.quant.gemm` has the fused W4A4 + low-rank product for linear layers; here the
branch runs as separate float products); FP4 formats; folding ``1 / lambda`` into the previous
layer; the paper's support for LoRA adapters.

Shapes: N rows, C input channels, O output channels, K = C kh kw, r rank, G group size.
In PyTorch's weight layout (O, K) the product is ``x @ W.T``, so the module stores
``down = L1^T`` (r, K) and ``up = L2^T`` (O, r).
Section: chapter 10, "SVDQuant: 4-bit weights and activations with a low-rank branch".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from ..validation import check_int
from .packing import pack_int4
from .quantizers import QSpec, QTensor, fake_quantize, quantize_tensor
from .smoothing import channel_absmax, channels_last, scale_input_channels, smoothing_factors

__all__ = ["ALPHA_GRID", "VARIANTS", "SVDQuantConfig", "SVDQuantLayer", "fake_quantize_input", "low_rank_split",
           "output_error", "replace_layers", "svdquant_layer", "svdquant_model", "variant_config"]

VARIANTS: tuple[str, ...] = ("naive", "smoothing", "low-rank", "svdquant")
ALPHA_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_HALF = 2  # bytes of an fp16 value: branch factors and smoothing factors are stored in 16 bits


@dataclass(frozen=True)
class SVDQuantConfig:
    """How to quantize a layer.

    Attributes:
        w_bits: bits of the weight's (residual's) codes, 2..8.
        a_bits: bits of the input's codes, 2..8, or None for 16-bit activations.
        group_size: G input channels share a scale (weights and activations); must divide C.
        rank: r of the 16-bit branch ``L1 L2``; 0: no branch.
        smooth: divide the input by the smoothing factors and multiply the weight by them.
        alpha: migration strength of the smoothing factors, or None: try every value of
            :data:`ALPHA_GRID` and keep the one with the least output error on the calibration
            inputs (per layer).
    """

    w_bits: int = 4
    a_bits: int | None = 4
    group_size: int = 64
    rank: int = 16
    smooth: bool = True
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_int("w_bits", self.w_bits, 2, 8)
        if self.a_bits is not None:
            check_int("a_bits", self.a_bits, 2, 8)
        check_int("group_size", self.group_size, 1)
        check_int("rank", self.rank, 0)
        if not isinstance(self.smooth, bool):
            raise TypeError(f"smooth must be a bool, got {type(self.smooth).__name__}")
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None (search), got {self.alpha}")

    @property
    def w_spec(self) -> QSpec:
        """Symmetric groups of G along the input channels."""
        return QSpec(bits=self.w_bits, symmetric=True, granularity="group", group_size=self.group_size)

    @property
    def a_spec(self) -> QSpec | None:
        """Symmetric groups of G channels per token, or None for 16-bit inputs."""
        if self.a_bits is None:
            return None
        return QSpec(bits=self.a_bits, symmetric=True, granularity="group", group_size=self.group_size)


def variant_config(variant: str, *, rank: int = 16, group_size: int = 64, bits: int = 4,
                   alpha: float | None = None) -> SVDQuantConfig:
    """The config of one of :data:`VARIANTS`, W``bits``A``bits``.

    ``naive``: plain W4A4; ``smoothing``: SmoothQuant's migration, then W4A4; ``low-rank``: a
    rank-``r`` branch of the unsmoothed weight, residual in W4A4; ``svdquant``: both.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    smooth = variant in ("smoothing", "svdquant")
    r = rank if variant in ("low-rank", "svdquant") else 0
    return SVDQuantConfig(w_bits=bits, a_bits=bits, group_size=group_size, rank=r, smooth=smooth, alpha=alpha)


def low_rank_split(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W = L1 L2 + R`` with ``L1 L2`` the best rank-``r`` approximation (truncated SVD), in fp16.

    The factors are rounded to fp16 (how the branch is stored) before the residual is taken, so
    the parts add up to ``weight`` to float32 rounding.

    Args:
        weight: (O, C) or (O, C, kh, kw) in PyTorch's layout; a convolution is split as the
            (O, K) matrix of its patches.
        rank: r, 0 <= r <= min(O, K).

    Returns:
        ``(up, down, residual)``: ``up = L2^T`` (O, r), ``down = L1^T`` (r, C) or
        (r, C, kh, kw), ``residual`` like ``weight``; float32 (the factors hold fp16 values).
    """
    if weight.dim() not in (2, 4):
        raise ValueError(f"weight must be (O, C) or (O, C, kh, kw), got shape {tuple(weight.shape)}")
    w2 = weight.detach().float().reshape(weight.shape[0], -1)  # (O, K) = W_hat^T
    check_int("rank", rank, 0, min(w2.shape))
    # show: start split
    u, s, vh = torch.linalg.svd(w2, full_matrices=False)  # (O, m), (m,), (m, K)
    up = (u[:, :rank] * s[:rank]).half().float()  # L2^T = U_r S_r, (O, r)
    down = vh[:rank].half().float()  # L1^T = V_r^T, (r, K)
    residual = w2 - up @ down  # R = W_hat - L1 L2
    # show: end split
    return up, down.reshape(rank, *weight.shape[1:]), residual.reshape(weight.shape)


def fake_quantize_input(x: torch.Tensor, spec: QSpec | None, *, conv: bool) -> torch.Tensor:
    """Round an input per group of G channels of each token (or pixel), scales computed on the fly."""
    if spec is None:
        return x
    out = fake_quantize(channels_last(x, conv=conv), spec)  # (..., C): groups along channels
    return out.movedim(-1, 1) if conv else out


class SVDQuantLayer(nn.Module):
    """A Linear/Conv2d computed as ``X_hat L1 L2 + Q(X_hat) Q(R) + b`` (fake quantization).

    Build it with :func:`svdquant_layer`. ``Q(R)`` is stored dequantized for the float product
    (its codes are in :attr:`residual_q`, for sizes and the integer GEMM); the branch factors hold
    fp16 values.

    Attributes:
        config: the :class:`SVDQuantConfig` (with the ``alpha`` actually used).
        smooth: (C,) factors ``lambda`` (ones without smoothing).
        up, down: ``L2^T`` (O, r) and ``L1^T`` (r, C) or (r, C, kh, kw).
        residual: ``Q(R)`` dequantized, the weight's shape.
        residual_q: the :class:`QTensor` of R (channels last for a convolution).
    """

    def __init__(self, module: nn.Module, factors: torch.Tensor, config: SVDQuantConfig) -> None:
        super().__init__()
        self.conv = isinstance(module, nn.Conv2d)
        if self.conv and (module.groups != 1 or module.padding_mode != "zeros"):
            raise ValueError("SVDQuantLayer supports Conv2d with groups=1 and zero padding only")
        self.config = config
        self.conv_args = (module.stride, module.padding, module.dilation) if self.conv else None
        # show: start build
        w_hat = scale_input_channels(module.weight.detach().float(), factors)  # W_hat = diag(lambda) W
        up, down, residual = low_rank_split(w_hat, config.rank)
        moved = residual.movedim(1, -1) if self.conv else residual  # (O, kh, kw, C): groups along C
        self.residual_q: QTensor = quantize_tensor(moved, config.w_spec)  # Q(R)
        # show: end build
        residual_hat = self.residual_q.dequantize()
        self.register_buffer("smooth", factors.float().clone())
        self.register_buffer("up", up)
        self.register_buffer("down", down)
        self.register_buffer("residual", (residual_hat.movedim(-1, 1) if self.conv else residual_hat).contiguous())
        self.register_buffer("bias", None if module.bias is None else module.bias.detach().float().clone())

    def smoothed_input(self, x: torch.Tensor) -> torch.Tensor:
        """``X_hat = X diag(lambda)^-1``."""
        return x / (self.smooth.reshape(-1, 1, 1) if self.conv else self.smooth)

    def branch(self, x_hat: torch.Tensor) -> torch.Tensor:
        """The 16-bit low-rank product ``X_hat L1 L2``, (..., O) or (B, O, H', W')."""
        if self.conv:
            h = F.conv2d(x_hat, self.down, None, *self.conv_args)  # (B, r, H', W'): L1 over patches
            return F.conv2d(h, self.up[:, :, None, None])  # 1 x 1: L2
        return (x_hat @ self.down.T) @ self.up.T  # (..., r) then (..., O)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.smoothed_input(x)
        xq = fake_quantize_input(x_hat, self.config.a_spec, conv=self.conv)  # Q(X_hat)
        if self.conv:
            y = F.conv2d(xq, self.residual, self.bias, *self.conv_args)  # Q(X_hat) Q(R) + b
        else:
            y = F.linear(xq, self.residual, self.bias)
        return y + self.branch(x_hat) if self.config.rank else y

    def gemm_operands(self, x: torch.Tensor) -> dict:
        """The arguments of :func:`labkit.quant.gemm.w4a4_gemm` that compute this linear layer on ``x`` (N, C).

        Codes packed two per byte, float32 scales per token/channel and group, the branch's
        ``x_hat L1`` (N, r) and ``L2`` (r, O). Needs 4-bit weights and activations and an even G.
        """
        c = self.config
        if self.conv or c.w_bits != 4 or c.a_bits != 4 or x.dim() != 2:
            raise ValueError("gemm_operands needs a linear W4A4 layer and 2-D inputs (N, C)")
        x_hat = self.smoothed_input(x.float())
        xq = quantize_tensor(x_hat, c.a_spec)
        n_groups = x.shape[1] // c.group_size
        ops = dict(xq=pack_int4(xq.codes.to(torch.int8)), x_scale=xq.scale.reshape(-1, n_groups),
                   wq=pack_int4(self.residual_q.codes.to(torch.int8)),
                   w_scale=self.residual_q.scale.reshape(-1, n_groups), group_size=c.group_size, bias=self.bias)
        if c.rank:
            ops.update(lora_down_out=x_hat @ self.down.T, lora_up=self.up.T.contiguous())
        return ops

    @property
    def branch_bytes(self) -> int:
        """Bytes of the 16-bit branch: ``2 r (O + K)``."""
        return _HALF * (self.up.numel() + self.down.numel())

    @property
    def nbytes(self) -> int:
        """Weight storage: the residual's packed codes and fp16 scales, the fp16 branch and the
        fp16 smoothing factors (when smoothing). The bias is not counted."""
        return self.residual_q.nbytes + self.branch_bytes + (_HALF * self.smooth.numel() if self.config.smooth else 0)

    def extra_repr(self) -> str:
        c = self.config
        a = 16 if c.a_bits is None else c.a_bits
        return (f"W{c.w_bits}A{a}, group {c.group_size}, rank {c.rank}, smooth={c.smooth}, alpha={c.alpha}, "
                f"conv={self.conv}")


@torch.no_grad()
def output_error(reference: nn.Module, layer: nn.Module, x: torch.Tensor) -> float:
    """Relative output error ``||layer(x) - reference(x)||_F / ||reference(x)||_F`` on inputs ``x``."""
    y_ref = reference(x)
    y = layer(x)
    if y.shape != y_ref.shape:
        raise ValueError(f"outputs differ in shape: {tuple(y.shape)} vs {tuple(y_ref.shape)}")
    return float((y - y_ref).norm() / y_ref.norm().clamp(min=1e-12))


@torch.no_grad()
def svdquant_layer(module: nn.Module, inputs: torch.Tensor | None, *, config: SVDQuantConfig,
                   search_rows: int = 64) -> SVDQuantLayer:
    """Quantize one ``nn.Linear`` or ``nn.Conv2d`` with SVDQuant (or one of its ablations).

    Args:
        module: the float layer (not modified).
        inputs: calibration inputs of the layer, (..., C) or (B, C, H, W): their per-channel
            ranges give the smoothing factors, and the search of ``alpha`` is scored on them.
            May be None when ``config.smooth`` is False.
        config: bits, group size, rank, smoothing.
        search_rows: the search of ``alpha`` is scored on at most this many rows of ``inputs``
            (evenly strided along the first dimension; the ranges use all of them).

    Returns:
        :class:`SVDQuantLayer` computing the product of ``module`` up to quantization error.
    """
    if not isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"svdquant_layer quantizes nn.Linear or nn.Conv2d, got {type(module).__name__}")
    if not isinstance(config, SVDQuantConfig):
        raise TypeError(f"config must be an SVDQuantConfig, got {type(config).__name__}")
    weight = module.weight
    c, k = weight.shape[1], weight[0].numel()
    if c % config.group_size:
        raise ValueError(f"group_size={config.group_size} does not divide the {c} input channels of this layer")
    if config.rank > min(weight.shape[0], k):
        raise ValueError(f"rank={config.rank} exceeds min(O, K) = {min(weight.shape[0], k)} for a weight of shape "
                         f"{tuple(weight.shape)}")
    if not config.smooth:
        return SVDQuantLayer(module, torch.ones(c), config)
    if inputs is None:
        raise ValueError("smoothing needs calibration inputs; pass inputs or use smooth=False")
    x_max = channel_absmax(inputs, conv=isinstance(module, nn.Conv2d))
    if config.alpha is not None:
        return SVDQuantLayer(module, smoothing_factors(x_max, weight, alpha=config.alpha), config)
    check_int("search_rows", search_rows, 1)
    scored = inputs[:: -(-inputs.shape[0] // search_rows)]  # at most search_rows rows, spread over the data
    # show: start alpha-search
    best, best_err = None, float("inf")
    for alpha in ALPHA_GRID:  # the migration strength with the least output error on the calibration inputs
        lam = smoothing_factors(x_max, weight, alpha=alpha)  # lambda_j = max|X_j|^a / max|W_j|^(1-a)
        layer = SVDQuantLayer(module, lam, replace(config, alpha=alpha))
        err = output_error(module, layer, scored)
        if err < best_err:
            best, best_err = layer, err
    return best
    # show: end alpha-search


def replace_layers(model: nn.Module, layers: dict[str, nn.Module]) -> nn.Module:
    """A copy of ``model`` with the submodules named in ``layers`` replaced (e.g. by :class:`SVDQuantLayer` s)."""
    if not layers:
        raise ValueError("layers names no submodule to replace")
    qmodel = copy.deepcopy(model).eval()
    for name, layer in layers.items():
        qmodel.get_submodule(name)  # raises AttributeError on a bad name
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        setattr(parent, child, layer)
    return qmodel


def svdquant_model(model: nn.Module, inputs: dict[str, torch.Tensor], *, config: SVDQuantConfig,
                   search_rows: int = 64) -> nn.Module:
    """A copy of ``model`` whose layers named in ``inputs`` are :class:`SVDQuantLayer` s.

    Args:
        model: left untouched.
        inputs: ``{layer name: calibration inputs}``, e.g. from
            :func:`labkit.quant.smoothing.capture_inputs`; its keys choose the layers.
        config: the config of every layer.
        search_rows: as for :func:`svdquant_layer`.

    Returns:
        The quantized copy, in eval mode.
    """
    if not inputs:
        raise ValueError("inputs names no layer to quantize")
    return replace_layers(model, {name: svdquant_layer(model.get_submodule(name), x, config=config,
                                                                 search_rows=search_rows)
                                  for name, x in inputs.items()})

"""GroupNorm followed by SiLU, the pair that opens every residual block of the tiny UNet, as one op.

GroupNorm (Wu and He, 2018, arXiv:1803.08494, section 3.1) splits the C channels of each
sample into G groups of C/G channels and normalises each group with its own statistics. For
sample ``b`` and group ``g``, the set S of its ``m = (C/G) * H * W`` elements (eq. 7) has the
mean and standard deviation of eq. 2,

    mu = 1/m * sum_{k in S} x_k,        sigma = sqrt(1/m * sum_{k in S} (x_k - mu)^2 + eps),

every element becomes ``x_hat_i = (x_i - mu) / sigma`` (eq. 1), then a per-channel affine map
``gamma_c * x_hat_i + beta_c`` (eq. 6). The variance is the biased one (divided by m), as in
``torch.nn.GroupNorm``. Unlike BatchNorm the statistics never mix samples, so a batch of one
behaves like a batch of many: what a sampler needs.

SiLU, ``silu(y) = y * sigmoid(y)``, is the sigmoid-weighted linear unit of Elfwing, Uchibe and
Doya (2017, arXiv:1702.03118), the function the GELU paper calls SiLU (Hendrycks and Gimpel,
2016, arXiv:1606.08415) and Swish with beta = 1.

Why fuse. Both steps do a handful of flops per element, so on a GPU each is bound by memory
traffic. Eager PyTorch runs GroupNorm as a statistics pass (read x) and a normalisation pass
(read x, write y), then SiLU as a third (read y, write the result): three reads and two writes of
the activation. The fused kernel (:mod:`labkit.diffusion._kernels`) computes the statistics
(read x), then normalises, applies the affine map and SiLU in registers (read x, write once):
two reads, the second often from L2, and one write. On CPU the profile of chapter 09 puts the
pair at about 16% of sampling time; there :func:`group_norm_silu` runs the reference.

Shapes: B batch, C channels, G groups, ``*spatial`` any number of trailing dims (H, W for images).
Section: chapter 09, "Where sampling time goes".
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from labkit.backend import Op
from labkit.validation import check_int, describe

__all__ = ["check_group_norm_args", "group_norm_silu", "group_norm_silu_reference"]


def check_group_norm_args(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          num_groups: int, eps: float) -> None:
    """Validate the arguments of :func:`group_norm_silu` (shared by the reference and the kernel).

    Raises:
        TypeError: ``x``, ``weight`` or ``bias`` is not a floating-point tensor (``weight`` and
            ``bias`` may be None); ``num_groups`` is not an int; ``eps`` is not a real number.
        ValueError: ``x`` has fewer than 2 dims; ``num_groups`` < 1 or does not divide C;
            ``weight`` or ``bias`` is not of shape (C,); ``eps`` is negative or not finite.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor (B, C, *spatial), got {describe(x)}")
    if x.dim() < 2:
        raise ValueError(f"x must be (B, C, *spatial) with at least 2 dims, got {describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    check_int("num_groups", num_groups, 1)
    channels = x.shape[1]
    if channels % num_groups:
        raise ValueError(f"num_groups={num_groups} must divide the number of channels C={channels}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of shape (C,) = ({channels},) or None, got {describe(t)}")
        if tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must have shape (C,) = ({channels},), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def group_norm_silu_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                              num_groups: int, eps: float = 1e-5) -> torch.Tensor:
    """``silu(group_norm(x))``: GroupNorm over ``num_groups`` groups of channels, then SiLU.

    Exactly ``F.silu(F.group_norm(x, num_groups, weight, bias, eps))``, which is what
    ``F.silu(nn.GroupNorm(num_groups, C, eps)(x))`` computes, bit for bit: the UNet's blocks call
    this op with their ``nn.GroupNorm``'s parameters and get the same numbers as before.

    Args:
        x: activations, float16/bfloat16/float32/float64.
        weight: gamma, one scale per channel, or None (no scale).
        bias: beta, one shift per channel, or None (no shift).
        num_groups: G, must divide C.
        eps: added to the variance before the square root.

    Returns:
        A tensor like ``x``. Differentiable (the Triton path is not).

    Shapes:
        x (B, C, *spatial), weight (C,), bias (C,) -> (B, C, *spatial).
    """
    check_group_norm_args(x, weight, bias, num_groups, eps)
    return F.silu(F.group_norm(x, num_groups, weight, bias, eps))


#: Fused GroupNorm + SiLU; Triton path (forward only) in :mod:`labkit.diffusion._kernels`.
group_norm_silu = Op("group_norm_silu", reference=group_norm_silu_reference,
                     triton="labkit.diffusion._kernels:group_norm_silu_triton")

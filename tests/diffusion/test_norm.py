"""labkit.diffusion.norm: the GroupNorm + SiLU reference, its equations, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from labkit.diffusion.norm import group_norm_silu, group_norm_silu_reference


def by_the_equations(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, groups: int,
                     eps: float) -> torch.Tensor:
    """Wu and He's eq. 1-2 (biased variance over each (sample, group)), eq. 6, then y * sigmoid(y), in float64."""
    b, c = x.shape[:2]
    xg = x.double().reshape(b, groups, -1)  # (B, G, C/G * S)
    mu = xg.mean(-1, keepdim=True)
    var = ((xg - mu) ** 2).mean(-1, keepdim=True)
    x_hat = ((xg - mu) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.dim() - 2)
    y = weight.double().reshape(shape) * x_hat + bias.double().reshape(shape)
    return y * torch.sigmoid(y)


def params(c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, generator=g), torch.randn(c, generator=g)


@pytest.mark.parametrize("shape,groups", [((3, 12, 5, 5), 4), ((3, 12, 5, 5), 3), ((2, 12, 1, 1), 6),
                                          ((2, 6, 7), 2), ((4, 8), 4), ((2, 4, 3, 2, 5), 1)])
def test_reference_is_torch_group_norm_then_silu(shape: tuple[int, ...], groups: int) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))) * 3 + 2
    weight, bias = params(shape[1], 1)
    out = group_norm_silu_reference(x, weight, bias, groups, 1e-5)
    assert torch.equal(out, F.silu(F.group_norm(x, groups, weight, bias, 1e-5)))
    torch.testing.assert_close(out.double(), by_the_equations(x, weight, bias, groups, 1e-5), rtol=1e-5, atol=1e-5)


def test_reference_matches_the_module_bit_for_bit_and_keeps_gradients() -> None:
    """What the UNet relies on: the op with an nn.GroupNorm's parameters is F.silu(norm(x))."""
    norm = nn.GroupNorm(4, 12, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12)), norm.bias.copy_(torch.randn(12))
    x = torch.randn(3, 12, 5, 5, requires_grad=True)
    out = group_norm_silu(x, norm.weight, norm.bias, norm.num_groups, norm.eps, backend="reference")
    assert torch.equal(out, F.silu(norm(x)))
    out.sum().backward()
    assert x.grad is not None and norm.weight.grad is not None


def test_reference_without_affine_and_in_half_precision() -> None:
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(group_norm_silu_reference(x, None, None, 3),
                               by_the_equations(x, torch.ones(6), torch.zeros(6), 3, 1e-5).float())
    xh, (w, b) = x.half(), params(6, 2)
    out = group_norm_silu_reference(xh, w.half(), b.half(), 3)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), by_the_equations(xh, w.half(), b.half(), 3, 1e-5), rtol=4e-3, atol=4e-3)


def test_reference_rejects_bad_arguments() -> None:
    x = torch.randn(2, 6, 3, 3)
    w, b = params(6, 0)
    with pytest.raises(ValueError, match="num_groups=4 must divide the number of channels C=6"):
        group_norm_silu_reference(x, w, b, 4)
    with pytest.raises(ValueError, match=r"num_groups must be >= 1, got 0"):
        group_norm_silu_reference(x, w, b, 0)
    with pytest.raises(TypeError, match="num_groups must be an int"):
        group_norm_silu_reference(x, w, b, 2.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\) = \(6,\), got \(3,\)"):
        group_norm_silu_reference(x, w[:3], b, 2)
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(6,\), got \(1, 6\)"):
        group_norm_silu_reference(x, w, b[None], 2)
    with pytest.raises(TypeError, match="weight must be a tensor"):
        group_norm_silu_reference(x, [1.0] * 6, b, 2)
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        group_norm_silu_reference(x.long(), w, b, 2)
    with pytest.raises(TypeError, match="bias must be a floating-point tensor"):
        group_norm_silu_reference(x, w, b.long(), 2)
    with pytest.raises(ValueError, match="at least 2 dims"):
        group_norm_silu_reference(torch.randn(6), w, b, 2)
    with pytest.raises(TypeError, match="x must be a tensor"):
        group_norm_silu_reference(x.numpy(), w, b, 2)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        group_norm_silu_reference(x, w, b, 2, -1e-5)
    with pytest.raises(TypeError, match="eps must be a real number"):
        group_norm_silu_reference(x, w, b, 2, "1e-5")

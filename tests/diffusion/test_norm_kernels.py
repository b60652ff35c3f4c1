"""labkit.diffusion._kernels: the fused GroupNorm + SiLU kernel against the reference, and in the UNet.

Compiled on a GPU, under TRITON_INTERPRET=1 on CPU (slow), so the shapes stay tiny and awkward
(B = 3, C = 12 in 4 or 3 groups, 5 x 5 and 1 x 1 images). The looped path (a group larger than
one tile) is reached cheaply by shrinking ``MAX_TILE``.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from labkit.backend import use_backend
from labkit.diffusion import TinyUNet, UNetConfig
from labkit.diffusion.norm import group_norm_silu_reference
from labkit.testing import assert_close

pytestmark = pytest.mark.gpu  # kernel parity: selected natively on a GPU host
KERNELS = "labkit.diffusion._kernels"


def dtypes(device: str) -> list[torch.dtype]:
    """The interpreter mishandles bfloat16: it is checked on a GPU only."""
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def problem(shape: tuple[int, ...], dtype: torch.dtype, device: str, *, seed: int, loc: float = 0.5,
            scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale + loc
    weight = torch.randn(shape[1], generator=g)
    bias = torch.randn(shape[1], generator=g)
    return x.to(dtype).to(device), weight.to(dtype).to(device), bias.to(dtype).to(device)


def exact(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """The reference in float64 (one rounding, as the kernel does), cast back to x's dtype."""
    w = None if weight is None else weight.double()
    b = None if bias is None else bias.double()
    return group_norm_silu_reference(x.double(), w, b, groups).to(x.dtype)


CASES = {"c12_g4_5x5": ((3, 12, 5, 5), 4), "c12_g3_5x5": ((3, 12, 5, 5), 3), "c12_g4_1x1": ((3, 12, 1, 1), 4),
         "c12_g3_1x1": ((3, 12, 1, 1), 3), "c6_g2_len7": ((2, 6, 7), 2), "c8_g4_no_spatial": ((5, 8), 4),
         "c12_g12_one_element": ((2, 12, 1, 1), 12)}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("max_tile", [4096, 16], ids=["one_tile", "looped"])
def test_matches_reference(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch, case: str,
                           max_tile: int) -> None:
    kernels = triton_kernels(KERNELS)
    monkeypatch.setattr(kernels, "MAX_TILE", max_tile)
    shape, groups = CASES[case]
    for dtype in dtypes(device):
        x, weight, bias = problem(shape, dtype, device, seed=sum(shape) + groups)
        out = kernels.group_norm_silu_triton(x, weight, bias, groups)
        assert out.shape == x.shape and out.dtype == dtype
        # one-element groups: torch's x * scale + shift form loses the bias to cancellation, so the
        # float64 reference is the judge there (and of the half precision results, rounded once)
        expected = exact(x, weight, bias, groups)
        if dtype == torch.float32 and "one_element" not in case:
            assert_close(out, group_norm_silu_reference(x, weight, bias, groups), backend="triton")
        assert_close(out, expected, backend="triton")


def test_tile_rule() -> None:
    from labkit.diffusion._kernels import MAX_TILE, group_norm_silu_tiles  # the rule is plain Python

    assert group_norm_silu_tiles(3, 25) == (4, 32, True, 1)  # C=12, G=4, 5 x 5: one tile, one warp
    assert group_norm_silu_tiles(10, 64 * 64) == (1, MAX_TILE, False, 8)  # Stable Diffusion's 320 x 64 x 64
    assert group_norm_silu_tiles(40, 16 * 16) == (16, 256, False, 8)  # 1280 x 16 x 16: three channel blocks
    assert group_norm_silu_tiles(40, 1) == (64, 2, True, 1)  # 1 x 1 images: half the columns padding


def test_looped_statistics_survive_a_large_mean(triton_kernels, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mean 300, std 1, several tiles per group: Welford keeps the variance where E[x^2] - E[x]^2
    in float32 would lose about four of its seven digits."""
    kernels = triton_kernels(KERNELS)
    monkeypatch.setattr(kernels, "MAX_TILE", 64)
    x, weight, bias = problem((2, 6, 13, 11), torch.float32, device, seed=3, loc=300.0, scale=1.0)
    out = kernels.group_norm_silu_triton(x, weight, bias, 2)
    assert kernels.group_norm_silu_tiles(3, 143)[2] is False  # the looped path
    torch.testing.assert_close(out.double().cpu(), group_norm_silu_reference(
        x.double(), weight.double(), bias.double(), 2).cpu(), rtol=1e-4, atol=1e-4)


def test_strided_inputs_and_missing_affine(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    x = problem((3, 5, 12, 5), torch.float32, device, seed=7)[0]
    weight, bias = problem((1, 24), torch.float32, device, seed=9)[1:]
    views = {
        "channels_swapped": x.transpose(1, 2),  # (3, 12, 5, 5), spatial dims not mergeable: copied
        "every_other_column": problem((3, 12, 5, 10), torch.float32, device, seed=8)[0][..., ::2],
        "channels_last": x.transpose(1, 2).contiguous(memory_format=torch.channels_last),
    }
    for name, view in views.items():
        w, b = weight[:12].contiguous(), bias[:12].contiguous()
        out = kernels.group_norm_silu_triton(view, w, b, 4)
        assert out.is_contiguous(), name
        assert_close(out, group_norm_silu_reference(view, w, b, 4), backend="triton")
    view = views["channels_swapped"]
    assert_close(kernels.group_norm_silu_triton(view, None, None, 3), F.silu(F.group_norm(view, 3)), backend="triton")
    # half activations with float32 parameters (an autocast-style mix), strided weight
    xh = view.half()
    w32 = torch.randn(24, device=device)[::2]
    assert_close(kernels.group_norm_silu_triton(xh, w32, None, 4), exact(xh, w32, None, 4), backend="triton")


def test_empty_batch_and_bad_inputs(triton_kernels, device: str) -> None:
    kernels = triton_kernels(KERNELS)
    empty = kernels.group_norm_silu_triton(torch.empty(0, 12, 5, 5, device=device), None, None, 4)
    assert empty.shape == (0, 12, 5, 5)
    x, weight, bias = problem((2, 12, 3, 3), torch.float32, device, seed=0)
    with pytest.raises(ValueError, match="num_groups=5 must divide"):
        kernels.group_norm_silu_triton(x, weight, bias, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(C,\)"):
        kernels.group_norm_silu_triton(x, weight[:6], bias, 4)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        kernels.group_norm_silu_triton(x.to(torch.int32), weight, bias, 4)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16, got torch.float64"):
        kernels.group_norm_silu_triton(x.double(), weight, bias, 4)


def unet_and_inputs(device: str) -> tuple[TinyUNet, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A tiny UNet with every parameter redrawn (the zero-initialised output layers hide differences)."""
    model = TinyUNet(UNetConfig(base_channels=8, groups=4, time_dim=16), init_seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x = torch.randn(3, 1, 8, 8, generator=g)
    t, y = torch.randint(0, 1000, (3,), generator=g), torch.arange(3)
    return model.eval().to(device), (x.to(device), t.to(device), y.to(device))


def test_unet_uses_the_kernel_without_grad_and_the_reference_with_it(triton_kernels, device: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = triton_kernels(KERNELS)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # on a GPU: float32 convolutions, not TF32
    calls = []
    launcher = kernels.group_norm_silu_triton
    monkeypatch.setattr(kernels, "group_norm_silu_triton", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    model, (x, t, y) = unet_and_inputs(device)
    with torch.no_grad():
        with use_backend("reference"):
            ref = model(x, t, y)
        assert calls == []
        with use_backend("triton"):
            out = model(x, t, y)
    assert len(calls) == 2 * len(model.res_blocks()) + 1  # two per residual block and the output head
    assert_close(out, ref, backend="triton")
    calls.clear()
    with use_backend("triton"):  # autograd is recording: the forward-only kernel must not run
        grad_out = model(x, t, y)
    assert calls == [] and grad_out.requires_grad
    assert_close(grad_out.detach(), ref)
    if device == "cpu":
        assert torch.equal(grad_out.detach(), ref)

"""labkit.quant.svdquant: the low-rank split, the four variants, sizes, the integer path, bad inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from labkit.quant import QSpec, fake_quantize
from labkit.quant.svdquant import (ALPHA_GRID, VARIANTS, SVDQuantConfig, low_rank_split, output_error,
                                   replace_layers, svdquant_layer, svdquant_model, variant_config)
from labkit.testing import assert_close


def _linear(c_in: int = 64, c_out: int = 32, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(c_in, c_out)


def test_low_rank_split_by_hand():
    w = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # singular values 3 and 1
    up, down, residual = low_rank_split(w, 1)
    torch.testing.assert_close(up @ down, torch.tensor([[3.0, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(residual, torch.tensor([[0.0, 0.0], [0.0, 1.0]]), atol=1e-6, rtol=0)
    up0, down0, r0 = low_rank_split(w, 0)
    assert up0.shape == (2, 0) and down0.shape == (0, 2) and torch.equal(r0, w)


@pytest.mark.parametrize("shape", [(6, 10), (5, 3, 3, 3)])
def test_low_rank_split_adds_up_and_shrinks_the_residual(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    norms, k = [], w[0].numel()
    for r in range(min(shape[0], k) + 1):
        up, down, residual = low_rank_split(w, r)
        assert up.shape == (shape[0], r) and down.shape == (r, *shape[1:]) and residual.shape == w.shape
        assert_close(up @ down.reshape(r, k) + residual.reshape(shape[0], k), w.reshape(shape[0], k))
        norms.append(residual.norm().item())
    assert all(a > b for a, b in zip(norms, norms[1:]))  # Eckart-Young: each rank removes a singular value
    assert norms[-1] < 1e-2 * norms[0]  # full rank: only fp16 rounding of the factors is left


def test_naive_variant_is_fake_quantization_of_both_operands():
    lin = _linear(32, 8)
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(3))
    layer = svdquant_layer(lin, None, config=variant_config("naive", group_size=16))
    spec = QSpec(bits=4, granularity="group", group_size=16)
    expected = F.linear(fake_quantize(x, spec), fake_quantize(lin.weight.detach(), spec), lin.bias)
    assert_close(layer(x), expected)
    assert torch.equal(layer.smooth, torch.ones(32)) and layer.up.numel() == 0


@pytest.mark.parametrize("conv", [False, True])
def test_full_rank_branch_makes_the_layer_nearly_exact(conv):
    """With r = min(O, K) the 4-bit path only carries fp16 rounding, so even 2-bit codes cost nothing."""
    torch.manual_seed(4)
    module = nn.Conv2d(8, 6, 3, padding=1) if conv else nn.Linear(8, 6)
    x = torch.randn(3, 8, 5, 5) if conv else torch.randn(40, 8)
    config = SVDQuantConfig(w_bits=2, a_bits=2, group_size=4, rank=6, alpha=0.5)
    assert output_error(module, svdquant_layer(module, x, config=config), x) < 2e-3
    naive = SVDQuantConfig(w_bits=2, a_bits=2, group_size=4, rank=0, smooth=False)
    assert output_error(module, svdquant_layer(module, x, config=naive), x) > 0.1


@pytest.mark.parametrize("conv", [False, True])
def test_svdquant_absorbs_outlier_channels(conv):
    """The section's claim in miniature: inputs with two channels 50x larger than the rest."""
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    module = nn.Conv2d(32, 24, 3, padding=1) if conv else nn.Linear(64, 48)
    c = 32 if conv else 64
    boost = torch.ones(c)
    boost[[3, 17]] = 50.0
    if conv:
        x_cal, x_test = (torch.randn(8, c, 6, 6, generator=g) * boost.reshape(-1, 1, 1) for _ in range(2))
    else:
        x_cal, x_test = (torch.randn(256, c, generator=g) * boost for _ in range(2))
    rank = 18 if conv else 4  # a conv outlier channel spans its 9 kernel positions
    errors = {v: output_error(module, svdquant_layer(module, x_cal, config=variant_config(v, rank=rank, group_size=16)),
                              x_test) for v in VARIANTS}
    assert errors["svdquant"] < errors["naive"] / 3
    assert errors["svdquant"] < errors["smoothing"] / 1.5
    assert errors["svdquant"] < errors["low-rank"]


def test_alpha_search_picks_a_grid_value_no_worse_than_a_fixed_one():
    lin = _linear(32, 16, seed=6)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 32, generator=g) * torch.linspace(0.1, 20.0, 32)
    searched = svdquant_layer(lin, x, config=variant_config("svdquant", rank=2, group_size=8), search_rows=50)
    fixed = svdquant_layer(lin, x, config=variant_config("svdquant", rank=2, group_size=8, alpha=0.5))
    assert searched.config.alpha in ALPHA_GRID
    assert output_error(lin, searched, x) <= output_error(lin, fixed, x) + 1e-7


def test_sizes_by_hand():
    lin = _linear(64, 32)
    x = torch.randn(10, 64)
    layer = svdquant_layer(lin, x, config=SVDQuantConfig(group_size=16, rank=4, alpha=0.5))
    # residual: 32*64 codes at 4 bits = 1024 B, plus 32*4 fp16 scales = 256 B; branch 2*4*(32+64) = 768 B;
    # smoothing factors 2*64 = 128 B
    assert layer.branch_bytes == 768
    assert layer.nbytes == 1024 + 256 + 768 + 128
    naive = svdquant_layer(lin, None, config=variant_config("naive", group_size=16))
    assert naive.nbytes == 1024 + 256


def test_integer_gemm_equals_fake_quantization():
    gemm = pytest.importorskip("labkit.quant.gemm")
    lin = _linear(64, 24, seed=7)
    x = torch.randn(9, 64, generator=torch.Generator().manual_seed(7))
    for variant in ("naive", "svdquant"):
        layer = svdquant_layer(lin, x, config=variant_config(variant, rank=4, group_size=16))
        out = gemm.w4a4_gemm(**layer.gemm_operands(x), backend="reference")
        torch.testing.assert_close(out, layer(x), rtol=1e-5, atol=1e-5)


def test_model_copy_and_replacement():
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    x = torch.randn(30, 16)
    inputs = {"0": x, "2": F.gelu(model[0](x)).detach()}
    before = [p.clone() for p in model.parameters()]
    qmodel = svdquant_model(model, inputs, config=variant_config("svdquant", rank=4, group_size=16))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the float model is untouched
    assert type(qmodel[0]).__name__ == "SVDQuantLayer" and isinstance(model[0], nn.Linear)
    assert output_error(model, qmodel, x) < 0.1
    swapped = replace_layers(model, {"2": nn.Identity()})
    assert swapped(x).shape == (30, 32)
    with pytest.raises(AttributeError):
        replace_layers(model, {"5": nn.Identity()})
    with pytest.raises(ValueError, match="no submodule"):
        replace_layers(model, {})
    with pytest.raises(ValueError, match="no layer"):
        svdquant_model(model, {}, config=SVDQuantConfig())


def test_bad_arguments():
    lin = _linear(64, 32)
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="w_bits"):
        SVDQuantConfig(w_bits=9)
    with pytest.raises(ValueError, match="a_bits"):
        SVDQuantConfig(a_bits=1)
    with pytest.raises(TypeError, match="w_bits"):
        SVDQuantConfig(w_bits=4.0)
    with pytest.raises(ValueError, match="rank"):
        SVDQuantConfig(rank=-1)
    with pytest.raises(ValueError, match="alpha"):
        SVDQuantConfig(alpha=1.2)
    with pytest.raises(TypeError, match="smooth"):
        SVDQuantConfig(smooth=1)
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("gptq")
    with pytest.raises(ValueError, match="group_size=48 does not divide the 64"):
        svdquant_layer(lin, x, config=SVDQuantConfig(group_size=48))
    with pytest.raises(ValueError, match="rank=40 exceeds"):
        svdquant_layer(lin, x, config=SVDQuantConfig(rank=40))
    with pytest.raises(ValueError, match="rank must be"):
        low_rank_split(torch.zeros(3, 5), 4)
    with pytest.raises(ValueError, match="calibration inputs"):
        svdquant_layer(lin, None, config=SVDQuantConfig())
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d"):
        svdquant_layer(nn.ReLU(), x, config=SVDQuantConfig())
    with pytest.raises(TypeError, match="SVDQuantConfig"):
        svdquant_layer(lin, x, config={"rank": 4})
    with pytest.raises(ValueError, match="groups=1"):
        svdquant_layer(nn.Conv2d(4, 4, 3, groups=2), None, config=variant_config("naive", group_size=2))
    with pytest.raises(ValueError, match="search_rows"):
        svdquant_layer(lin, x, config=SVDQuantConfig(group_size=16), search_rows=0)
    layer = svdquant_layer(lin, x, config=SVDQuantConfig(a_bits=8, group_size=16, rank=2))
    with pytest.raises(ValueError, match="gemm_operands"):
        layer.gemm_operands(x)
    with pytest.raises(ValueError, match="shape"):
        output_error(lin, nn.Linear(64, 3), x)

"""Patch parallelism: exactness with fresh halos, byte counts by hand, partial conditioning and bad input."""

from __future__ import annotations

import pytest
import torch

from labkit.diffusion import TinyUNet
from labkit.diffusion.patch_parallel import (PatchConfig, PatchRun, canvas_forward, canvas_tiles, conditioned_layers,
                                             halo_layers, merge_patches, sample_canvas, sample_patch_parallel,
                                             split_patches)

from tests.diffusion._models import SCHEDULE, random_unet


@pytest.fixture(scope="module")
def model() -> TinyUNet:
    """A small UNet with every parameter random (the zero-initialised layers would hide differences)."""
    return random_unet(0, std=0.2)


def canvas(B: int = 2, H: int = 8, W: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, 1, H, W, generator=torch.Generator().manual_seed(seed))


def test_split_and_merge_by_hand():
    x = torch.arange(16.0).view(1, 1, 2, 8)
    left, right = split_patches(x, 2)
    assert left.tolist() == [[[[0, 1, 2, 3], [8, 9, 10, 11]]]]
    assert right.tolist() == [[[[4, 5, 6, 7], [12, 13, 14, 15]]]]
    assert torch.equal(merge_patches([left, right]), x)


def test_canvas_tiles_row_by_row():
    x = torch.arange(2 * 4.0).view(1, 1, 2, 4)  # [[0 1 2 3], [4 5 6 7]]
    tiles = canvas_tiles(x, size=2)
    assert tiles.shape == (2, 1, 2, 2)
    assert tiles[0, 0].tolist() == [[0, 1], [4, 5]] and tiles[1, 0].tolist() == [[2, 3], [6, 7]]


def test_canvas_forward_equals_model_on_its_own_size(model):
    x, t, y = canvas(3, 8, 8), torch.tensor([5, 50, 99]), torch.tensor([0, 3, 9])
    with torch.no_grad():
        assert torch.equal(canvas_forward(model, x, t, y), model(x, t, y))


def test_halo_layers_and_outside_in_order(model):
    names = halo_layers(model)
    assert len(names) == 20 and names[0] == "conv_in" and names[-1] == "conv_out"
    assert conditioned_layers(model, 0.0) == ()
    assert conditioned_layers(model, 0.1) == ("conv_in", "conv_out")
    assert conditioned_layers(model, 0.2) == ("conv_in", "conv_out", names[1], names[-2])
    assert set(conditioned_layers(model, 1.0)) == set(names)


@pytest.mark.parametrize("P", [1, 2, 4])
def test_fresh_halos_reproduce_one_device(model, P):
    x_T = canvas(2, 8, 16)
    ref = sample_canvas(model, SCHEDULE, x_T=x_T, steps=4)
    run = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=4, config=PatchConfig(n_patches=P, stale=False))
    assert isinstance(run, PatchRun) and run.images.shape == ref.shape
    assert (run.images - ref).abs().max().item() < 1e-4
    if P == 1:
        assert run.total_p2p == 0 and run.total_allgather == 0


def test_latent_bytes_by_hand(model):
    # Only conv_in is conditioned, GroupNorm statistics are not exchanged. Per step and boundary, each side
    # sends one column of the latent: B * C * H * 4 bytes = 2 * 1 * 8 * 4 = 64, so 2 * 64 = 128 bytes
    # neighbour to neighbour; the all-gather moves every whole strip to every other device:
    # P * (P - 1) * (2 * 1 * 8 * 8 * 4) = 2 * 512 = 1024 bytes.
    cfg = PatchConfig(n_patches=2, conditioned=0.05, exchange_norm=False)
    assert conditioned_layers(model, 0.05) == ("conv_in",)
    run = sample_patch_parallel(model, SCHEDULE, x_T=canvas(2, 8, 16), steps=3, config=cfg)
    assert run.bytes_p2p == (128, 128, 128)
    assert run.bytes_allgather == (1024, 1024, 1024)
    assert run.breakdown == {"latent": (384, 3072), "halos": (0, 0), "norm": (0, 0)}


def test_bytes_grow_with_the_conditioned_fraction_and_neighbours_beat_allgather(model):
    x_T = canvas(1, 8, 32)
    totals = []
    for f in (0.0, 0.3, 0.6, 1.0):
        run = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=2, config=PatchConfig(n_patches=4, conditioned=f))
        assert run.total_p2p <= run.total_allgather
        totals.append(run.total_p2p)
    assert totals == sorted(totals) and totals[0] < totals[-1]
    none = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=2,
                                 config=PatchConfig(n_patches=4, conditioned=0.0, exchange_norm=False))
    assert none.total_p2p == 0 and none.total_allgather == 0


def test_stale_halos_deviate_but_less_than_no_halos(model):
    x_T = canvas(2, 8, 16, seed=1)
    ref = sample_canvas(model, SCHEDULE, x_T=x_T, steps=4)
    stale = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=4, config=PatchConfig(n_patches=2))
    cut = sample_patch_parallel(model, SCHEDULE, x_T=x_T, steps=4, config=PatchConfig(n_patches=2, conditioned=0.0,
                                                                                         fill="zeros"))
    d_stale = (stale.images - ref).abs().mean().item()
    assert 0 < d_stale < (cut.images - ref).abs().mean().item()


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="divide"):
        split_patches(canvas(1, 8, 10), 4)
    with pytest.raises(ValueError, match="B, C, H, W"):
        split_patches(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="at least one"):
        merge_patches([])
    with pytest.raises(ValueError, match="multiples"):
        canvas_tiles(torch.zeros(1, 1, 8, 12), 8)
    with pytest.raises(ValueError, match="n_patches=3 must divide"):
        sample_patch_parallel(model, SCHEDULE, x_T=canvas(1, 8, 16), steps=2, config=PatchConfig(n_patches=3))
    with pytest.raises(ValueError, match="multiple of 2"):
        sample_patch_parallel(model, SCHEDULE, x_T=canvas(1, 8, 24), steps=2, config=PatchConfig(n_patches=8))
    with pytest.raises(ValueError, match="multiples of"):
        sample_canvas(model, SCHEDULE, x_T=canvas(1, 8, 15), steps=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        zero = torch.zeros(1, dtype=torch.long)
        canvas_forward(model, torch.zeros(1, 2, 8, 8), zero, zero)
    with pytest.raises(ValueError, match="conditioned"):
        PatchConfig(conditioned=1.5)
    with pytest.raises(ValueError, match="fill"):
        PatchConfig(fill="mirror")
    with pytest.raises(TypeError, match="stale"):
        PatchConfig(stale=1)
    with pytest.raises(ValueError, match="n_patches"):
        PatchConfig(n_patches=0)
    with pytest.raises(TypeError, match="PatchConfig"):
        sample_patch_parallel(model, SCHEDULE, x_T=canvas(), steps=2, config={"n_patches": 2})
    with pytest.raises(TypeError, match="TinyUNet"):
        halo_layers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="fraction"):
        conditioned_layers(model, -0.1)
    with pytest.raises(ValueError, match="labels"):
        sample_canvas(model, SCHEDULE, x_T=canvas(2), steps=2, labels=torch.zeros(3, dtype=torch.long))

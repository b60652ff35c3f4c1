"""The chapter's reporting helpers: the UNet drawing follows the model, grids and controls."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from labkit.diffusion import TinyUNet, UNetConfig
from labkit.diffusion.report import (controls_below, cost_model_agreement, image_grid, unet_diagram,
                                     unet_layout)


def test_layout_of_the_default_unet_by_hand() -> None:
    nodes, pairs = unet_layout(TinyUNet(UNetConfig()))
    assert [n.name for n in nodes] == ["conv_in", "down.0.0", "downsample.0", "down.1.0", "mid.0", "mid.1",
                                       "up.1.0", "up.1.1", "upsample.0", "up.0.0", "up.0.1", "out"]
    assert [n.part for n in nodes].count("encoder") == 4
    # the decoder pops the skips last-in, first-out
    assert pairs == [("down.1.0", "up.1.0"), ("downsample.0", "up.1.1"), ("down.0.0", "up.0.0"),
                     ("conv_in", "up.0.1")]


def test_every_skip_the_decoder_reads_is_drawn() -> None:
    model = TinyUNet(UNetConfig(n_res=3, base_channels=16))
    x, t, y = torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        n_skips = len(model.encode(x, t, y).skips)
    nodes, pairs = unet_layout(model)
    assert len(pairs) == n_skips
    blocks = {name for name, _ in model.res_blocks()}
    assert blocks <= {n.name for n in nodes}
    fig = unet_diagram(model)
    assert sum(s.type == "rect" for s in fig.layout.shapes) == len(nodes)
    assert sum(s.type == "path" for s in fig.layout.shapes) == n_skips
    assert fig.layout.title.text


def test_image_grid_places_each_image() -> None:
    images = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 1, 2, 2)
    grid = image_grid(images, rows=2, cols=3)
    assert grid.shape == (5, 8)
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 2]).all()  # the gaps
    assert grid[3, 3] == images[4, 0, 0, 0]  # second row, second image, top-left pixel
    with pytest.raises(ValueError, match="rows \\* cols"):
        image_grid(images, rows=3, cols=3)
    with pytest.raises(ValueError, match="rows"):
        image_grid(images, rows=0)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        image_grid(torch.zeros(4, 2, 2))


def test_controls_below_moves_menus_and_sliders_under_the_plot() -> None:
    fig = go.Figure(go.Scatter(x=[0], y=[0]))
    fig.update_layout(updatemenus=[dict(y=1.1, buttons=[dict(label="a", method="update", args=[{}])])],
                      sliders=[dict(steps=[dict(label="s", method="update", args=[{}])])])
    controls_below(fig, gap=0.3, margin=120)
    assert fig.layout.updatemenus[0].y == -0.3 and fig.layout.updatemenus[0].yanchor == "top"
    assert fig.layout.updatemenus[0].direction == "up"  # a long list stays inside the figure
    assert fig.layout.sliders[0].y == -0.3 and fig.layout.margin.b == 120
    with pytest.raises(ValueError, match="gap"):
        controls_below(fig, gap=-1)


def test_bad_model() -> None:
    with pytest.raises(TypeError, match="model"):
        unet_layout("unet")


def test_cost_model_agreement_by_hand() -> None:
    from labkit.diffusion import LoRACost

    # merged: 2 + S, on the fly: 0 + 2 S (in seconds); at S = 1: 3 vs 2, at S = 8: 10 vs 16
    cost = {"k": LoRACost(merge_s=2.0, merged_step_s=1.0, setup_s=0.0, fly_step_s=2.0)}
    measured = {("k", 1, "merge"): 3.0, ("k", 1, "on_the_fly"): 2.0,  # exactly as predicted
                ("k", 8, "merge"): 20.0, ("k", 8, "on_the_fly"): 16.0}  # ratio off by 2, winner flipped
    factor, verdicts = cost_model_agreement(cost, measured, [("k", 1), ("k", 8)])
    assert factor == 2.0
    assert verdicts == [True, False]  # both points predict a gap >= 1.5
    with pytest.raises(ValueError, match="points"):
        cost_model_agreement(cost, measured, [])
    with pytest.raises(ValueError, match="clear_gap"):
        cost_model_agreement(cost, measured, [("k", 1)], clear_gap=1.0)

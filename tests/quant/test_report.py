"""labkit.quant.report: slider visibility, text tables, image grids."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.quant.report import image_grid, slider, text_table


def test_slider_shows_one_group_per_step_after_the_static_traces() -> None:
    s = slider(["a", "b"], ["title a", "title b"], traces_per_step=2, n_static=1, prefix="x = ")
    # 1 static trace, then 2 for "a" and 2 for "b"
    assert s["steps"][0]["args"][0]["visible"] == [True, True, True, False, False]
    assert s["steps"][1]["args"][0]["visible"] == [True, False, False, True, True]
    assert [st["args"][1]["title.text"] for st in s["steps"]] == ["title a", "title b"]
    assert s["currentvalue"]["prefix"] == "x = "
    assert s["y"] <= 0 and s["yanchor"] == "top"  # below the plot area, clear of the title


def test_slider_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="labels"):
        slider([], [], traces_per_step=1)
    with pytest.raises(ValueError, match="titles"):
        slider(["a"], ["t", "u"], traces_per_step=1)
    with pytest.raises(ValueError, match="traces_per_step"):
        slider(["a"], ["t"], traces_per_step=0)
    with pytest.raises(ValueError, match="active"):
        slider(["a"], ["t"], traces_per_step=1, active=1)


def test_text_table_aligns_and_formats() -> None:
    table = text_table(["name", "x", "n"], [("first", 1.23456, 1000), ("b", 10.0, 7)],
                       formats=["", ".2f", ",d"])
    assert table.splitlines() == ["name      x     n",
                                  "first  1.23 1,000",
                                  "b     10.00     7"]


def test_text_table_refuses_wide_or_ragged_tables() -> None:
    with pytest.raises(ValueError, match="wide"):
        text_table(["a"], [("x" * 90,)])
    with pytest.raises(ValueError, match="row 0"):
        text_table(["a", "b"], [(1,)])
    with pytest.raises(ValueError, match="formats"):
        text_table(["a", "b"], [(1, 2)], formats=[""])


def test_image_grid_places_images_with_gaps() -> None:
    images = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 1, 2, 2)
    grid = image_grid(images, rows=2, cols=2)
    assert grid.shape == (5, 5)
    assert grid[0, 0] == 0 and grid[0, 3] == 1 and grid[3, 0] == 2 and grid[4, 4] == 3
    assert math.isnan(grid[2, 0]) and math.isnan(grid[0, 2])  # the one-pixel gaps


def test_image_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="needs 4 images"):
        image_grid(torch.zeros(3, 1, 2, 2), rows=2, cols=2)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        image_grid(torch.zeros(4, 2, 2), rows=2, cols=2)
    with pytest.raises(ValueError, match="rows"):
        image_grid(torch.zeros(4, 1, 2, 2), rows=0, cols=2)

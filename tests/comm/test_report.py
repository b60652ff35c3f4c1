"""labkit.comm.report: the chapter's tables and figures lay out what they are given."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from labkit.comm.report import (bus_factor_markdown, leaf_spine_figure, slider_figure,
                                timeline_figure)
from labkit.comm.topology import Flow, build_topology, route_flows


def test_bus_factor_markdown_lists_every_collective_with_its_value() -> None:
    text = bus_factor_markdown(4)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 6  # header, rule, six collectives
    row = next(line for line in lines if line.startswith("| all-reduce"))
    assert "| 1.500 |" in row  # 2 (4 - 1) / 4
    assert "| 0.750 |" in next(line for line in lines if line.startswith("| all-gather"))
    assert "| 1.000 |" in next(line for line in lines if line.startswith("| broadcast"))
    with pytest.raises(ValueError, match="world_size"):
        bus_factor_markdown(1)


def test_leaf_spine_figure_draws_every_node_and_link() -> None:
    topo = build_topology(n_leaves=3, n_spines=2, hosts_per_leaf=2)
    fig = leaf_spine_figure(topo)
    nodes = {t.name: len(t.x) for t in fig.data if t.mode != "lines"}
    assert nodes == {"spine switches": 2, "leaf switches": 3, "hosts": 6}
    links = [t for t in fig.data if t.mode == "lines"]
    # each undirected link is two points and a gap: L S + N links
    assert sum(len(t.x) for t in links) == 3 * (3 * 2 + 6)
    assert "2 spines, 3 leaves" in fig.layout.title.text


def test_leaf_spine_figure_groups_links_by_load() -> None:
    topo = build_topology(n_leaves=2, n_spines=2, hosts_per_leaf=1)
    load = route_flows(topo, [Flow(0, 1, 1.0), Flow(0, 1, 1.0)], scheme="ecmp", seed=0)
    fig = leaf_spine_figure(topo, load=load, title="loaded")
    levels = sorted(t.name for t in fig.data if t.mode == "lines")
    assert levels[-1] in ("link load 2", "link load 1")
    assert any(name == "link load 0" for name in levels) == (levels[-1] == "link load 2")
    with pytest.raises(TypeError, match="topo"):
        leaf_spine_figure("not a fabric")  # type: ignore[arg-type]


def test_slider_figure_shows_one_panel_at_a_time() -> None:
    panels = [[go.Scatter(x=[0, 1], y=[i, i]), go.Scatter(x=[0], y=[i])] for i in range(3)]
    fig = slider_figure(panels, ["a", "b", "c"], ["t0 (ms)", "t1 (ms)", "t2 (ms)"], active=1,
                        x_title="x (ms)", y_title="y (ms)")
    assert [t.visible for t in fig.data] == [False, False, True, True, False, False]
    step = fig.layout.sliders[0].steps[2]
    assert step.args[0]["visible"] == [False] * 4 + [True] * 2
    assert step.args[1]["title.text"] == "t2 (ms)" and fig.layout.title.text == "t1 (ms)"
    assert fig.layout.sliders[0].y < 0  # below the plot, clear of the title
    with pytest.raises(ValueError, match="equal length"):
        slider_figure(panels, ["a"], ["t"], x_title="x", y_title="y")


def test_timeline_figure_has_four_lanes_per_chunk_count() -> None:
    ev = [{"chunk": 0, "kind": "compute", "start": 0.0, "end": 0.01},
          {"chunk": 0, "kind": "comm", "start": 0.01, "end": 0.02}]
    fig = timeline_figure(ev, {1: ev, 2: ev}, {1: "C = 1", 2: "C = 2"}, active=2)
    assert len(fig.data) == 8 and fig.layout.title.text == "C = 2"
    assert fig.data[0].x == (10.0,)  # ms
    with pytest.raises(ValueError, match="active"):
        timeline_figure(ev, {1: ev}, {1: "t"}, active=3)

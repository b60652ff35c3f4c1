"""Figures of the spatial chapter, kept here so the notebooks' cells stay short.

Each function returns a titled plotly figure whose control (slider or dropdown) selects among
results the notebook computed already, so it works in the static book.

Section: chapter 03, "Spatial CNN: messages between rows" and "Position-orientation space"
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["lane_panels", "lines_with_dropdown", "slider_lines"]


def _go():  # plotly loads on first use (import labkit stays light)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    return go, make_subplots


def lane_panels(examples: Mapping[int, Mapping[str, torch.Tensor]], *, title: str) -> object:
    """One row of heatmaps per gap length (image, truth, then one per model), a slider over gaps.

    Args:
        examples: gap length -> panel name -> (H, W) tensor; every gap has the same panel names.
        title: the figure's title.
    """
    from labkit.plotting import styled

    go, make_subplots = _go()
    gaps = list(examples)
    names = list(examples[gaps[0]])
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.02)
    for k, gap in enumerate(gaps):
        for j, name in enumerate(names):
            z = examples[gap][name].float().flip(0).numpy()  # row 0 at the top
            fig.add_trace(go.Heatmap(z=z, colorscale="Greys", reversescale=j > 0, showscale=False,
                                     visible=k == 0, hovertemplate="x=%{x} y=%{y}: %{z:.2f}"),
                          row=1, col=j + 1)
    per = len(names)
    steps = [dict(method="update", label=str(gap),
                  args=[{"visible": [i // per == k for i in range(per * len(gaps))]}])
             for k, gap in enumerate(gaps)]
    fig.update_layout(sliders=[dict(active=0, currentvalue=dict(prefix="gap length (rows): "), steps=steps)])
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_xaxes(title_text="column (pixels)", row=1, col=1)
    fig.update_yaxes(title_text="row (pixels, top at the top)", row=1, col=1)
    return styled(fig, title=title, height=380)


def lines_with_dropdown(x: Sequence[float], series: Mapping[str, Mapping[str, Sequence[float]]], *,
                        title: str, x_title: str, y_titles: Mapping[str, str]) -> object:
    """Line plots of several views of the same models, a dropdown to switch views.

    Args:
        x: the shared x values.
        series: view -> line name -> y values; every view has the same line names.
        title, x_title: the figure's title and x-axis title.
        y_titles: view -> y-axis title.
    """
    from labkit.plotting import PALETTE, styled

    go, _ = _go()
    fig = go.Figure()
    views = list(series)
    names = list(series[views[0]])
    for k, view in enumerate(views):
        for colour, name in zip(PALETTE, names):
            fig.add_scatter(x=list(x), y=list(series[view][name]), mode="lines+markers", name=name,
                            visible=k == 0, line=dict(color=colour))
    per = len(names)
    buttons = [dict(label=view, method="update",
                    args=[{"visible": [i // per == k for i in range(per * len(views))]},
                          {"yaxis.title.text": y_titles[view]}]) for k, view in enumerate(views)]
    fig.update_layout(updatemenus=[dict(type="dropdown", x=1.0, xanchor="right", y=1.15, yanchor="top",
                                        buttons=buttons)])
    return styled(fig, title=title, x_title=x_title, y_title=y_titles[views[0]])


def slider_lines(frames: Mapping[object, Mapping[str, tuple[Sequence[float], Sequence[float]]]], *,
                 title: str, x_title: str, y_title: str, prefix: str, log_x: bool = False) -> object:
    """Lines per slider position: ``frames[position][name] = (x, y)``."""
    from labkit.plotting import PALETTE, styled

    go, _ = _go()
    fig = go.Figure()
    keys = list(frames)
    names = list(frames[keys[0]])
    for k, key in enumerate(keys):
        for colour, name in zip(PALETTE, names):
            xs, ys = frames[key][name]
            fig.add_scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name, visible=k == 0,
                            line=dict(color=colour))
    per = len(names)
    steps = [dict(method="update", label=str(key),
                  args=[{"visible": [i // per == k for i in range(per * len(keys))]}])
             for k, key in enumerate(keys)]
    fig.update_layout(sliders=[dict(active=0, currentvalue=dict(prefix=prefix), steps=steps, pad=dict(t=50))])
    if log_x:
        fig.update_xaxes(type="log")
    return styled(fig, title=title, x_title=x_title, y_title=y_title)

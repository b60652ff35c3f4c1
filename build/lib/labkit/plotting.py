"""One look for every figure of the book, and a guard that every figure says what it shows.

:func:`styled` applies the ``labkit`` plotly template and refuses a figure without a title or
without axis titles (units belong in axis titles: ``"time (ms)"``). Works with plotly 5 and 7.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["PALETTE", "styled", "template"]

#: Colour-blind-safe qualitative palette (Okabe-Ito), used for traces in order.
PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def template() -> go.layout.Template:
    """The book's plotly template: white background, light grid, the palette above."""
    base = pio.templates["plotly_white"]
    tpl = go.layout.Template(base)
    tpl.layout.colorway = list(PALETTE)
    tpl.layout.font = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
    tpl.layout.title = dict(x=0.02, xanchor="left")
    tpl.layout.margin = dict(l=60, r=20, t=60, b=50)
    return tpl


def styled(fig: go.Figure, *, title: str | None = None, x_title: str | None = None,
           y_title: str | None = None, height: int = 420) -> go.Figure:
    """Apply the book's style and check the figure is titled and its axes labelled.

    Args:
        fig: a plotly figure.
        title, x_title, y_title: set them here, or beforehand on the figure.
        height: figure height in pixels.

    Raises:
        TypeError: ``fig`` is not a plotly figure.
        ValueError: the figure ends up without a title or, for cartesian plots, an axis title.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"styled expects a plotly.graph_objects.Figure, got {type(fig).__name__}")
    fig.update_layout(template=template(), height=height)
    if title is not None:
        fig.update_layout(title_text=title)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    if not fig.layout.title.text:
        raise ValueError("styled: every figure needs a title (pass title=...)")
    cartesian = any(hasattr(t, "xaxis") for t in fig.data)
    if cartesian and (not fig.layout.xaxis.title.text or not fig.layout.yaxis.title.text):
        raise ValueError("styled: label both axes, with units (pass x_title=... and y_title=...)")
    return fig

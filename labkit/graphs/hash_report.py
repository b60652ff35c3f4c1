"""Reporting for the GraphHash page: recall against memory, and comparisons at equal memory.

A GraphHash model stores an ID-to-row map beside its rows (:func:`~labkit.graphs.graphhash.table_size`
with ``stored_maps=1``); random hashing needs none. At the same number of rows the two therefore
use different memory, and a fair comparison reads random hashing's recall *at GraphHash's
memory*. :func:`recall_at_memory` interpolates a measured recall-memory curve (linear in log
memory, no extrapolation); :func:`recall_memory_figure` draws the curves with a slider over the
table sizes (a plotly control: it works in the static book).

Each result row is a dict ``{"fraction": f, method: {"recall", "ndcg", "rows", "mib",
"table_mib"}, ...}`` with ``mib`` the memory of rows and stored maps in MiB.

Section: chapter 01, "GraphHash".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from ..plotting import PALETTE, styled

__all__ = ["recall_at_memory", "recall_memory_figure"]


def recall_at_memory(memory: Sequence[float], recall: Sequence[float], at: float) -> float | None:
    """Recall of a measured curve at memory ``at``, linear in log(memory) between the points.

    Args:
        memory: increasing memory of the measured points (> 0).
        recall: the recall measured at each.
        at: the memory to read the curve at (> 0).

    Returns:
        The interpolated recall, or None when ``at`` lies outside the measured range.
    """
    if len(memory) != len(recall) or len(memory) < 2:
        raise ValueError(f"memory and recall must have the same length >= 2, got {len(memory)}, {len(recall)}")
    if any(not m > 0 for m in memory) or not at > 0:
        raise ValueError("memory values and at must be > 0")
    if any(b <= a for a, b in zip(memory[:-1], memory[1:])):
        raise ValueError("memory must be strictly increasing")
    if not memory[0] <= at <= memory[-1]:
        return None
    for (m0, r0), (m1, r1) in zip(zip(memory, recall), zip(memory[1:], recall[1:])):
        if at <= m1:
            t = (math.log(at) - math.log(m0)) / (math.log(m1) - math.log(m0))
            return r0 + t * (r1 - r0)
    return float(recall[-1])  # unreachable: at <= memory[-1]


def recall_memory_figure(results: Sequence[dict], methods: Sequence[tuple[str, str]], *,
                         full: dict, popularity: float, title: str, active: int = 0) -> go.Figure:
    """Test Recall@K against memory (rows + stored maps) per method, with a table-size slider.

    The slider marks one table size: a dotted line at each method's memory there, and the
    methods' numbers in a note above the plot (the top margin keeps the title clear).

    Args:
        results: one row per table size (module doc).
        methods: ``(key, label)`` of the methods to draw.
        full: the full tables' result (``recall``, ``mib``), drawn as a star and a line.
        popularity: the popularity ranking's recall, drawn as a line.
        title: figure title.
        active: the slider's starting position.
    """
    if not results or not methods:
        raise ValueError("results and methods must not be empty")
    if not 0 <= active < len(results):
        raise ValueError(f"active must be in [0, {len(results)}), got {active}")
    fig = go.Figure()
    for colour, (key, label) in zip(PALETTE, methods):
        fig.add_scatter(
            x=[r[key]["mib"] for r in results], y=[r[key]["recall"] for r in results],
            mode="lines+markers", name=label, line=dict(color=colour),
            customdata=[[100 * r["fraction"], r[key]["rows"], r[key]["ndcg"]] for r in results],
            hovertemplate="%{x:.3f} MiB (%{customdata[1]:,} rows, %{customdata[0]:.0f}% of them)"
                          "<br>Recall@20 %{y:.4f}, NDCG@20 %{customdata[2]:.4f}")
    grey = PALETTE[-1]
    fig.add_scatter(x=[full["mib"]], y=[full["recall"]], mode="markers", name="full tables",
                    marker=dict(size=11, symbol="star", color=grey))
    fig.add_hline(y=full["recall"], line_dash="dash", line_color=grey, annotation_text="full tables")
    fig.add_hline(y=popularity, line_dash="dot", line_color=grey, annotation_text="item popularity",
                  annotation_position="bottom right")
    base_shapes = [s.to_plotly_json() for s in fig.layout.shapes]
    base_notes = [a.to_plotly_json() for a in fig.layout.annotations]

    def marker_for(i: int) -> dict:
        r = results[i]
        parts = [f"{label} {r[key]['recall']:.4f} at {r[key]['mib']:.3f} MiB" for key, label in methods]
        text = f"<b>{100 * r['fraction']:g}% of the rows</b><br>" + "<br>".join(parts)
        lines = [dict(type="line", xref="x", yref="paper", x0=r[key]["mib"], x1=r[key]["mib"], y0=0, y1=1,
                      line=dict(color=colour, width=1, dash="dot"))
                 for colour, (key, _) in zip(PALETTE, methods)]
        note = dict(xref="paper", yref="paper", x=0.01, y=1.0, xanchor="left", yanchor="bottom", text=text,
                    showarrow=False, align="left", bgcolor="white")
        return {"shapes": base_shapes + lines, "annotations": base_notes + [note]}

    steps = [dict(method="relayout", label=f"{100 * r['fraction']:g}%", args=[marker_for(i)])
             for i, r in enumerate(results)]
    fig.update_layout(sliders=[dict(active=active, steps=steps, pad=dict(t=60),
                                    currentvalue=dict(prefix="table rows: "))],
                      **marker_for(active))
    fig.update_xaxes(type="log")
    styled(fig, title=title, x_title="memory: rows + stored ID-to-row maps (MiB, log scale)",
           y_title="test Recall@20 (fraction of held-out items)", height=560)
    fig.update_layout(margin=dict(t=100 + 18 * len(methods)))
    return fig

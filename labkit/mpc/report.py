"""Reporting helpers of chapter 14: cost comparisons, tables and figures with menus.

Paper: PUMA: Secure Inference of LLaMA-7B in Five Minutes (Dong et al., 2023), which counts
rounds and bytes per layer; these helpers put the engine's counters beside the closed forms of
:mod:`labkit.mpc.cost` and draw the chapter's figures, so that the notebooks' cells stay short.
Nothing here computes a protocol: it only reads :class:`~labkit.mpc.cost.Cost` values and
message logs.

The dropdowns of these figures sit below the plot area, where they cannot cover the title.

Section: chapter 14, "Sharing secrets" to "A secure transformer block".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from ..plotting import styled
from .comm import MessageLog
from .cost import Cost

__all__ = ["bytes_per_round", "cost_difference", "histogram_menu", "menu_below",
           "rounds_menu", "table_figure"]


def cost_difference(got: Cost, want: Cost) -> int:
    """Total absolute difference of two costs over rounds and all four byte counters.

    Zero exactly when the log agrees with the formula on every counter.
    """
    for name, value in (("got", got), ("want", want)):
        if not isinstance(value, Cost):
            raise TypeError(f"{name} must be a Cost, got {type(value).__name__}")
    pairs = zip(got.online_bytes + got.dealer_bytes, want.online_bytes + want.dealer_bytes)
    return abs(got.rounds - want.rounds) + sum(abs(p - q) for p, q in pairs)


def bytes_per_round(log: MessageLog, *, scope: str, sender: int = 0) -> dict[int, int]:
    """Online bytes that ``sender`` sent in each round of ``scope``, rounds counted from 1."""
    if not isinstance(log, MessageLog):
        raise TypeError(f"log must be a MessageLog, got {type(log).__name__}")
    if sender not in (0, 1):
        raise ValueError(f"sender must be 0 or 1 (a computing party), got {sender!r}")
    sent: dict[int, int] = {}
    for m in log.select(scope=scope, phase="online").messages:
        if m.sender == sender:
            sent[m.round] = sent.get(m.round, 0) + m.nbytes
    if not sent:
        return {}
    first = min(sent)
    return {r - first + 1: b for r, b in sorted(sent.items())}


def menu_below(fig: go.Figure, labels: Sequence[str], *, active: int = 0,
               titles: Sequence[str] | None = None,
               layouts: Sequence[Mapping[str, Any]] | None = None) -> go.Figure:
    """A dropdown under the plot that shows trace ``i`` (of ``len(labels)``) alone.

    Args:
        fig: a figure with one trace per label (extra traces after them stay visible).
        labels: the menu's entries.
        active: the entry shown first.
        titles: the figure's title for each entry (default: left unchanged).
        layouts: further layout changes per entry (e.g. an axis title).
    """
    n = len(labels)
    if not 0 <= active < n:
        raise ValueError(f"active must be in [0, {n}), got {active}")
    extra = len(fig.data) - n
    if extra < 0:
        raise ValueError(f"the figure has {len(fig.data)} traces for {n} labels")
    buttons = []
    for i, label in enumerate(labels):
        layout: dict[str, Any] = dict(layouts[i]) if layouts is not None else {}
        if titles is not None:
            layout["title.text"] = titles[i]
        visible = [j == i for j in range(n)] + [True] * extra
        buttons.append(dict(label=label, method="update", args=[{"visible": visible}, layout]))
    for j, trace in enumerate(fig.data[:n]):
        trace.visible = j == active
    fig.update_layout(updatemenus=[dict(buttons=buttons, active=active, x=0.0, xanchor="left",
                                        y=-0.22, yanchor="top", direction="up")],
                      margin=dict(b=110))
    return fig


def histogram_menu(counts: Mapping[str, torch.Tensor], *, expected: float, active: int = 0,
                   title: str, x_title: str, y_title: str) -> go.Figure:
    """Bars of 256 top-byte counts per label, one label at a time (a dropdown below).

    Args:
        counts: label -> top bytes (int64 values in 0..255).
        expected: the count of a uniform byte (a dashed line).
        active: the label shown first.
        title: prefix of the title; the label follows it.
    """
    labels = list(counts)
    fig = go.Figure()
    for label in labels:
        y = torch.bincount(counts[label].reshape(-1), minlength=256).numpy()
        fig.add_bar(x=np.arange(256), y=y, name=label)
    fig.add_hline(y=expected, line_dash="dash", annotation_text="uniform")
    menu_below(fig, labels, active=active, titles=[f"{title}: {label}" for label in labels])
    fig.update_layout(showlegend=False)
    return styled(fig, title=f"{title}: {labels[active]}", x_title=x_title, y_title=y_title)


def rounds_menu(logs: Mapping[str, MessageLog], *, active: str, n: int) -> go.Figure:
    """Bytes P0 sends in each online round of each operation (``scope`` = the label)."""
    names = list(logs)
    if active not in logs:
        raise ValueError(f"active must be one of {names}, got {active!r}")
    fig = go.Figure()
    titles = []
    for name in names:
        sent = bytes_per_round(logs[name], scope=name)
        fig.add_bar(x=list(sent), y=list(sent.values()), name=name)
        titles.append(f"{name}: bytes P0 sends per round ({len(sent)} rounds, n = {n})")
    menu_below(fig, names, active=names.index(active), titles=titles)
    return styled(fig, title=titles[names.index(active)], x_title="online round of the operation",
                  y_title="bytes sent by P0")


def table_figure(header: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str,
                 row_height: int = 28, widths: Sequence[float] | None = None) -> go.Figure:
    """A plotly table of ``rows`` under ``header``, tall enough for every row."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("every row needs one value per header column")
    columns = [[r[j] for r in rows] for j in range(len(header))]
    fig = go.Figure(go.Table(columnwidth=list(widths) if widths else None,
                             header=dict(values=list(header)), cells=dict(values=columns)))
    return styled(fig, title=title, height=130 + row_height * len(rows))

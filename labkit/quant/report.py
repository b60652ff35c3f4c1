"""Reporting helpers of chapter 10: plotly sliders over precomputed traces, text tables and
image grids, so that the section notebooks keep their cells short.

Nothing here computes a result of the chapter; it lays out what the notebooks measured.

Shapes: B images, H x W pixels.
Section: chapter 10, "Quantization from first principles" (used by every section).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..validation import check_int

__all__ = ["image_grid", "slider", "text_table"]


def slider(labels: Sequence[str], titles: Sequence[str], *, traces_per_step: int,
           n_static: int = 0, prefix: str = "", active: int = 0) -> dict:
    """A plotly slider that shows one group of traces per step and retitles the figure.

    The figure's traces are ``n_static`` always-visible ones first, then ``traces_per_step``
    traces for each step, in the order of ``labels``. The slider sits below the plot area, so
    it never covers the title (pass it to ``fig.update_layout(sliders=[...])``).

    Args:
        labels: one label per step (shown under the slider).
        titles: the figure's title at each step (same length as ``labels``).
        traces_per_step: traces that belong to each step (>= 1).
        n_static: traces shown at every step, added before the stepped ones.
        prefix: text before the current label.
        active: the step shown first.

    Returns:
        The slider as a dict.

    Raises:
        ValueError: empty ``labels``, lengths that differ, or ``active`` out of range.
    """
    if not labels:
        raise ValueError("labels must name at least one step")
    if len(titles) != len(labels):
        raise ValueError(f"titles has {len(titles)} entries, labels {len(labels)}: one title per step")
    check_int("traces_per_step", traces_per_step, 1)
    check_int("n_static", n_static, 0)
    check_int("active", active, 0, len(labels) - 1)
    n = len(labels)
    steps = []
    for i, (label, title) in enumerate(zip(labels, titles)):
        visible = [True] * n_static + [j // traces_per_step == i for j in range(n * traces_per_step)]
        steps.append(dict(method="update", label=str(label),
                          args=[{"visible": visible}, {"title.text": title}]))
    return dict(steps=steps, active=active, currentvalue=dict(prefix=prefix),
                x=0.0, len=1.0, y=0.0, yanchor="top", pad=dict(t=60))


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]], *,
               formats: Sequence[str] | None = None, width: int = 80) -> str:
    """A right-aligned plain-text table (first column left-aligned), at most ``width`` wide.

    Args:
        header: column names.
        rows: one sequence of values per row, as many as ``header``.
        formats: a format spec per column (e.g. ``".4f"``, ``",d"``, ``""``); default ``""``.
        width: the widest line allowed.

    Returns:
        The table, one line per row after the header, without a trailing newline.

    Raises:
        ValueError: a row or ``formats`` has the wrong length, or the table is wider than ``width``.
    """
    formats = [""] * len(header) if formats is None else list(formats)
    if len(formats) != len(header):
        raise ValueError(f"formats has {len(formats)} entries for {len(header)} columns")
    cells = [list(map(str, header))]
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {r} has {len(row)} values for {len(header)} columns")
        cells.append([format(v, f) if isinstance(v, (int, float)) else str(v) for v, f in zip(row, formats)])
    widths = [max(len(c[j]) for c in cells) for j in range(len(header))]
    lines = [" ".join([c[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(c[1:], widths[1:])])
             for c in cells]
    too_wide = max(len(line) for line in lines)
    if too_wide > width:
        raise ValueError(f"the table is {too_wide} characters wide, more than width={width}")
    return "\n".join(line.rstrip() for line in lines)


def image_grid(images: torch.Tensor, *, rows: int, cols: int) -> torch.Tensor:
    """``rows x cols`` single-channel images side by side with one-pixel NaN gaps.

    Args:
        images: (B, 1, H, W) with B >= rows * cols; the first ``rows * cols`` are placed row by row.
        rows, cols: the grid.

    Returns:
        (rows (H + 1) - 1, cols (W + 1) - 1) float tensor (NaN in the gaps: drawn blank).
    """
    check_int("rows", rows, 1)
    check_int("cols", cols, 1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, H, W), got {getattr(images, 'shape', type(images))}")
    if images.shape[0] < rows * cols:
        raise ValueError(f"{rows} x {cols} grid needs {rows * cols} images, got {images.shape[0]}")
    h, w = images.shape[2:]
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        out[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = images[i, 0].float().cpu()
    return out

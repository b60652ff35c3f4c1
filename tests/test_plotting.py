"""labkit.plotting: the style is applied and unlabelled figures are refused."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from labkit.plotting import PALETTE, styled


def test_styled_sets_titles_and_palette() -> None:
    fig = styled(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), title="T", x_title="n (elements)", y_title="time (ms)")
    assert fig.layout.title.text == "T"
    assert fig.layout.xaxis.title.text == "n (elements)" and fig.layout.yaxis.title.text == "time (ms)"
    assert tuple(fig.layout.template.layout.colorway) == PALETTE


def test_titles_set_beforehand_are_accepted() -> None:
    fig = go.Figure(go.Bar(x=[1], y=[2]), layout=dict(title="B", xaxis_title="x (s)", yaxis_title="y (B)"))
    assert styled(fig) is fig


def test_missing_title_is_refused() -> None:
    with pytest.raises(ValueError, match="title"):
        styled(go.Figure(go.Scatter(x=[1], y=[1])), x_title="a", y_title="b")


def test_missing_axis_title_is_refused() -> None:
    with pytest.raises(ValueError, match="axes"):
        styled(go.Figure(go.Scatter(x=[1], y=[1])), title="t", x_title="a")


def test_non_cartesian_needs_only_a_title() -> None:
    styled(go.Figure(go.Pie(values=[1, 2])), title="share")


def test_not_a_figure() -> None:
    with pytest.raises(TypeError, match="Figure"):
        styled({"data": []}, title="t")  # type: ignore[arg-type]

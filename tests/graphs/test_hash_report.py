"""labkit.graphs.hash_report: interpolation at equal memory and the recall-memory figure."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from labkit.graphs.hash_report import recall_at_memory, recall_memory_figure


def test_recall_at_memory_by_hand() -> None:
    # memory 1 -> 0.1, 4 -> 0.3: at 2 MiB, halfway in log memory, recall 0.2
    assert recall_at_memory([1.0, 4.0], [0.1, 0.3], 2.0) == pytest.approx(0.2)
    assert recall_at_memory([1.0, 4.0, 16.0], [0.1, 0.3, 0.4], 8.0) == pytest.approx(0.35)
    assert recall_at_memory([1.0, 4.0], [0.1, 0.3], 4.0) == pytest.approx(0.3)
    assert recall_at_memory([1.0, 4.0], [0.1, 0.3], 0.5) is None
    assert recall_at_memory([1.0, 4.0], [0.1, 0.3], 5.0) is None


def test_recall_at_memory_follows_a_log_line() -> None:
    # recall = log2(memory) exactly: interpolation in log memory recovers it anywhere
    mem = [1.0, 2.0, 8.0, 64.0]
    for at in (1.5, 3.0, 40.0):
        assert recall_at_memory(mem, [math.log2(m) for m in mem], at) == pytest.approx(math.log2(at))


@pytest.mark.parametrize("memory, recall, at, msg", [
    ([1.0], [0.1], 1.0, "same length"),
    ([1.0, 2.0], [0.1], 1.0, "same length"),
    ([0.0, 2.0], [0.1, 0.2], 1.0, "> 0"),
    ([2.0, 1.0], [0.1, 0.2], 1.5, "increasing"),
    ([1.0, 2.0], [0.1, 0.2], -1.0, "> 0"),
])
def test_recall_at_memory_bad_input(memory, recall, at, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        recall_at_memory(memory, recall, at)


def _row(fraction: float) -> dict:
    def method(recall: float, mib: float) -> dict:
        return dict(recall=recall, ndcg=recall / 2, rows=int(100 * fraction), mib=mib, table_mib=mib)
    return {"fraction": fraction, "random": method(0.1 + fraction, fraction), "graphhash": method(0.2, 2 * fraction)}


def test_figure_has_a_curve_per_method_and_a_slider_step_per_size() -> None:
    results = [_row(0.1), _row(0.2)]
    fig = recall_memory_figure(results, [("random", "random"), ("graphhash", "GraphHash")],
                               full=dict(recall=0.5, mib=1.0), popularity=0.05, title="t (units)", active=1)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["random", "GraphHash", "full tables"]
    assert list(fig.data[1].x) == [0.2, 0.4]  # each method at its own memory
    assert len(fig.layout.sliders[0].steps) == 2 and fig.layout.sliders[0].active == 1
    # the active step marks each method's memory at that size
    assert sorted(s.x0 for s in fig.layout.shapes if s.yref == "paper") == [0.2, 0.4]
    with pytest.raises(ValueError, match="active"):
        recall_memory_figure(results, [("random", "r")], full=dict(recall=0.5, mib=1.0), popularity=0.0,
                             title="t", active=2)
    with pytest.raises(ValueError, match="not be empty"):
        recall_memory_figure([], [("random", "r")], full=dict(recall=0.5, mib=1.0), popularity=0.0, title="t")

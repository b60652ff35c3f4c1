"""Tests of labkit.mpc.report and of the source regions the chapter's pages show."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

import labkit.mpc as mpc
from labkit import show
from labkit.mpc import approx, report, transformer
from labkit.mpc.cost import Cost
from labkit.mpc.programs import op_program


def test_cost_difference_by_hand() -> None:
    a = Cost(3, (10, 20), (5, 5))
    b = Cost(1, (12, 20), (5, 8))
    assert report.cost_difference(a, b) == 2 + 2 + 0 + 0 + 3
    assert report.cost_difference(a, a) == 0
    assert report.cost_difference(a, b) == report.cost_difference(b, a)  # symmetric
    with pytest.raises(TypeError, match="want"):
        report.cost_difference(a, (3, 10))


def test_bytes_per_round_of_a_product_and_a_relu() -> None:
    n = 8
    run = mpc.run(op_program, args=("mul", (n,), (n,)), inputs={0: torch.ones(n), 1: torch.ones(n)})
    # one round: P0 sends its shares of e and f, 2 n words
    assert report.bytes_per_round(run.log, scope="mul") == {1: 2 * n * 8}
    relu = mpc.run(op_program, args=("relu", (n,)), inputs={0: torch.randn(n)})
    sent = report.bytes_per_round(relu.log, scope="relu")
    assert list(sent) == list(range(1, 10))  # 9 rounds, numbered from 1
    assert sum(sent.values()) == mpc.relu_cost(n).online_bytes[0]
    assert report.bytes_per_round(relu.log, scope="nothing") == {}
    with pytest.raises(ValueError, match="sender"):
        report.bytes_per_round(run.log, scope="mul", sender=2)
    with pytest.raises(TypeError, match="log"):
        report.bytes_per_round(run, scope="mul")


def test_menu_below_shows_one_trace_and_keeps_the_title_clear() -> None:
    fig = go.Figure()
    for k in range(3):
        fig.add_scatter(x=[0, 1], y=[k, k])
    fig.add_hline(y=1)
    report.menu_below(fig, ["a", "b", "c"], active=1, titles=["A", "B", "C"])
    assert [t.visible for t in fig.data] == [False, True, False]
    menu = fig.layout.updatemenus[0]
    assert menu.y < 0 and menu.yanchor == "top"  # below the plot area, not over the title
    assert menu.buttons[2].args[0]["visible"] == [False, False, True]
    assert menu.buttons[0].args[1]["title.text"] == "A"
    with pytest.raises(ValueError, match="active"):
        report.menu_below(fig, ["a", "b", "c"], active=3)
    with pytest.raises(ValueError, match="traces"):
        report.menu_below(go.Figure(), ["a"])


def test_histogram_menu_counts_top_bytes() -> None:
    counts = {"zeros": torch.zeros(10, dtype=torch.int64), "ones": torch.ones(4, dtype=torch.int64)}
    fig = report.histogram_menu(counts, expected=1.0, active=1, title="T", x_title="x", y_title="y")
    assert list(fig.data[0].y[:2]) == [10, 0] and list(fig.data[1].y[:2]) == [0, 4]
    assert fig.layout.title.text == "T: ones"


def test_rounds_menu_and_table_figure() -> None:
    n = 4
    logs = {"mul": mpc.run(op_program, args=("mul", (n,), (n,)),
                           inputs={0: torch.ones(n), 1: torch.ones(n)}).log}
    fig = report.rounds_menu(logs, active="mul", n=n)
    assert "1 rounds" in fig.layout.title.text
    with pytest.raises(ValueError, match="active"):
        report.rounds_menu(logs, active="relu", n=n)
    table = report.table_figure(["a", "b"], [[1, 2], [3, 4]], title="t")
    assert list(table.data[0].cells.values[1]) == [2, 4]
    with pytest.raises(ValueError, match="one value per header"):
        report.table_figure(["a", "b"], [[1]], title="t")


@pytest.mark.parametrize("obj, region", [
    (mpc.share, "share"), (mpc.reconstruct, "reconstruct"), (mpc.PRG.words, "expand"),
    (mpc.beaver_mul, "beaver-round"), (mpc.msb, "adder"), (approx.gelu, "select"),
    (approx.exp, "limit"), (approx.reciprocal, "newton"), (transformer.gpt_forward, "block"),
])
def test_the_regions_the_pages_show(obj: object, region: str) -> None:
    listing = show(obj, region=region)
    assert 3 <= len(listing.numbered) <= 40
    assert "show:" not in listing.code


def test_the_kernel_region_is_marked() -> None:
    text = (Path(mpc.__file__).parent / "_kernels.py").read_text()  # not imported: Triton
    start, end = text.index("# show: start inner-loop"), text.index("# show: end inner-loop")
    assert start < text.index("tl.dot(a, b.T, part", start) < end

"""Chapter 05's reporting helpers: the paired t-interval, the menu layout, the GPU timing guard."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
import torch

from labkit.moe.report import grouped_mm_anchor, menu_above_plot, paired_t_interval, time_grouped_gemm


def test_paired_t_interval_by_hand() -> None:
    # diffs 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.3027, half width 4.3027 / sqrt(3) = 2.4841
    iv = paired_t_interval([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0)
    assert (iv.low, iv.high) == pytest.approx((2.0 - 2.48414, 2.0 + 2.48414), abs=1e-4)
    assert iv.n == 3 and "3 seeds" in iv.describe("nats")


def test_paired_t_interval_narrows_with_confidence_and_is_symmetric() -> None:
    diffs = torch.tensor([0.03, -0.01, 0.02, 0.00])
    wide, narrow = paired_t_interval(diffs, confidence=0.99), paired_t_interval(diffs, confidence=0.8)
    assert wide.low < narrow.low < narrow.mean < narrow.high < wide.high
    assert wide.mean - wide.low == pytest.approx(wide.high - wide.mean)


@pytest.mark.parametrize("bad, match", [([1.0], "len"), ([1.0, float("nan")], "finite")])
def test_paired_t_interval_bad_diffs(bad: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_t_interval(bad)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_paired_t_interval_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        paired_t_interval([1.0, 2.0], confidence=confidence)


def test_menu_sits_between_title_and_plot() -> None:
    fig = go.Figure(go.Bar(x=[1], y=[1]))
    menu_above_plot(fig, [dict(label="a", method="update", args=[{}])], margin_top=140)
    menu = fig.layout.updatemenus[0]
    assert menu.y >= 1.0 and menu.yanchor == "bottom"  # above the plot area
    assert fig.layout.margin.t == 140 and fig.layout.title.yref == "container"


def test_menu_bad_arguments() -> None:
    with pytest.raises(TypeError, match="fig"):
        menu_above_plot({}, [dict(label="a")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buttons"):
        menu_above_plot(go.Figure(), [])
    with pytest.raises(ValueError, match="margin_top"):
        menu_above_plot(go.Figure(), [dict(label="a")], margin_top=10)


def test_grouped_gemm_timing_runs_on_cuda_only() -> None:
    assert grouped_mm_anchor("cpu") is not None  # never the anchor on a CPU
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            time_grouped_gemm(n_tokens=8, n_experts=2, top_k=1, d_in=4, d_out=4)
    else:
        t = time_grouped_gemm(n_tokens=64, n_experts=4, top_k=2, d_in=64, d_out=64)
        assert t.rows == 128 and t.max_error < 2e-2 and t.ours_s > 0


def test_grouped_gemm_timing_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k"):
        time_grouped_gemm(n_tokens=8, n_experts=2, top_k=3, d_in=4, d_out=4)
    with pytest.raises((TypeError, ValueError), match="d_in"):
        time_grouped_gemm(n_tokens=8, n_experts=2, top_k=1, d_in=0, d_out=4)


def test_capacity_drops_by_hand_and_figure() -> None:
    from labkit.moe.report import capacity_drops, capacity_figure

    # 4 tokens all prefer expert 0 (then 1): top-1 loads (4, 0); capacity ceil(1.0 * 4 / 2) = 2
    probs = torch.tensor([[0.7, 0.2, 0.1]] * 4)
    drops = capacity_drops(probs, ks=[1, 2], factors=[1.0, 2.0])
    d = drops[1, 1.0]
    assert d.capacity == 2 and d.load.tolist() == [4, 0, 0] and d.kept.tolist() == [2, 0, 0]
    assert d.dropped == pytest.approx(0.5)
    assert drops[1, 2.0].dropped < d.dropped  # more room, fewer drops
    fig = capacity_figure(drops, n_tokens=4)
    assert len(fig.data) == 2 * len(drops) and fig.layout.title.text == d.title
    with pytest.raises(ValueError, match="probs"):
        capacity_drops(torch.ones(3), ks=[1], factors=[1.0])
    with pytest.raises(ValueError, match="k"):
        capacity_drops(probs, ks=[4], factors=[1.0])

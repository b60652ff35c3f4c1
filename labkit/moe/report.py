"""Reporting helpers for chapter 05's pages: paired-seed intervals, figure menus that leave the
title clear, and the grouped-GEMM timing of section 01 on a GPU.

Nothing here is a paper's mechanism; it keeps the notebooks' cells short.

- :func:`capacity_drops` and :func:`capacity_figure`: what a capacity limit keeps and drops of
  a trained router's assignments, for several ``top_k`` and capacity factors, as a figure with
  a slider;
- :func:`paired_t_interval`: a Student-t interval for the mean of per-seed differences (two
  models trained on the same seeds, so each seed gives one paired difference);
- :func:`menu_above_plot`: a plotly dropdown placed between the title and the plot area, with
  the top margin it needs, so the menu never covers the title;
- :func:`grouped_mm_anchor` and :func:`time_grouped_gemm`: PyTorch's own grouped GEMM
  (``torch._grouped_mm``) where this torch and GPU run it, and the timing of it against the
  per-expert loop and the Triton kernel of :mod:`labkit.moe.grouped_gemm`.

Section: chapter 05, "Top-k routing from scratch" (timing) and the chapter's other sections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from labkit.moe.gating import capacity_mask, expert_capacity, expert_load
from labkit.plotting import PALETTE, styled
from labkit.validation import check_int, check_real, check_tensor


@dataclass(frozen=True)
class CapacityDrop:
    """One (top_k, capacity factor) setting: loads per expert, what fits, the share dropped."""

    top_k: int
    factor: float
    capacity: int
    load: torch.Tensor  # (E,) assignments per expert
    kept: torch.Tensor  # (E,) assignments that fit
    dropped: float  # share of all assignments dropped

    @property
    def title(self) -> str:
        return (f"Expert load, top-{self.top_k}, capacity factor {self.factor}: capacity "
                f"{self.capacity} tokens, {self.dropped:.1%} of assignments dropped")


def capacity_drops(probs: torch.Tensor, *, ks: Sequence[int],
                   factors: Sequence[float]) -> dict[tuple[int, float], CapacityDrop]:
    """Route ``probs`` (N, E) top-k for every k of ``ks`` and cap each expert at every factor.

    Returns:
        ``{(k, factor): CapacityDrop}`` in the order of ``ks`` then ``factors``.
    """
    check_tensor("probs", probs, dims=2, shape="(N, E)")
    n_tok, n_exp = probs.shape
    table = {}
    for k in ks:
        check_int("k", k, 1, n_exp)
        experts = torch.topk(probs, k, dim=-1).indices  # (N, k)
        load = expert_load(experts, n_exp)
        for f in factors:
            cap = expert_capacity(n_tok, n_exp, k, f)
            keep = capacity_mask(experts, n_exp, cap)
            table[k, f] = CapacityDrop(top_k=k, factor=f, capacity=cap, load=load,
                                       kept=expert_load(experts, n_exp, keep),
                                       dropped=1 - keep.float().mean().item())
    return table


def capacity_figure(drops: dict[tuple[int, float], CapacityDrop], *, n_tokens: int) -> go.Figure:
    """Stacked bars of kept and dropped assignments per expert, a slider over the settings and
    a dashed line at the capacity."""
    if not drops:
        raise ValueError("drops must hold at least one setting")
    settings = list(drops.values())
    n_exp = settings[0].load.numel()

    def cap_line(d: CapacityDrop) -> list[dict]:
        return [dict(type="line", xref="paper", x0=0, x1=1, y0=d.capacity, y1=d.capacity,
                     line=dict(dash="dash", color=PALETTE[7]))]

    fig = go.Figure()
    for i, d in enumerate(settings):
        fig.add_bar(x=list(range(n_exp)), y=d.kept.tolist(), name="kept",
                    marker_color=PALETTE[0], visible=i == 0)
        fig.add_bar(x=list(range(n_exp)), y=(d.load - d.kept).tolist(), name="dropped",
                    marker_color=PALETTE[3], visible=i == 0)
    steps = [dict(method="update", label=f"k={d.top_k}, factor={d.factor}",
                  args=[{"visible": [j // 2 == i for j in range(2 * len(settings))]},
                        {"title.text": d.title, "shapes": cap_line(d)}])
             for i, d in enumerate(settings)]
    fig.update_layout(barmode="stack", shapes=cap_line(settings[0]),
                      sliders=[dict(steps=steps, currentvalue=dict(prefix="routing: "),
                                    pad=dict(t=50))])
    return styled(fig, title=settings[0].title, x_title="expert (first MoE layer)",
                  y_title=f"assignments out of {n_tokens} tokens", height=460)

__all__ = ["GroupedGemmTiming", "PairedInterval", "capacity_drops", "capacity_figure",
           "grouped_mm_anchor", "menu_above_plot", "paired_t_interval", "time_grouped_gemm"]


@dataclass(frozen=True)
class PairedInterval:
    """Mean of paired differences and its two-sided Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    def describe(self, unit: str = "") -> str:
        """One line: mean, interval, number of pairs."""
        u = f" {unit}" if unit else ""
        return (f"mean {self.mean:+.4f}{u}, {self.confidence:.0%} t-interval "
                f"[{self.low:+.4f}, {self.high:+.4f}] over {self.n} seeds")


def paired_t_interval(diffs: Sequence[float] | torch.Tensor, *,
                      confidence: float = 0.95) -> PairedInterval:
    """Student-t interval for the mean of ``diffs`` (one difference per seed).

    ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation.

    Args:
        diffs: at least two paired differences.
        confidence: c in (0, 1).

    Returns:
        :class:`PairedInterval`.
    """
    from scipy import stats

    values = torch.as_tensor(diffs, dtype=torch.float64).reshape(-1)
    n = check_int("len(diffs)", values.numel(), 2)
    c = check_real("confidence", confidence, 0.0, strict=True)
    if not c < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("diffs must be finite")
    mean = float(values.mean())
    half = float(stats.t.ppf((1 + c) / 2, n - 1)) * float(values.std(unbiased=True)) / math.sqrt(n)
    return PairedInterval(mean=mean, low=mean - half, high=mean + half, n=n, confidence=c)


def menu_above_plot(fig: go.Figure, buttons: list[dict], *, margin_top: int = 130) -> go.Figure:
    """Add a dropdown of ``buttons`` just above the plot area, below the title.

    The title keeps the top of the figure; the menu sits on the plot area's top edge, and the
    top margin grows to ``margin_top`` pixels so the two never overlap.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"fig must be a plotly Figure, got {type(fig).__name__}")
    if not isinstance(buttons, list) or not buttons:
        raise ValueError("buttons must be a non-empty list of plotly button dicts")
    check_int("margin_top", margin_top, 60)
    fig.update_layout(
        updatemenus=[dict(buttons=buttons, x=0.0, xanchor="left", y=1.02, yanchor="bottom",
                          direction="down", pad=dict(t=0, b=0))],
        margin=dict(t=margin_top), title=dict(y=0.98, yanchor="top", yref="container"))
    return fig


def grouped_mm_anchor(device: torch.device | str) -> str | None:
    """Why ``torch._grouped_mm`` cannot be the anchor on ``device``, or None when it can.

    It needs this torch to have it, a CUDA device of compute capability 9.0 or more (its
    CUTLASS kernels target Hopper) and bfloat16 inputs, which :func:`time_grouped_gemm` uses.
    """
    dev = torch.device(device)
    if not hasattr(torch, "_grouped_mm"):
        return "this torch has no torch._grouped_mm"
    if dev.type != "cuda" or not torch.cuda.is_available():
        return "torch._grouped_mm runs on CUDA only"
    major, _ = torch.cuda.get_device_capability(dev)
    if major < 9:
        return f"torch._grouped_mm needs sm_90 or newer, this GPU is sm_{major}x"
    return None


@dataclass(frozen=True)
class GroupedGemmTiming:
    """Median seconds of one grouped GEMM by three paths, and the Triton result's error."""

    n_experts: int
    rows: int
    loop_s: float
    ours_s: float
    torch_s: float | None
    max_error: float
    note: str

    @property
    def ours_vs_torch(self) -> float | None:
        """``torch._grouped_mm``'s time over ours (above 1: ours is faster)."""
        return None if self.torch_s is None else self.torch_s / self.ours_s


def time_grouped_gemm(*, n_tokens: int, n_experts: int, top_k: int, d_in: int, d_out: int,
                      seed: int = 0) -> GroupedGemmTiming:
    """Time the per-expert loop, ``torch._grouped_mm`` and the Triton grouped GEMM (bfloat16, GPU).

    The problem: ``n_tokens`` tokens routed top-``top_k`` over ``n_experts`` experts by random
    logits, sorted by expert, each expert a (d_in, d_out) matrix. The Triton result is checked
    against the loop before anything is timed (``max_error``, relative to the largest output).

    Raises:
        RuntimeError: no CUDA device.
    """
    for name, value in (("n_tokens", n_tokens), ("n_experts", n_experts), ("top_k", top_k),
                        ("d_in", d_in), ("d_out", d_out)):
        check_int(name, value, 1)
    if top_k > n_experts:
        raise ValueError(f"top_k={top_k} exceeds n_experts={n_experts}")
    if not torch.cuda.is_available():
        raise RuntimeError("time_grouped_gemm needs a CUDA device")
    from labkit.moe._kernels import grouped_mm_triton
    from labkit.moe.gating import permute_tokens_reference, topk_gating_reference
    from labkit.moe.grouped_gemm import grouped_mm_reference
    from labkit.runtime import cuda_median_seconds

    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(n_tokens, n_experts, generator=g, device="cuda")
    order, offsets = permute_tokens_reference(topk_gating_reference(logits, top_k)[2], n_experts)
    tokens = torch.randn(n_tokens, d_in, generator=g, device="cuda", dtype=torch.bfloat16)
    x = tokens[order // top_k].contiguous()  # (A, D) sorted by expert
    w = (torch.randn(n_experts, d_in, d_out, generator=g, device="cuda") * d_in ** -0.5).bfloat16()
    ref = grouped_mm_reference(x, w, offsets).float()
    ours = grouped_mm_triton(x, w, offsets).float()
    err = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    note = grouped_mm_anchor("cuda")
    t_torch = None
    if note is None:
        w_t = w.transpose(1, 2).contiguous().transpose(1, 2)  # (E, D, F), column-major per expert
        ends = offsets[1:].to(torch.int32)
        theirs = torch._grouped_mm(x, w_t, offs=ends).float()
        note = f"torch._grouped_mm max relative error {float((theirs - ref).abs().max() / ref.abs().max()):.1e}"
        t_torch = cuda_median_seconds(lambda: torch._grouped_mm(x, w_t, offs=ends))
    return GroupedGemmTiming(
        n_experts=n_experts, rows=x.shape[0],
        loop_s=cuda_median_seconds(lambda: grouped_mm_reference(x, w, offsets)),
        ours_s=cuda_median_seconds(lambda: grouped_mm_triton(x, w, offsets)),
        torch_s=t_torch, max_error=err, note=note)

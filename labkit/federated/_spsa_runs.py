"""Reporting for the shared-randomness section: held-out loss against bytes sent, one K per slider step.

Section: chapter 13, "Shared randomness: Just One Byte and Ferret".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

__all__ = ["loss_at_bytes", "loss_bytes_figure"]


def loss_at_bytes(sent: Sequence[int], losses: Sequence[float], budget: int) -> float:
    """The loss at the last point whose cumulative bytes are at most ``budget``."""
    if len(sent) != len(losses) or not sent:
        raise ValueError("sent and losses must be non-empty and of equal length")
    inside = [loss for b, loss in zip(sent, losses) if b <= budget]
    if not inside:
        raise ValueError(f"no point within {budget} bytes")
    return inside[-1]


def loss_bytes_figure(job: tuple[Sequence[int], Sequence[float]],
                      fedavg: tuple[Sequence[int], Sequence[float]],
                      ferret: Mapping[int, tuple[Sequence[int], Sequence[float]]]) -> go.Figure:
    """Held-out loss against bytes sent per peer (log scale), a slider over Ferret's K.

    Each argument gives ``(cumulative bytes, held-out loss)``, bytes 0 first; the zero point
    becomes the dotted "before fine-tuning" line. Just One Byte and FedAvg are in every view.
    """
    from labkit.plotting import PALETTE, styled

    fig = go.Figure()
    start = job[1][0]
    for name, (sent, loss), color in (("Just One Byte", job, PALETTE[0]),
                                      ("FedAvg", fedavg, PALETTE[1])):
        fig.add_trace(go.Scatter(x=list(sent[1:]), y=list(loss[1:]), name=name,
                                 mode="lines+markers", line=dict(color=color)))
    ks = sorted(ferret)
    for i, k in enumerate(ks):
        sent, loss = ferret[k]
        fig.add_trace(go.Scatter(x=list(sent[1:]), y=list(loss[1:]), name=f"Ferret, K = {k}",
                                 mode="lines+markers", line=dict(color=PALETTE[2]),
                                 visible=i == len(ks) - 1))
    fig.add_hline(y=start, line_dash="dot", annotation_text="before fine-tuning")
    steps = [dict(label=str(k), method="update",
                  args=[{"visible": [True, True] + [j == i for j in range(len(ks))]}])
             for i, k in enumerate(ks)]
    fig.update_layout(sliders=[dict(active=len(ks) - 1, steps=steps, y=-0.25,
                                    currentvalue=dict(prefix="Ferret's K per block: "))])
    fig.update_xaxes(type="log")
    return styled(fig, title="Held-out domain loss against bytes sent per peer",
                  x_title="bytes sent per peer or client (log scale)",
                  y_title="held-out loss (nats per byte)", height=500)

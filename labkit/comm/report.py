"""Tables and figures of chapter 11: the layout code its pages would otherwise repeat.

Nothing here computes a mechanism; every helper takes results the mechanisms produced (bus
factors, a fabric and its loads, measured timelines, detection scores) and lays them out:
markdown tables for the prose and plotly figures whose sliders or dropdowns choose among
precomputed results, so they work in the static book. Colours come from
:data:`labkit.plotting.PALETTE`; controls sit below the plot area so the title stays clear.

Section: chapter 11, "Collectives from send/recv", "T3", "Packet spraying", "C4" and
"Datatypes and dynamic meshes".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import networkx as nx
import plotly.graph_objects as go

from ..plotting import PALETTE, styled
from .costmodel import bus_factor_table

__all__ = ["bus_factor_markdown", "leaf_spine_figure", "slider_figure", "timeline_figure"]

_TIER_Y = {"spine": 2.0, "leaf": 1.0, "host": 0.0}


def bus_factor_markdown(world_size: int) -> str:
    """A markdown table of nccl-tests' bus-bandwidth factors for ``world_size`` ranks.

    Columns: collective, ``busbw / algbw`` as a formula and its value at n, and what S (the
    size in ``algbw = S / t``) means for that collective.
    """
    rows = bus_factor_table(world_size)
    head = (f"| collective | busbw / algbw | at n = {world_size} | S is the size of |\n"
            "|---|---|---|---|\n")
    body = "".join(f"| {r.collective.replace('_', '-')} | ${r.formula}$ | {r.factor:.3f} "
                   f"| {r.meaning_of_s} |\n" for r in rows)
    return head + body


def _positions(topo: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Spines on top, leaves in the middle, hosts at the bottom, each row centred."""
    by_tier: dict[str, list[str]] = {"spine": [], "leaf": [], "host": []}
    for node, data in topo.nodes(data=True):
        by_tier[data["tier"]].append(node)
    width = max(len(v) for v in by_tier.values())
    pos = {}
    for tier, nodes in by_tier.items():
        nodes.sort(key=lambda name: int(name[1:]))
        step = width / max(len(nodes), 1)
        for i, node in enumerate(nodes):
            pos[node] = ((i + 0.5) * step, _TIER_Y[tier])
    return pos


def leaf_spine_figure(topo: nx.DiGraph, *, load: Mapping[tuple[str, str], float] | None = None,
                      title: str | None = None) -> go.Figure:
    """Draw a fabric from :func:`labkit.comm.topology.build_topology`: spines, leaves, hosts,
    links.

    Args:
        topo: the fabric.
        load: optional ``(u, v) -> traffic`` from :func:`~labkit.comm.topology.route_flows`; a
            link is then drawn as wide as the larger of its two directions' loads, and its hover
            text gives both.
        title: the figure's title (a default names the fabric's size).

    Returns:
        A styled figure: one trace of links (one per load level when ``load`` is given) and one
        trace of nodes per tier.
    """
    if not isinstance(topo, nx.DiGraph) or "n_spines" not in topo.graph:
        raise TypeError("topo must be a fabric built by build_topology")
    pos = _positions(topo)
    links = sorted({tuple(sorted((u, v))) for u, v in topo.edges})
    fig = go.Figure()
    groups: dict[float, list[tuple[str, str]]] = {}
    for u, v in links:
        level = 0.0 if load is None else max(load.get((u, v), 0.0), load.get((v, u), 0.0))
        groups.setdefault(round(level, 9), []).append((u, v))
    for level in sorted(groups):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for u, v in groups[level]:
            xs += [pos[u][0], pos[v][0], None]
            ys += [pos[u][1], pos[v][1], None]
        name = "links" if load is None else f"link load {level:g}"
        width = 1.5 if load is None else 1.0 + 3.0 * level
        colour = PALETTE[7] if load is None or level == 0 else PALETTE[3]
        fig.add_scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                        line=dict(color=colour, width=width),
                        opacity=0.35 if load is not None and level == 0 else 0.8)
    names = {"spine": "spine switches", "leaf": "leaf switches", "host": "hosts"}
    for j, tier in enumerate(("spine", "leaf", "host")):
        nodes = [n for n, d in topo.nodes(data=True) if d["tier"] == tier]
        nodes.sort(key=lambda name: int(name[1:]))
        fig.add_scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes],
                        mode="markers+text" if tier != "host" else "markers",
                        text=nodes, textposition="top center", name=names[tier],
                        hovertext=nodes, hoverinfo="text",
                        marker=dict(size=18 - 5 * j, color=PALETTE[j],
                                    symbol=("square", "diamond", "circle")[j]))
    g = topo.graph
    if title is None:
        title = (f"Leaf-spine fabric: {g['n_spines']} spines, {g['n_leaves']} leaves, "
                 f"{g['hosts_per_leaf']} hosts per leaf")
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(tickvals=[0, 1, 2], ticktext=["hosts", "leaves", "spines"],
                     showgrid=False, zeroline=False, range=[-0.4, 2.5])
    return styled(fig, title=title, x_title="position in the rack row (no unit)",
                  y_title="tier of the fabric", height=380)


def slider_figure(panels: Sequence[Sequence[go.BaseTraceType]], labels: Sequence[str],
                  titles: Sequence[str], *, active: int = 0, prefix: str = "",
                  x_title: str, y_title: str, height: int = 460) -> go.Figure:
    """One figure, one panel of traces per slider position; the slider sits below the plot.

    Args:
        panels: the traces of each position (each panel the same number of traces or not).
        labels: the slider label of each position.
        titles: the figure title at each position (it states the units of the panel).
        active: the position shown first.
        prefix: text before the current label.
        x_title, y_title: axis titles, with units.
    """
    if not (len(panels) == len(labels) == len(titles)) or not panels:
        raise ValueError("panels, labels and titles must be non-empty and of equal length")
    if not 0 <= active < len(panels):
        raise ValueError(f"active must be in [0, {len(panels)}), got {active}")
    fig = go.Figure()
    owner: list[int] = []
    for i, traces in enumerate(panels):
        for trace in traces:
            trace.visible = i == active
            fig.add_trace(trace)
            owner.append(i)
    steps = [dict(method="update", label=str(label),
                  args=[{"visible": [o == i for o in owner]}, {"title.text": titles[i]}])
             for i, label in enumerate(labels)]
    fig.update_layout(sliders=[dict(active=active, steps=steps, y=-0.12, yanchor="top",
                                    currentvalue=dict(prefix=prefix), pad=dict(t=40))],
                      margin=dict(b=140))
    return styled(fig, title=titles[active], x_title=x_title, y_title=y_title, height=height)


def timeline_figure(serial_events: Sequence[Mapping], events: Mapping[int, Sequence[Mapping]],
                    titles: Mapping[int, str], *, active: int) -> go.Figure:
    """Gantt chart of one step: the serial lanes on top, the overlapped ones below, a slider
    over the number of chunks C.

    Args:
        serial_events: ``{"chunk", "kind", "start", "end"}`` dicts (seconds) of the serial step.
        events: C -> the overlapped step's events with C chunks.
        titles: C -> the figure title for that C.
        active: the C shown first.
    """
    colours = {"compute": PALETTE[0], "comm": PALETTE[1]}

    def bars(evs: Sequence[Mapping], prefix: str) -> list[go.Bar]:
        out = []
        for kind in ("compute", "comm"):
            chosen = [e for e in evs if e["kind"] == kind]
            out.append(go.Bar(
                y=[f"{prefix}: {kind}"] * len(chosen),
                x=[(e["end"] - e["start"]) * 1e3 for e in chosen],
                base=[e["start"] * 1e3 for e in chosen], orientation="h",
                marker_color=colours[kind], marker_line=dict(color="white", width=1),
                name=f"{prefix} {kind}", showlegend=False,
                customdata=[e["chunk"] for e in chosen],
                hovertemplate="chunk %{customdata}: starts at %{base:.1f} ms, "
                              "lasts %{x:.1f} ms<extra></extra>"))
        return out

    counts = list(events)
    if active not in events:
        raise ValueError(f"active must be one of {counts}, got {active}")
    panels = [bars(serial_events, "serial") + bars(events[c], "overlapped") for c in counts]
    fig = slider_figure(panels, [str(c) for c in counts], [titles[c] for c in counts],
                        active=counts.index(active), prefix="chunks C = ",
                        x_title="time since the step started on rank 0 (ms)",
                        y_title="lane", height=460)
    lanes = ["serial: compute", "serial: comm", "overlapped: compute", "overlapped: comm"]
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(categoryorder="array", categoryarray=lanes[::-1])
    return fig

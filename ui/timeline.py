"""The timeline of a run as a plot: one bar per model call, wait apart from model time, batches marked."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from data.run_view import Bar, timeline

WAIT_COLOR = "#d1d5db"
FAILED_COLOR = "#dc2626"
SOLO_COLOR = "#64748b"
# One colour per batched generate that several of the run's calls shared.
BATCH_COLORS = ("#2563eb", "#9333ea", "#0d9488", "#ea580c", "#db2777", "#65a30d")


def _hover(bar: Bar, policies: dict[int, str]) -> str:
    batch = f"{bar.batch} · {bar.batch_size} request(s) in that generate" if bar.batch else "not batched"
    return (
        f"<b>{bar.label}</b><br>start {bar.start_s:.3f} s · wait {bar.wait_s:.3f} s"
        f" · model {bar.model_s:.3f} s"
        f"<br>tokens in {bar.prompt_tokens} · out {bar.completion_tokens}<br>{batch}"
        f"<br>parse {bar.parse_status} · policy {policies.get(bar.policy_version_id, '—')}"
    )


def _edge(bar: Bar, color: str) -> str:
    return FAILED_COLOR if bar.parse_status == "failed" else color


def timeline_figure(run: dict[str, Any]) -> go.Figure:
    """Horizontal bars on the run's time axis: grey = waiting (queue, batching, pre/post-processing),
    coloured = the model call. Calls that shared one batched generate share a colour and a legend
    entry "batch N (k calls)"; a failed parse is red. Hover a bar for its tokens in/out."""
    bars = timeline(run)
    policies = {p["id"]: p.get("name") or f"#{p['id']}" for p in run.get("policies", [])}
    rows = [f"{b.seq}. {b.label}" for b in bars]
    shared = {b.batch for b in bars if b.batch and sum(x.batch == b.batch for x in bars) > 1}
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            name="wait",
            y=rows,
            x=[b.wait_s for b in bars],
            base=[b.start_s for b in bars],
            orientation="h",
            marker_color=WAIT_COLOR,
            hovertext=[_hover(b, policies) for b in bars],
            hoverinfo="text",
        )
    )
    groups: dict[str, list[int]] = {}
    for i, b in enumerate(bars):
        key = b.batch if b.batch in shared else ("failed" if b.parse_status == "failed" else "model call")
        groups.setdefault(key, []).append(i)
    for n, (key, members) in enumerate(groups.items()):
        if key in shared:
            name, color = f"{key} ({len(members)} calls in one generate)", BATCH_COLORS[n % len(BATCH_COLORS)]
        elif key == "failed":
            name, color = "model call (parse failed)", FAILED_COLOR
        else:
            name, color = key, SOLO_COLOR
        fig.add_trace(
            go.Bar(
                name=name,
                y=[rows[i] for i in members],
                x=[bars[i].model_s for i in members],
                base=[bars[i].start_s + bars[i].wait_s for i in members],
                orientation="h",
                marker={
                    "color": color,
                    # a failed parse inside a shared batch keeps the batch colour, outlined in red
                    "line": {"color": [_edge(bars[i], color) for i in members], "width": 2},
                },
                hovertext=[_hover(bars[i], policies) for i in members],
                hoverinfo="text",
                meta={"batch": key if key in shared else None},
            )
        )
    fig.update_layout(
        barmode="overlay",
        height=120 + 34 * len(bars),
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        xaxis_title="seconds from the run's start",
        yaxis={"autorange": "reversed"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        title={"text": f"{len(bars)} model calls · {run.get('wall_s') or 0:.2f} s wall", "x": 0.99,
               "xanchor": "right", "font": {"size": 12}},
    )  # fmt: skip
    return fig

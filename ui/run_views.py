"""The opened run drawn in the Traces tab: its timeline, its graph with the path taken, and a
comparison with another run. Built inside the Traces tab; refreshed whenever the opened run changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.run_graph import run_graph_svg
from data.run_view import run_report
from data.store import TrajectoryStore
from ui.policy_names import name_run_policies
from ui.run_diff import diff_html
from ui.timeline import timeline_figure
from ui.user_errors import user_error

log = logging.getLogger(__name__)


@dataclass
class RunViews:
    """The components, and ``show(run)`` that fills them for an opened run (None: clear)."""

    outputs: list[Any]

    @staticmethod
    def show(run: dict[str, Any] | None) -> tuple[Any, ...]:
        if not run:
            return gr.Plot(value=None, visible=False), gr.HTML(value="", visible=False), ""
        try:
            graph = f'<div id="run-graph-svg">{run_graph_svg(run)}</div>'
        except Exception as exc:  # the Graphviz program missing or broken: say so, keep the rest
            log.warning("cannot draw the graph of run %s: %s", run["run_id"], exc)
            graph = f"<p>Drawing the graph needs Graphviz's <code>dot</code> ({type(exc).__name__}).</p>"
        return (
            gr.Plot(value=timeline_figure(run), visible=True),
            gr.HTML(value=graph, visible=True),
            run["run_id"],
        )


def build_run_views(store: TrajectoryStore) -> RunViews:
    """Render the timeline, graph and comparison components at this point of the current Blocks."""
    with gr.Accordion("Timeline (each model call; batched calls share a colour)", open=True):
        plot = gr.Plot(visible=False, elem_id="trace-timeline", show_label=False)
    with gr.Accordion("Graph (the run's path: blue ran, red failed, grey not reached)", open=True):
        graph = gr.HTML(visible=False, elem_id="trace-graph")
    with gr.Accordion("Compare with another run", open=False, elem_id="trace-compare"):
        with gr.Row():
            a = gr.Textbox(label="Run A (the opened run)", scale=3, elem_id="compare-a")
            b = gr.Textbox(label="Run B", placeholder="paste a run id", scale=3, elem_id="compare-b")
            go = gr.Button("Compare", scale=0, elem_id="compare-go")
        table = gr.HTML(elem_id="compare-table")

    def compare(id_a: str, id_b: str) -> str:
        runs = {}
        for name, rid in (("A", id_a), ("B", id_b)):
            if not (rid or "").strip():
                raise user_error(f"Run {name}: paste a run id")
            found = run_report(store, rid)
            if found is None:
                raise user_error(f"Run {name}: no run {rid.strip()!r}")
            runs[name] = name_run_policies(store, found)
        return diff_html(runs["A"], runs["B"])

    go.click(compare, [a, b], table, api_name="compare_runs")
    b.submit(compare, [a, b], table, api_visibility="private")
    return RunViews([plot, graph, a])

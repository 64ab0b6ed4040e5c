"""The compiled LangGraph of a run's mode drawn with the run's path on it, rendered offline (Graphviz).

Nodes that ran are blue, failed ones red (an unusable model output, or the node a failed run
stopped in), those the run never reached grey and dashed. The ``specialist`` node, which ``Send``
fans out, is drawn as one box per specialty consulted. Needs the ``dot`` program (Debian's
``graphviz``) and the ``graphviz`` Python package.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal

import graphviz

from data.run_view import run_mode
from graph.build import build_graph

State = Literal["ran", "failed", "skipped"]
STYLES: dict[State, dict[str, str]] = {
    "ran": {"color": "#1d4ed8", "fillcolor": "#dbeafe", "penwidth": "2", "style": "filled,rounded"},
    "failed": {"color": "#dc2626", "fillcolor": "#fee2e2", "penwidth": "2.5", "style": "filled,rounded"},
    "skipped": {
        "color": "#9ca3af",
        "fillcolor": "#f9fafb",
        "fontcolor": "#9ca3af",
        "style": "dashed,rounded",
    },
}
TERMINALS = ("__start__", "__end__")


def _topological(nodes: list[str], edges: list[tuple[str, str]]) -> list[str]:
    order, seen, queue = [], {"__start__"}, deque(["__start__"])
    while queue:
        node = queue.popleft()
        order.append(node)
        for src, dst in edges:
            if src == node and dst not in seen:
                seen.add(dst)
                queue.append(dst)
    return order + [n for n in nodes if n not in seen]


def _units(run: dict[str, Any], node: str) -> list[tuple[str, str, State | None]]:
    """The boxes a graph node is drawn as: (id, label, state or None when not known from steps)."""
    steps = [st for st in run["steps"] if st["node"] == node]
    if node == "specialist":
        chosen = [*(run.get("specialties") or []), *(st["specialty"] for st in steps)]
        specialties = list(dict.fromkeys(chosen))
        if not specialties:
            return [("specialist", "specialist", None)]
        by_specialty = {st["specialty"]: st for st in steps}
        return [
            (
                f"specialist-{i}",
                f"specialist\n{s}",
                None if s not in by_specialty else _state_of([by_specialty[s]]),
            )
            for i, s in enumerate(specialties)
        ]
    if node == "panel":  # no model call: it ran when the run has its specialists
        return [(node, "panel (fixed)", "ran" if run.get("specialties") else None)]
    label = node if len(steps) <= 1 else f"{node} ×{len(steps)}"
    return [(node, label, _state_of(steps) if steps else None)]


def _state_of(steps: list[dict[str, Any]]) -> State:
    return "failed" if any(st["parse_status"] == "failed" for st in steps) else "ran"


def run_graph(run: dict[str, Any]) -> graphviz.Digraph:
    """The graph of ``run``'s mode (a ``run_report`` dict) with the run's path highlighted."""
    mode = run_mode(run)
    drawable = build_graph(kind=mode).get_graph()  # type: ignore[arg-type]
    edges = [(e.source, e.target) for e in drawable.edges]
    conditional = {(e.source, e.target) for e in drawable.edges if e.conditional}
    dot = graphviz.Digraph(f"mmedagent-{mode}", graph_attr={"rankdir": "LR", "bgcolor": "transparent"})
    dot.attr("node", shape="box", fontname="Helvetica", fontsize="11")
    dot.attr("edge", color="#9ca3af", fontname="Helvetica", fontsize="9")
    failed_run = run["status"] == "error"
    boxes: dict[str, list[tuple[str, State]]] = {}
    stopped = False  # a failed run stops in one node (its parallel units included); later ones never ran
    for node in _topological(list(drawable.nodes), edges):
        stopped_here = False
        if node in TERMINALS:
            reached = node == "__start__" or not failed_run
            state: State = "ran" if reached else "skipped"
            boxes[node] = [(node, state)]
            label = node.strip("_")
            dot.node(node, label, shape="oval", id=f"graph-{label}", **{**STYLES[state], "class": state})
            continue
        preds_ran = all(s != "skipped" for src, dst in edges if dst == node for _, s in boxes.get(src, []))
        units = []
        for box_id, label, state in _units(run, node):
            if state is None:  # no step: the failed run stopped here, or never got here
                state = "failed" if failed_run and preds_ran and not stopped else "skipped"
                stopped_here = stopped_here or state == "failed"
            units.append((box_id, state))
            dot.node(box_id, label, id=f"graph-{box_id}", **{**STYLES[state], "class": state})
        boxes[node] = units
        stopped = stopped or stopped_here
    for src, dst in edges:
        for a, sa in boxes.get(src, []):
            for b, sb in boxes.get(dst, []):
                on_path = "skipped" not in (sa, sb)  # a failed parse does not stop the run
                attrs = {"color": "#1d4ed8", "penwidth": "2"} if on_path else {}
                if (src, dst) in conditional:
                    attrs["style"] = "dashed"
                    attrs["label"] = "Send"
                dot.edge(a, b, **attrs)
    return dot


def run_graph_svg(run: dict[str, Any]) -> str:
    """The picture as SVG markup (embeddable in a page)."""
    svg = run_graph(run).pipe(format="svg", encoding="utf-8")
    return svg[svg.index("<svg") :]  # without the XML prolog and doctype

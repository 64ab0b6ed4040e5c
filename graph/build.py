"""``build_graph``: triage -> Send fan-out to N specialists -> attending."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from graph import nodes
from graph.context import GraphContext, GraphKind
from graph.state import CaseInput, CaseState, SpecialistTask


def _with_default_context(fn: Callable[..., Any], default: Callable[[], GraphContext]) -> Callable[..., Any]:
    """Let a node run without an explicit context (LangGraph Studio cannot pass Python objects)."""

    def node(state: Any, runtime: Runtime[GraphContext]) -> Any:
        if runtime.context is None:
            runtime = runtime.override(context=default())
        return fn(state, runtime)

    node.__name__ = fn.__name__
    return node


def build_graph(
    checkpointer: BaseCheckpointSaver | None = None,
    default_context: Callable[[], GraphContext] | None = None,
    kind: GraphKind = "multi",
) -> CompiledStateGraph:
    """The case graph. Run it with ``context=GraphContext(...)`` (or give ``default_context``); a
    checkpointer makes threads (follow-up questions on the same case) resumable.

    ``kind`` picks the system or a baseline (:class:`graph.context.GraphMode`): ``multi`` (triage
    -> specialists -> attending), ``static`` (fixed panel -> specialists -> attending), ``single``
    (attending only) or ``vote`` (N attending samples, majority).
    """
    wrap = (lambda fn: _with_default_context(fn, default_context)) if default_context else (lambda fn: fn)
    name = "mmedagent" if kind == "multi" else f"mmedagent-{kind}"
    builder = StateGraph(CaseState, context_schema=GraphContext, input_schema=CaseInput)
    if kind == "vote":
        builder.add_node("vote", wrap(nodes.vote))
        builder.add_edge(START, "vote")
        builder.add_edge("vote", END)
        return builder.compile(checkpointer=checkpointer, name=name)
    builder.add_node("attending", wrap(nodes.attending))
    builder.add_edge("attending", END)
    if kind == "single":
        builder.add_edge(START, "attending")
        return builder.compile(checkpointer=checkpointer, name=name)
    first = "triage" if kind == "multi" else "panel"
    builder.add_node(first, wrap(nodes.triage if kind == "multi" else nodes.fixed_panel))
    builder.add_node("specialist", wrap(nodes.specialist), input_schema=SpecialistTask)
    builder.add_edge(START, first)
    builder.add_conditional_edges(first, nodes.route_to_specialists, ["specialist"])
    builder.add_edge("specialist", "attending")
    return builder.compile(checkpointer=checkpointer, name=name)

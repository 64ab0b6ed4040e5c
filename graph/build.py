"""``build_graph``: triage -> Send fan-out to N specialists -> attending."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from graph import nodes
from graph.context import GraphContext
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
) -> CompiledStateGraph:
    """The case graph. Run it with ``context=GraphContext(...)`` (or give ``default_context``); a
    checkpointer makes threads (follow-up questions on the same case) resumable."""
    triage, specialist, attending = nodes.triage, nodes.specialist, nodes.attending
    if default_context is not None:
        triage, specialist, attending = (
            _with_default_context(fn, default_context) for fn in (triage, specialist, attending)
        )
    builder = StateGraph(CaseState, context_schema=GraphContext, input_schema=CaseInput)
    builder.add_node("triage", triage)
    builder.add_node("specialist", specialist, input_schema=SpecialistTask)
    builder.add_node("attending", attending)
    builder.add_edge(START, "triage")
    builder.add_conditional_edges("triage", nodes.route_to_specialists, ["specialist"])
    builder.add_edge("specialist", "attending")
    builder.add_edge("attending", END)
    return builder.compile(checkpointer=checkpointer, name="mmedagent")

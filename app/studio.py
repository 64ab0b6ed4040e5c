"""Entry point for ``langgraph dev`` / LangGraph Studio (see langgraph.json).

Studio supplies its own checkpointer and cannot pass Python objects as context, so the graph
falls back to a context built from the settings (tiny model + SQLite defaults unless configured).
Images must already be in the store (run a case through the CLI or UI first, then reuse its hashes).
"""

from __future__ import annotations

from functools import cache

from app.config import Settings
from app.runtime import Runtime
from app.tiny_model import ensure_default_model
from graph.build import build_graph
from graph.context import GraphContext


@cache
def _context() -> GraphContext:
    settings = Settings()
    ensure_default_model(settings)
    return Runtime(settings).context()


graph = build_graph(default_context=_context)

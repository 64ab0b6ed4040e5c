"""langgraph.json names a graph that LangGraph Studio can load and run without a Python context."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from langgraph.checkpoint.memory import InMemorySaver

from app.runtime import CaseRequest
from data.images import load_image
from data.synthetic import generate_cases

ROOT = Path(__file__).resolve().parents[1]


def test_langgraph_json_points_at_a_compiled_graph(settings, make_runtime, monkeypatch):
    spec = json.loads((ROOT / "langgraph.json").read_text())["graphs"]["mmedagent"]
    path, attr = spec.split(":")
    assert (ROOT / path).is_file()
    # A case stored first, so its image hash is known to the store Studio's context reads.
    case = generate_cases(1, seed=3)[0]
    rt = make_runtime()
    rt.ask(
        CaseRequest(question=case.question, images=[load_image(case.images[0])], options=list(case.options))
    )
    monkeypatch.setenv("MMEDAGENT_HOME", str(settings.home))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(settings.model))
    module = importlib.import_module(path.removeprefix("./").removesuffix(".py").replace("/", "."))
    graph = getattr(module, attr).copy(update={"checkpointer": InMemorySaver()})
    out = graph.invoke(
        {
            "question": case.question,
            "options": list(case.options),
            "image_hashes": [load_image(case.images[0]).sha256],
        },
        {"configurable": {"thread_id": "studio"}},
    )
    assert len(out["opinions"]) == 3
    assert "answer" in out and out["messages"][-1].name == "attending"

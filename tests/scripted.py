"""A backend that answers from a script: for tests that need to control what the models say.

It implements graph.protocol.ChatBackend for real (the graph cannot tell it from a model); the
end-to-end tests use the real transformers backend on the tiny checkpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from graph.protocol import BackendError, ChatRequest, Completion


def request_text(req: ChatRequest) -> str:
    """All text of a request's messages, joined."""
    return "\n".join(
        b["text"]
        for m in req.messages
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "text"
    )


class ScriptedBackend:
    def __init__(self, answer: Callable[[ChatRequest], str], model_id: str = "scripted", fail: bool = False):
        self._answer, self._model_id, self.fail = answer, model_id, fail
        self.calls: list[list[ChatRequest]] = []
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        with self._lock:
            self.calls.append(list(requests))
        if self.fail:
            raise BackendError("backend unreachable: connection refused")
        out = []
        for r in requests:
            text = self._answer(r)
            out.append(
                Completion(
                    text, self._model_id, list(range(len(text.split()))), None, 5, len(text.split()), 0.001
                )
            )
        return out

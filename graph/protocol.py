"""The small contract between the graph and any model backend.

A backend takes a batch of chat requests (messages in the Hugging Face / OpenAI content-block
layout, plus the PIL images the ``{"type": "image"}`` blocks refer to, in order) and returns one
completion per request. The graph never imports a backend; ``app`` wires one in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters for one request. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class ChatRequest:
    """One chat to complete. ``images[i]`` fills the i-th image block of ``messages``."""

    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class Completion:
    """What the backend produced for one request."""

    text: str
    model_id: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    # The batched model call that produced it (same id for every request in it) and its size;
    # None where the backend does not batch in-process (a server batches out of sight).
    batch_id: str | None = None
    batch_size: int | None = None


class BackendError(RuntimeError):
    """A backend could not complete a request (dead server, OOM, bad response...)."""


class BackendSetupError(BackendError):
    """The settings ask a backend for what this install or machine cannot do (a missing package, a
    model the engine cannot run, a CUDA-only option without CUDA): bad input, refused before any
    model loads (the CLI exits 2)."""


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that completes a batch of chat requests, one completion per request, in order."""

    @property
    def model_id(self) -> str:
        """The policy/model identifier recorded with every step it produces."""
        ...

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]: ...

"""The graph's state: plain, serialisable data (image hashes, never PIL objects)."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages


def extend_or_reset(left: list[Any] | None, right: list[Any] | None) -> list[Any]:
    """Reducer for per-question lists: parallel writes extend; ``None`` resets (a new question)."""
    if right is None:
        return []
    return [*(left or []), *right]


class StepRecord(TypedDict, total=False):
    """Everything one model call did, as the store persists it."""

    node: str
    role: str
    specialty: str | None
    messages: list[dict[str, Any]]
    image_refs: list[str]
    completion: str
    parsed: dict[str, Any]
    parse_status: str
    token_ids: list[int] | None
    logprobs: list[float] | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    wait_s: float
    batch_id: str | None
    batch_size: int | None
    model_id: str
    started_at: float


class Opinion(TypedDict):
    specialty: str
    text: str
    answer: str


class CaseInput(TypedDict, total=False):
    """What a caller provides for one question about a case."""

    question: str
    options: list[str]
    image_hashes: list[str]


class CaseState(CaseInput, total=False):
    specialties: list[str]
    triage_status: str
    opinions: Annotated[list[Opinion], extend_or_reset]
    answer: str
    think: str
    answer_status: str
    # Earlier (question, answer) pairs of the same thread: follow-up questions see them.
    history: Annotated[list[tuple[str, str]], extend_or_reset]
    messages: Annotated[list[AnyMessage], add_messages]


class SpecialistTask(TypedDict):
    """The payload ``Send`` hands to one specialist."""

    specialty: str
    question: str
    options: list[str]
    image_hashes: list[str]
    history: list[tuple[str, str]]

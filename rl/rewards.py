"""Reward functions (docs/paper.md): format ∈ {0, 0.5} + accuracy ∈ {0, 1}, per role.

Format credit needs a usable answer, not just the tags: a triage answer must name a known
specialty, and a multiple-choice answer must name one of the options. Otherwise "well-formed
nonsense" earns as much as a wrong answer, and GRPO drifts onto it until no answer is right
(measured: triage accuracy fell to 0 within 300 steps on the tiny model).

The ``*_value`` functions score one completion; the list-valued functions have TRL's reward
signature (``completions`` plus dataset columns as keyword arguments) so GRPOTrainer uses them as
they are. The store's reward rows are computed with the same functions.
Dataset columns read: ``answer`` (gold option letter or text), ``options``, ``specialty`` (gold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from data.answers import is_correct, match_option
from graph.parse import is_strict_format, parse_think_answer, parse_triage

FORMAT_REWARD = 0.5

RewardFunc = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """The text of a completion, plain or conversational (``[{"role": "assistant", ...}]``)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(b.get("text", "") for b in content if isinstance(b, dict))
        return str(content)
    return ""


def format_value(text: str, options: Sequence[str] = ()) -> float:
    """0.5 for exactly ``<think>…</think><answer>…</answer>`` whose answer names an option (when
    there are options), else 0."""
    if not is_strict_format(text):
        return 0.0
    if options and match_option(parse_think_answer(text).answer, options) is None:
        return 0.0
    return FORMAT_REWARD


def triage_format_value(text: str) -> float:
    """0.5 for the strict format with an answer naming known specialties only, else 0."""
    parsed = parse_triage(text)
    return FORMAT_REWARD if is_strict_format(text) and parsed.status == "ok" else 0.0


def answer_accuracy_value(text: str, gold: str, options: Sequence[str]) -> float:
    """1 when the answer is right by :func:`data.answers.is_correct` (the evaluation's closed scorer)."""
    return 1.0 if is_correct(parse_think_answer(text).answer, gold, options) else 0.0


def triage_accuracy_value(text: str, gold_specialty: str) -> float:
    """1 when the first (most relevant) specialty named is the gold one.

    Only the first counts: a reward for "contains the right name" is gamed at once by listing
    every specialty (measured on the tiny model).
    """
    chosen = parse_triage(text).specialties
    return 1.0 if chosen and chosen[0] == gold_specialty else 0.0


def _texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]


def format_reward(
    completions: Sequence[Any], options: Sequence[Sequence[str]] | None = None, **_: Any
) -> list[float]:
    texts = _texts(completions)
    return [format_value(t, o) for t, o in zip(texts, options or [()] * len(texts), strict=True)]


def triage_format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    return [triage_format_value(t) for t in _texts(completions)]


def answer_accuracy_reward(
    completions: Sequence[Any], answer: Sequence[str], options: Sequence[Sequence[str]], **_: Any
) -> list[float]:
    return [
        answer_accuracy_value(t, g, o) for t, g, o in zip(_texts(completions), answer, options, strict=True)
    ]


def triage_accuracy_reward(completions: Sequence[Any], specialty: Sequence[str], **_: Any) -> list[float]:
    return [triage_accuracy_value(t, g) for t, g in zip(_texts(completions), specialty, strict=True)]


REWARD_FUNCS: dict[str, list[RewardFunc]] = {
    "triage": [triage_format_reward, triage_accuracy_reward],
    "attending": [format_reward, answer_accuracy_reward],
    "specialist": [format_reward, answer_accuracy_reward],
}


def step_rewards(
    role: str, text: str, *, gold_answer: str | None, options: Sequence[str], gold_specialty: str | None
) -> dict[str, float]:
    """The automatic rewards of one stored step, by kind; empty when the gold label is unknown."""
    if role == "triage":
        if gold_specialty is None:
            return {}
        return {"format": triage_format_value(text), "accuracy": triage_accuracy_value(text, gold_specialty)}
    if gold_answer is None:
        return {}
    return {
        "format": format_value(text, options),
        "accuracy": answer_accuracy_value(text, gold_answer, options),
    }

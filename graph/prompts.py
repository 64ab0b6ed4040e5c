"""Every prompt the agents see: the one source of truth shared by the graph and rl/.

Messages use the Hugging Face content-block layout. Image blocks are bare ``{"type": "image"}``
placeholders; the pixels travel beside the messages (``ChatRequest.images``, or TRL's ``images``
column), in the order of the placeholders. That keeps stored prompts free of pixels and makes them
usable by TRL's GRPOTrainer as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data.specialties import SPECIALTIES

Message = dict[str, Any]

ANSWER_FORMAT = (
    "Think step by step inside <think></think>, then give only the final answer inside <answer></answer>."
)

TRIAGE_SYSTEM = (
    "You are the triage doctor of a hospital. Read the medical image(s) and the question, and "
    "decide which specialists should be consulted. Choose from: " + ", ".join(SPECIALTIES) + ". "
    "Put your reasoning inside <think></think> and the specialties inside <answer></answer>, "
    "most relevant first, separated by commas."
)

SPECIALIST_SYSTEM = (
    "You are an experienced {specialty}. Give your expert opinion on the medical image(s) and the "
    "question from the point of view of your specialty. " + ANSWER_FORMAT
)

ATTENDING_SYSTEM = (
    "You are the attending physician. Read the medical image(s), the question and the opinions of "
    "the specialists who were consulted. Specialists can be wrong: weigh their opinions against "
    "your own reading of the image and decide. " + ANSWER_FORMAT
)


def _system(text: str) -> Message:
    return {"role": "system", "content": [{"type": "text", "text": text}]}


def _user(n_images: int, text: str) -> Message:
    blocks: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    blocks.append({"type": "text", "text": text})
    return {"role": "user", "content": blocks}


def format_question(question: str, options: Sequence[str]) -> str:
    """The question, with its options one per line when it is multiple-choice."""
    text = f"Question: {question.strip()}"
    if options:
        text += "\nOptions:\n" + "\n".join(o.strip() for o in options)
    return text


def format_history(history: Sequence[tuple[str, str]]) -> str:
    """Earlier questions and answers of the same case, for follow-up questions."""
    if not history:
        return ""
    lines = [f"Earlier question: {q}\nEarlier answer: {a}" for q, a in history]
    return "\n".join(lines) + "\n\n"


def triage_messages(
    question: str, options: Sequence[str], n_images: int, history: Sequence[tuple[str, str]] = ()
) -> list[Message]:
    """Prompt for the triage doctor."""
    text = format_history(history) + format_question(question, options)
    return [_system(TRIAGE_SYSTEM), _user(n_images, text + "\nWhich specialists should see this case?")]


def specialist_messages(
    specialty: str,
    question: str,
    options: Sequence[str],
    n_images: int,
    history: Sequence[tuple[str, str]] = (),
) -> list[Message]:
    """Prompt for one specialist."""
    text = format_history(history) + format_question(question, options)
    return [_system(SPECIALIST_SYSTEM.format(specialty=specialty)), _user(n_images, text)]


def format_opinions(opinions: Sequence[tuple[str, str]]) -> str:
    """Specialists' opinions as the attending reads them: ``(specialty, opinion text)`` pairs."""
    if not opinions:
        return "No specialist opinions are available."
    return "\n".join(f"[{specialty}] {text.strip()}" for specialty, text in opinions)


def attending_messages(
    question: str,
    options: Sequence[str],
    n_images: int,
    opinions: Sequence[tuple[str, str]],
    history: Sequence[tuple[str, str]] = (),
) -> list[Message]:
    """Prompt for the attending physician, carrying the specialists' opinions verbatim."""
    text = (
        format_history(history)
        + format_question(question, options)
        + "\n\nSpecialist opinions:\n"
        + format_opinions(opinions)
    )
    return [_system(ATTENDING_SYSTEM), _user(n_images, text)]

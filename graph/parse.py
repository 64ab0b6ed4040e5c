"""Tolerant parsers for model output. They never raise: garbage becomes a recorded failure.

Reading which option an answer names, and whether it is right, is :mod:`data.answers`.

Status values: ``ok`` (the strict ``<think>…</think><answer>…</answer>`` format), ``recovered``
(no strict format, but an answer could be read), ``failed`` (nothing usable; a fallback applies).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from data.specialties import SPECIALTIES

ParseStatus = Literal["ok", "recovered", "failed"]

# Longer outputs are cut before parsing: a runaway completion must not cost quadratic regex time.
MAX_PARSE_CHARS = 20_000

_STRICT = re.compile(r"^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$", re.S)
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_THINK_TAG = re.compile(r"<think>(.*?)(?:</think>|<answer>|$)", re.S)
_ANSWER_LINE = re.compile(r"(?:final\s+answer|answer)\s*(?:is)?\s*[:：]\s*(.+)", re.I)
# "Radiology" and "radiologist" both name the Radiologist: specialties are matched on a stem.
_STEMS = {name: name.lower().removesuffix("ist") for name in SPECIALTIES if name.endswith("ist")}
_STEMS["Surgeon"] = "surg"


@dataclass(frozen=True)
class ParsedAnswer:
    """A ``<think>``/``<answer>`` completion, split."""

    think: str
    answer: str
    status: ParseStatus
    error: str | None = None


@dataclass(frozen=True)
class ParsedTriage:
    """The specialties a triage completion asks for, known names only, most relevant first."""

    specialties: list[str] = field(default_factory=list)
    rationale: str = ""
    status: ParseStatus = "failed"
    error: str | None = None


def is_strict_format(text: str) -> bool:
    """True when ``text`` is exactly ``<think>…</think><answer>…</answer>`` (non-empty answer)."""
    m = _STRICT.match(text[:MAX_PARSE_CHARS])
    return bool(m and m.group(2).strip())


def parse_think_answer(text: str) -> ParsedAnswer:
    """Split a completion into reasoning and answer, recovering what it can."""
    text = (text or "")[:MAX_PARSE_CHARS]
    if not text.strip():
        return ParsedAnswer("", "", "failed", "empty completion")
    m = _STRICT.match(text)
    if m and m.group(2).strip():
        return ParsedAnswer(m.group(1).strip(), m.group(2).strip(), "ok")
    think_m = _THINK_TAG.search(text)
    think = think_m.group(1).strip() if think_m else ""
    tag = _ANSWER_TAG.search(text)
    if tag and tag.group(1).strip():
        return ParsedAnswer(think, tag.group(1).strip(), "recovered", "answer tag not in strict format")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        line_m = _ANSWER_LINE.search(line)
        if line_m and line_m.group(1).strip():
            return ParsedAnswer(think or text.strip(), line_m.group(1).strip(), "recovered", "no answer tag")
    return ParsedAnswer(think, "", "failed", "no answer found")


def find_specialties(text: str) -> list[str]:
    """Known specialty names mentioned in ``text``, in order of first mention, without repeats."""
    lowered = text.lower()
    hits: list[tuple[int, str]] = []
    for name in SPECIALTIES:
        pos = lowered.find(_STEMS.get(name, name.lower()))
        if pos >= 0:
            hits.append((pos, name))
    return [name for _, name in sorted(hits)]


def parse_triage(text: str) -> ParsedTriage:
    """Read the specialties a triage completion chooses."""
    parsed = parse_think_answer(text)
    if parsed.answer:
        chosen = find_specialties(parsed.answer)
        if chosen:
            return ParsedTriage(chosen, parsed.think, parsed.status, parsed.error)
        return ParsedTriage([], parsed.think, "failed", "answer names no known specialty")
    chosen = find_specialties((text or "")[:MAX_PARSE_CHARS])
    if chosen:
        return ParsedTriage(chosen, "", "recovered", "no answer tag; specialties read from free text")
    return ParsedTriage([], "", "failed", parsed.error or "no known specialty")


def choose_specialists(chosen: Sequence[str], n: int) -> list[str]:
    """``n`` distinct specialties: triage's choices first, then the fixed default order as fallback."""
    picked = list(dict.fromkeys(chosen))[:n]
    for name in SPECIALTIES:
        if len(picked) >= n:
            break
        if name not in picked:
            picked.append(name)
    return picked

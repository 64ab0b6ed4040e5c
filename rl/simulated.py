"""A simulated specialist (docs/synthetic-clinic.md): answers a known case right with a set probability.

It exists only to build curriculum experiments with a known fraction ``s`` of specialists right;
it is never a default backend. It implements graph/protocol.ChatBackend, so the real graph can run
with it in the specialist role, and it writes opinions in the specialists' own output format.

Whether a specialist is right on a case is a deterministic draw from ``(seed, case, specialty)``:
the same case gets the same opinions whatever the batch or call order. Every wrong specialist on a
case names the same wrong option (its decoy), so on hard cases the opinions agree and mislead.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data.answers import match_option, option_letter, option_letters, option_text
from data.specialties import SPECIALTIES
from graph.parse import find_specialties, parse_think_answer
from graph.protocol import ChatRequest, Completion

if TYPE_CHECKING:
    from PIL import Image

    from data.synthetic import SyntheticCase


def image_digest(image: Image.Image) -> str:
    """A key for an image by its pixels (what a backend receives), not its file bytes."""
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class KnownCase:
    """What the simulation knows about a case: its options and the gold letter."""

    key: str
    options: tuple[str, ...]
    answer: str


def opinion_text(options: Sequence[str], letter: str) -> str:
    """A specialist's opinion naming option ``letter`` by its text, in the strict think/answer format.

    The answer is the option's text, spelled as the options spell it (the graph matches letters and
    texts alike): an attending can take an opinion's answer over verbatim.
    """
    text = next((option_text(o) for o in options if option_letter(o) == letter), letter)
    return f"<think>The image shows {text.lower()}.</think><answer> {text}</answer>"


def decoy(case: KnownCase, seed: int) -> str:
    """The one wrong option every mistaken specialist names on ``case`` (a shared, plausible misread).

    Shared rather than independent: otherwise three wrong opinions often name three different
    options and the unnamed one is the answer, which text alone would give away on hard cases.
    """
    letters = option_letters(case.options)
    return random.Random(f"{seed}|{case.key}|decoy").choice([x for x in letters if x != case.answer])


def draw_opinion(case: KnownCase, specialty: str, right: bool, seed: int) -> str:
    """The opinion ``specialty`` gives on ``case``: the gold option when ``right``, else the decoy."""
    return opinion_text(case.options, case.answer if right else decoy(case, seed))


def is_right(case: KnownCase, specialty: str, p_right: float, seed: int) -> bool:
    """The deterministic draw: is ``specialty`` right on ``case``?"""
    return random.Random(f"{seed}|{case.key}|{specialty}").random() < p_right


def planned_opinions(
    case: KnownCase, n_right: int, specialties: Sequence[str], seed: int = 0
) -> list[tuple[str, str]]:
    """Opinions of ``specialties`` with exactly ``n_right`` of them right (which ones: drawn)."""
    if not 0 <= n_right <= len(specialties):
        raise ValueError(f"n_right must be in 0..{len(specialties)}, got {n_right}")
    order = list(specialties)
    random.Random(f"{seed}|{case.key}|plan").shuffle(order)
    right = set(order[:n_right])
    return [(s, draw_opinion(case, s, s in right, seed)) for s in specialties]


# The share of unclear images among the cases whose specialists all agree on the right answer (the
# only cases an unclear image may have: every case stays answerable from the evidence it shows, and
# from opinions the tiny model reads reliably: with unclear images on 2-to-1 cases too, its warm-up
# read the majority right on 14 of 18 such held-out cases, and after curriculum GRPO it answered 8
# of the 18 right, seed 0).
UNCLEAR_SHARE = 0.75


@dataclass(frozen=True)
class CasePlan:
    """A synthetic attending case's set-up: how many specialists are right, how clear its image is."""

    n_right: int
    clarity: str


def plan_case(
    rng: random.Random, mix: dict[str, float], n_specialists: int, unclear_share: float = UNCLEAR_SHARE
) -> CasePlan:
    """Draw a case's plan: difficulty from ``mix`` (a medium case has 1..n-1 specialists right), then
    an unclear image with probability ``unclear_share`` where every specialist is right (easy).

    Hard cases (every specialist wrong, on one shared decoy) and medium ones always have a clear
    image: copying the majority fails on every hard case and on some medium ones, and the image
    gives the answer. On unclear images the opinions are the only evidence, and they are right.
    """
    level = rng.choices(list(mix), list(mix.values()))[0]
    n_right = {"easy": n_specialists, "hard": 0}.get(level)
    if n_right is None:
        n_right = rng.randint(1, n_specialists - 1)
    unclear = n_right == n_specialists and rng.random() < unclear_share
    return CasePlan(n_right, "unclear" if unclear else "clear")


class AnswerKey:
    """Known cases, looked up by the pixels of their first image."""

    def __init__(self, cases: Iterable[KnownCase] = ()):
        self._cases = {c.key: c for c in cases}

    @classmethod
    def from_synthetic(cls, cases: Iterable[SyntheticCase]) -> AnswerKey:
        from data.images import image_from_bytes

        return cls(
            KnownCase(image_digest(image_from_bytes(c.images[0])), tuple(c.options), c.answer) for c in cases
        )

    def __len__(self) -> int:
        return len(self._cases)

    def lookup(self, request: ChatRequest) -> KnownCase | None:
        if not request.images:
            return None
        return self._cases.get(image_digest(request.images[0]))


def _specialty_of(request: ChatRequest) -> str:
    """The specialty a specialist prompt addresses (its system message names it)."""
    for message in request.messages:
        if message.get("role") == "system":
            content = message.get("content")
            text = content if isinstance(content, str) else " ".join(b.get("text") or "" for b in content)
            found = find_specialties(text)
            if found:
                return found[0]
    return SPECIALTIES[0]


class SimulatedSpecialist:
    """ChatBackend that plays a specialist who is right with probability ``p_right``.

    ``p_right`` is a number, or a function of the case giving each case its own probability. An
    unknown case (not in ``key``) gets an uninformed opinion: a uniformly drawn option.
    """

    def __init__(self, key: AnswerKey, p_right: float | Callable[[KnownCase], float], *, seed: int = 0):
        self.key = key
        self.p_right = p_right
        self.seed = seed

    @property
    def model_id(self) -> str:
        p = "per-case" if callable(self.p_right) else f"{self.p_right:g}"
        return f"simulated-specialist(p={p},seed={self.seed})"

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return [Completion(text=self._opinion(r), model_id=self.model_id) for r in requests]

    def _opinion(self, request: ChatRequest) -> str:
        specialty = _specialty_of(request)
        case = self.key.lookup(request)
        if case is None:
            options = _options_of(request)
            rng = random.Random(f"{self.seed}|unknown|{specialty}|{options}")
            letters = option_letters(options)
            return (
                opinion_text(options, rng.choice(letters))
                if letters
                else "<think>?</think><answer>?</answer>"
            )
        p = self.p_right(case) if callable(self.p_right) else self.p_right
        return draw_opinion(case, specialty, is_right(case, specialty, p, self.seed), self.seed)


def _options_of(request: ChatRequest) -> list[str]:
    """The options listed in a prompt (lines like ``B) Mass`` after ``Options:``)."""
    for message in request.messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else "\n".join(b.get("text") or "" for b in content)
        if "Options:" in text:
            lines = text.split("Options:", 1)[1].strip().splitlines()
            return [ln.strip() for ln in lines if option_letter(ln.strip())]
    return []


def majority_answer(opinions: Sequence[str], options: Sequence[str]) -> str | None:
    """The option most opinions name (ties: the first named); the "copy the specialists" baseline."""
    letters = [match_option(parse_think_answer(o).answer, options) for o in opinions]
    counts: dict[str, int] = {}
    for letter in letters:
        if letter:
            counts[letter] = counts.get(letter, 0) + 1
    return max(counts, key=lambda x: counts[x]) if counts else None

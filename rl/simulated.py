"""A simulated specialist (docs/synthetic-clinic.md): answers a known case right with a set probability.

It exists only to build curriculum experiments with a known fraction ``s`` of specialists right;
it is never a default backend. It implements graph/protocol.ChatBackend, so the real graph can run
with it in the specialist role, and it writes opinions in the specialists' own output format.

Whether a specialist is right on a case is a deterministic draw from ``(seed, case, specialty)``:
the same case gets the same opinions whatever the batch or call order. Every wrong specialist on a
case names the same wrong option (its decoy), so on hard cases the opinions agree and mislead.
"""

from __future__ import annotations

import dataclasses
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


WORDINGS = ("text", "letter")


def opinion_text(options: Sequence[str], letter: str, wording: str = "text") -> str:
    """A specialist's opinion naming option ``letter``, in the strict think/answer format.

    ``"text"`` (every clinic the attending trains on): the think describes the finding and the answer
    is the option's text, spelled as the options spell it (the graph matches letters and texts
    alike), so an attending can take an opinion's answer over verbatim. ``"letter"`` (the shifted
    held-out clinic): the think names the option by its letter and the answer is the option as
    listed, letter first (``B) Mass``).
    """
    text = next((option_text(o) for o in options if option_letter(o) == letter), letter)
    if wording == "letter":
        return f"<think>Findings favour option {letter}.</think><answer> {letter}) {text}</answer>"
    if wording != "text":
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    return f"<think>The image shows {text.lower()}.</think><answer> {text}</answer>"


def decoy(case: KnownCase, seed: int) -> str:
    """The one wrong option every mistaken specialist names on ``case`` (a shared, plausible misread).

    Shared rather than independent: otherwise three wrong opinions often name three different
    options and the unnamed one is the answer, which text alone would give away on hard cases.
    """
    letters = option_letters(case.options)
    return random.Random(f"{seed}|{case.key}|decoy").choice([x for x in letters if x != case.answer])


def draw_opinion(case: KnownCase, specialty: str, right: bool, seed: int, wording: str = "text") -> str:
    """The opinion ``specialty`` gives on ``case``: the gold option when ``right``, else the decoy."""
    return opinion_text(case.options, case.answer if right else decoy(case, seed), wording)


def is_right(case: KnownCase, specialty: str, p_right: float, seed: int) -> bool:
    """The deterministic draw: is ``specialty`` right on ``case``?"""
    return random.Random(f"{seed}|{case.key}|{specialty}").random() < p_right


def planned_opinions(
    case: KnownCase, n_right: int, specialties: Sequence[str], seed: int = 0, wording: str = "text"
) -> list[tuple[str, str]]:
    """Opinions of ``specialties`` with exactly ``n_right`` of them right (which ones: drawn)."""
    if not 0 <= n_right <= len(specialties):
        raise ValueError(f"n_right must be in 0..{len(specialties)}, got {n_right}")
    order = list(specialties)
    random.Random(f"{seed}|{case.key}|plan").shuffle(order)
    right = set(order[:n_right])
    return [(s, draw_opinion(case, s, s in right, seed, wording)) for s in specialties]


# The share of unclear images among the cases an unclear image may have, in the balanced clinic
# (where every specialist is right: every case stays answerable from the evidence it shows, and
# from opinions the tiny model reads reliably: with unclear images on 2-to-1 cases too, its warm-up
# read the majority right on 14 of 18 such held-out cases, and after curriculum GRPO it answered 8
# of the 18 right, seed 0).
UNCLEAR_SHARE = 0.75
THIRDS = {"easy": 1 / 3, "medium": 1 / 3, "hard": 1 / 3}
UNCLEAR_ON = ("unanimous", "majority")


@dataclass(frozen=True)
class Clinic:
    """How a synthetic attending clinic draws its cases (docs/synthetic-clinic.md).

    ``mix``: the shares of easy / medium / hard cases. ``n_specialists``: the panel's size.
    ``unclear_share``: how many of the cases an unclear image may have get one; ``unclear_on``:
    which cases may (``"unanimous"``: every specialist right; ``"majority"``: most of them right, so
    the attending's own reading is noisy on medium cases too). ``wording``: how the specialists
    write (rl/simulated.py ``opinion_text``). Hard and minority-right cases always have a clear
    image, so every case is answerable from the evidence it shows.
    """

    name: str
    mix: tuple[tuple[str, float], ...] = tuple(THIRDS.items())
    n_specialists: int = 3
    unclear_share: float = UNCLEAR_SHARE
    unclear_on: str = "unanimous"
    wording: str = "text"

    def __post_init__(self) -> None:
        shares = dict(self.mix)
        if set(shares) - {"easy", "medium", "hard"} or min(shares.values()) < 0 or sum(shares.values()) <= 0:
            raise ValueError(f"mix must weigh easy/medium/hard, got {shares}")
        if self.unclear_on not in UNCLEAR_ON or self.wording not in WORDINGS:
            raise ValueError(f"unclear_on must be one of {UNCLEAR_ON} and wording one of {WORDINGS}")
        if not 0 <= self.unclear_share <= 1 or not 2 <= self.n_specialists <= len(SPECIALTIES):
            raise ValueError(
                f"unclear_share must be in [0, 1] and a panel 2 to {len(SPECIALTIES)} specialists"
            )

    def with_mix(self, mix: dict[str, float]) -> Clinic:
        """The same clinic with other shares of easy / medium / hard cases (a stratified test set)."""
        return dataclasses.replace(self, mix=tuple(mix.items()))

    def may_be_unclear(self, n_right: int) -> bool:
        """May a case with ``n_right`` specialists right have an unclear image? (the evidence left,
        the opinions, must still give the answer)"""
        if self.unclear_on == "unanimous":
            return n_right == self.n_specialists
        return 2 * n_right > self.n_specialists


# Where the attending bar and the learning test were set: a third of each level, unclear images only
# where the panel is unanimous.
BALANCED = Clinic("balanced")
# The paper's setting: most cases easy and few hard, specialists mostly right, and the attending's
# own reading noisy (an unclear image on half the cases a majority gets right).
REALISTIC = Clinic(
    "realistic", mix=(("easy", 0.6), ("medium", 0.3), ("hard", 0.1)), unclear_share=0.5, unclear_on="majority"
)
# Held out only, never trained or warmed up on: the realistic clinic with a panel of five (other
# majorities: 3-2, 4-1) whose opinions are worded otherwise and answer by letter.
SHIFTED = dataclasses.replace(REALISTIC, name="shifted", n_specialists=5, wording="letter")
# The clinics bench/learning.py measures (docs/synthetic-clinic.md says why each is built so; every
# setting was fixed before any result on them was seen).
CLINICS = {clinic.name: clinic for clinic in (BALANCED, REALISTIC, SHIFTED)}


@dataclass(frozen=True)
class CasePlan:
    """A synthetic attending case's set-up: how many specialists are right, how clear its image is."""

    n_right: int
    clarity: str


def plan_case(rng: random.Random, clinic: Clinic) -> CasePlan:
    """Draw a case's plan: difficulty from the clinic's mix (a medium case has 1..n-1 specialists
    right), then an unclear image with probability ``unclear_share`` where the clinic allows one.

    Hard cases (every specialist wrong, on one shared decoy) always have a clear image: copying the
    majority fails on every hard case, and the image gives the answer. On unclear images the
    opinions are the only evidence, and their majority is right.
    """
    mix = dict(clinic.mix)
    n = clinic.n_specialists
    level = rng.choices(list(mix), list(mix.values()))[0]
    n_right = {"easy": n, "hard": 0}.get(level)
    if n_right is None:
        n_right = rng.randint(1, n - 1)
    unclear = clinic.may_be_unclear(n_right) and rng.random() < clinic.unclear_share
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

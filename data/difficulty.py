"""Curriculum difficulty of a run (docs/paper.md), derived by query from the stored rewards.

s = the fraction of a run's specialists whose answer is right, read from the gold ``accuracy``
reward rows of its specialist steps. easy: s = 1; medium: 0 < s < 1; hard: s = 0. A run none of
whose specialist steps has an accuracy reward (no gold answer) has no difficulty (None).
The queries are plain SQL (SQLite and PostgreSQL) so the export can filter on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, Select, Subquery, case, distinct, func, select

from data.schema import Reward, Step

Level = Literal["easy", "medium", "hard"]
LEVELS: tuple[Level, ...] = ("easy", "medium", "hard")


def classify(s: float) -> Level:
    """easy: every specialist right (s = 1); hard: none (s = 0); medium: in between."""
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"s must be in [0, 1], got {s}")
    if s == 1.0:
        return "easy"
    return "hard" if s == 0.0 else "medium"


@dataclass(frozen=True)
class RunDifficulty:
    """How many of a run's specialists were scored against the gold answer, and how many were right."""

    run_id: str
    n_scored: int
    n_right: int

    @property
    def s(self) -> float:
        return self.n_right / self.n_scored

    @property
    def level(self) -> Level:
        return classify(self.s)


def _specialist_accuracy() -> Select:
    """(step, reward value) pairs: the gold accuracy rewards of specialist steps."""
    return (
        select(Step.id.label("step_id"), Step.run_id, Step.specialty, Reward.value)
        .join(Reward, Reward.step_id == Step.id)
        .where(Step.role == "specialist", Reward.kind == "accuracy", Reward.source == "gold")
    )


def specialist_correctness_query(run_id: str) -> Select:
    """Per specialist step of ``run_id``: step id, specialty, and whether its answer was right."""
    acc = _specialist_accuracy().where(Step.run_id == run_id).subquery()
    return (
        select(acc.c.step_id, acc.c.specialty, (func.max(acc.c.value) >= 1.0).label("correct"))
        .group_by(acc.c.step_id, acc.c.specialty)
        .order_by(acc.c.step_id)
    )


def run_scores(run_ids: Sequence[str] | None = None) -> Subquery:
    """Per run with scored specialists (all, or only ``run_ids``): ``run_id``, ``n_scored``, ``n_right``."""
    acc_query = _specialist_accuracy()
    if run_ids is not None:
        acc_query = acc_query.where(Step.run_id.in_(run_ids))
    acc = acc_query.subquery()
    # distinct step ids: a step scored twice still counts once
    right = case((acc.c.value >= 1.0, acc.c.step_id))
    return (
        select(
            acc.c.run_id,
            func.count(distinct(acc.c.step_id)).label("n_scored"),
            func.count(distinct(right)).label("n_right"),
        )
        .group_by(acc.c.run_id)
        .subquery("run_scores")
    )


def level_of(scores: Subquery) -> ColumnElement[str]:
    """The SQL expression of ``classify(n_right / n_scored)`` over a ``run_scores()`` subquery."""
    return case(
        (scores.c.n_scored.is_(None), None),  # an outer-joined run without scored specialists
        (scores.c.n_right == scores.c.n_scored, "easy"),
        (scores.c.n_right == 0, "hard"),
        else_="medium",
    )

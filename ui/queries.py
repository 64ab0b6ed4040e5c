"""Read-only queries behind the Traces and Trajectories tabs: run filters, counts, reward histogram.

Difficulty is the store's (data.difficulty: easy / medium / hard by the fraction of specialists
right); runs without a gold answer have none, shown as ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import selectinload
from sqlalchemy.sql import Select

from data.difficulty import level_of, run_scores
from data.schema import Reward, Run, Step
from data.store import TrajectoryStore, latest_verdict_ids

NO_DIFFICULTY = "none"


@dataclass(frozen=True)
class RunFilter:
    """What the Traces tab's filters ask for (None: any)."""

    status: str | None = None
    policy_id: int | None = None
    since: date | None = None
    until: date | None = None  # inclusive
    difficulty: str | None = None  # easy | medium | hard | none


def _day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def _filtered_runs(flt: RunFilter) -> Select[Any]:
    scores = run_scores()
    level = level_of(scores)
    stmt = select(Run, level.label("difficulty")).outerjoin(scores, scores.c.run_id == Run.id)
    if flt.status:
        stmt = stmt.where(Run.status == flt.status)
    if flt.policy_id is not None:
        stmt = stmt.where(Run.id.in_(select(Step.run_id).where(Step.policy_version_id == flt.policy_id)))
    if flt.since:
        stmt = stmt.where(Run.created_at >= _day_start(flt.since))
    if flt.until:
        stmt = stmt.where(Run.created_at < _day_start(flt.until + timedelta(days=1)))
    if flt.difficulty == NO_DIFFICULTY:
        stmt = stmt.where(scores.c.n_scored.is_(None))
    elif flt.difficulty:
        stmt = stmt.where(level == flt.difficulty)
    return stmt


def find_runs(store: TrajectoryStore, flt: RunFilter, limit: int = 200) -> list[tuple[Run, str]]:
    """Newest matching runs first, each with its difficulty."""
    stmt = _filtered_runs(flt).order_by(Run.created_at.desc()).limit(limit)
    with store.session() as s:
        return [(run, level or NO_DIFFICULTY) for run, level in s.execute(stmt)]


def run_difficulty(store: TrajectoryStore, run_id: str) -> str:
    found = store.difficulties([run_id]).get(run_id)
    return found.level if found else NO_DIFFICULTY


def step_counts(store: TrajectoryStore) -> list[dict[str, Any]]:
    """Stored steps by role, policy version and run difficulty (with their number of runs)."""
    scores = run_scores()
    level = level_of(scores).label("difficulty")
    stmt = (
        select(
            Step.role,
            Step.policy_version_id,
            level,
            func.count(Step.id),
            func.count(func.distinct(Step.run_id)),
        )
        .outerjoin(scores, scores.c.run_id == Step.run_id)
        .group_by(Step.role, Step.policy_version_id, level)
        .order_by(Step.role, Step.policy_version_id, level)
    )
    with store.session() as s:
        return [
            {"role": role, "policy_version": pv, "difficulty": lvl or NO_DIFFICULTY, "steps": n, "runs": runs}
            for role, pv, lvl, n, runs in s.execute(stmt)
        ]


def reward_histogram(store: TrajectoryStore) -> list[dict[str, Any]]:
    """How often each reward value occurs, per role and kind; a run's clinician verdict counts once,
    by its latest (a changed verdict replaces the earlier, which stays stored as history)."""
    verdict = and_(Reward.kind == "clinician", Reward.source == "clinician")
    stmt = (
        select(Reward.role, Reward.kind, Reward.value, func.count(Reward.id))
        .where(or_(~verdict, Reward.id.in_(latest_verdict_ids())))
        .group_by(Reward.role, Reward.kind, Reward.value)
        .order_by(Reward.role, Reward.kind, Reward.value)
    )
    with store.session() as s:
        rows = s.execute(stmt)
        return [{"role": role, "kind": kind, "value": value, "count": n} for role, kind, value, n in rows]


def case_runs(store: TrajectoryStore, thread_id: str) -> list[Run]:
    """The runs of one case (a LangGraph thread), oldest first, with their steps and images."""
    stmt = (
        select(Run)
        .where(Run.thread_id == thread_id)
        .order_by(Run.created_at)
        .options(selectinload(Run.steps), selectinload(Run.images))
    )
    with store.session() as s:
        return list(s.scalars(stmt))

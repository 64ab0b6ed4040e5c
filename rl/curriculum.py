"""Curriculum (docs/paper.md): order the rows easy → medium → hard, one stage after another.

A row's difficulty comes from the fraction ``s`` of specialists right (data/difficulty.py: easy
s = 1, medium 0 < s < 1, hard s = 0). ``order_rows`` lays the stages out back to back, each
shuffled within itself and repeated for its epochs, and pads every stage to whole generation
batches, so that with TRL's ``shuffle_dataset=False`` each batch belongs to exactly one stage and
the trainer can apply that stage's β and γ (rl/trainer.py). A generation batch counts the prompts of
every process together (rl/batching.py): padding to one process's share would let stages mix
across processes and TRL drop the last stage's incomplete batch. Without curriculum every row goes into
one shuffled ``mixed`` stage: the paper's ablation.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from data.difficulty import LEVELS, classify
from rl.recipe import Stage

log = logging.getLogger(__name__)

Row = dict[str, Any]

__all__ = [
    "LEVELS", "StageSpan", "cap_plan", "classify", "describe_plan", "order_indices", "order_rows",
    "ordered_dataset", "split_by_difficulty", "stage_spans",
]  # fmt: skip


class CurriculumError(ValueError):
    """The rows cannot be ordered as asked (no difficulty on a row, an unknown stage...)."""


@dataclass(frozen=True)
class StageSpan:
    """Where a stage sits in the ordered rows: ``rows`` of them from ``start``."""

    stage: Stage
    start: int
    rows: int


def split_by_difficulty(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """Rows grouped by their ``difficulty`` (easy / medium / hard), in their original order."""
    groups = _split_levels([row.get("difficulty") for row in rows])
    return {level: [rows[i] for i in indices] for level, indices in groups.items()}


def _split_levels(difficulties: Sequence[str | None]) -> dict[str, list[int]]:
    """Row indices grouped by difficulty, in their original order."""
    groups: dict[str, list[int]] = {level: [] for level in LEVELS}
    missing = 0
    for i, level in enumerate(difficulties):
        if level is None:
            missing += 1
        elif level not in groups:
            raise CurriculumError(f"unknown difficulty {level!r} (expected one of {', '.join(LEVELS)})")
        else:
            groups[level].append(i)
    if missing:
        raise CurriculumError(
            f"{missing} of {len(difficulties)} rows have no difficulty (no logged specialist opinion "
            "scored against a gold answer or a verdict); train them without curriculum (--curriculum false)"
        )
    return groups


def _stage_order(indices: Sequence[int], stage: Stage, batch: int, rng: random.Random) -> list[int]:
    """``stage.epochs`` passes over ``indices``, each reshuffled, padded up to whole batches of ``batch``."""
    n = max(batch, math.ceil(len(indices) * stage.epochs / batch) * batch)
    out: list[int] = []
    while len(out) < n:
        epoch = list(indices)
        rng.shuffle(epoch)
        out.extend(epoch)
    return out[:n]


def _replayed(earlier: Sequence[int], n_own: int, share: float, rng: random.Random) -> list[int]:
    """Rows of earlier stages to replay beside ``n_own`` rows of a stage, making ``share`` of it."""
    if not earlier or share <= 0:
        return []
    n = round(n_own * share / (1 - share))
    pool = list(earlier)
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def order_rows(
    rows: Sequence[Row],
    stages: Sequence[Stage],
    *,
    batch: int,
    curriculum: bool = True,
    mixed_stage: Stage | None = None,
    seed: int = 0,
) -> tuple[list[Row], list[StageSpan]]:
    """Rows in training order, each tagged with its ``stage``, and where every stage sits
    (:func:`order_indices` on the rows' difficulties)."""
    order, spans = order_indices(
        [row.get("difficulty") for row in rows],
        stages,
        batch=batch,
        curriculum=curriculum,
        mixed_stage=mixed_stage,
        seed=seed,
    )
    return [{**rows[i], "stage": stage} for i, stage in order], spans


def order_indices(
    difficulties: Sequence[str | None],
    stages: Sequence[Stage],
    *,
    batch: int,
    curriculum: bool = True,
    mixed_stage: Stage | None = None,
    seed: int = 0,
) -> tuple[list[tuple[int, str]], list[StageSpan]]:
    """The training order as (row index, stage name) pairs, from the rows' difficulties alone, and
    where every stage sits.

    ``batch``: prompts per generation batch; every stage is padded to a multiple of it. With
    ``curriculum`` the stages run in the order given, each on its own difficulty's rows (a stage
    without rows is skipped) plus, where ``stage.replay`` > 0, that share of rows drawn from the
    stages before it; otherwise ``mixed_stage`` takes every row, shuffled.
    """
    if not difficulties:
        raise CurriculumError("no rows to train on")
    if batch < 1:
        raise CurriculumError(f"batch must be >= 1, got {batch}")
    rng = random.Random(seed)
    if not curriculum:
        if mixed_stage is None:
            raise CurriculumError("training without curriculum needs a mixed stage")
        plan = [(mixed_stage, list(range(len(difficulties))))]
    else:
        groups = _split_levels(difficulties)
        unknown = [s.name for s in stages if s.name not in groups]
        if unknown:
            raise CurriculumError(f"stages {unknown} name no difficulty (expected {', '.join(LEVELS)})")
        plan = [(s, groups[s.name]) for s in stages]
    ordered: list[tuple[int, str]] = []
    spans: list[StageSpan] = []
    earlier: list[int] = []
    for stage, indices in plan:
        if not indices:
            log.warning("curriculum stage %s has no rows; skipped", stage.name)
            continue
        block = _stage_order(indices + _replayed(earlier, len(indices), stage.replay, rng), stage, batch, rng)
        earlier += indices
        spans.append(StageSpan(stage, len(ordered), len(block)))
        ordered.extend((i, stage.name) for i in block)
    return ordered, spans


def ordered_dataset(
    rows: Iterable[Row] | Any,
    stages: Sequence[Stage],
    *,
    batch: int,
    curriculum: bool = True,
    mixed_stage: Stage | None = None,
    seed: int = 0,
) -> tuple[Any, list[StageSpan]]:
    """The training dataset of ``rows`` (any iterable, or a table from rl.datasets.write_rows) in
    :func:`order_indices`'s order, each row tagged with its ``stage``, and the stage spans.

    Host memory stays flat in the number of rows: the rows are streamed to a memory-mapped table
    (unless given as one) and ordered by their difficulty column alone (an index mapping,
    rl.datasets.staged)."""
    from rl.datasets import as_table, staged

    table = as_table(rows)
    has = "difficulty" in table.column_names
    difficulties = list(table["difficulty"]) if has and len(table) else [None] * len(table)
    order, spans = order_indices(
        difficulties, stages, batch=batch, curriculum=curriculum, mixed_stage=mixed_stage, seed=seed
    )
    mixed = mixed_stage.name if not curriculum and mixed_stage else None
    return staged(table, order, mixed=mixed), spans


def stage_spans(spans: Sequence[StageSpan], batch: int, steps_per_batch: int = 1) -> list[dict[str, Any]]:
    """The stage plan in optimizer steps, for logs and reports.

    ``batch``: prompts per generation batch (all processes); ``steps_per_batch``: optimizer steps one
    generation batch feeds (rl/batching.py)."""
    plan = []
    first = 1
    for sp in spans:
        steps = sp.rows // batch * steps_per_batch
        plan.append(
            {
                "stage": sp.stage.name,
                "first_step": first,
                "steps": steps,
                "rows": sp.rows,
                "beta": sp.stage.beta,
                "gamma": sp.stage.gamma,
            }
        )
        first += steps
    return plan


def cap_plan(plan: Sequence[dict[str, Any]], max_steps: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The plan cut to its first ``max_steps`` optimizer steps (``max_steps`` <= 0: the whole plan),
    and one line per stage the cap shortened or dropped. A cap above the plan's length trains the
    plan once: it never loops back to the first stage."""
    total = sum(p["steps"] for p in plan)
    if max_steps <= 0 or max_steps >= total:
        return [dict(p) for p in plan], []
    kept, cut = [], []
    for p in plan:
        left = max_steps - (p["first_step"] - 1)
        if left >= p["steps"]:
            kept.append(dict(p))
        elif left > 0:
            kept.append({**p, "steps": left, "planned_steps": p["steps"]})
            cut.append(f"{p['stage']}: {left} of {p['steps']} steps")
        else:
            cut.append(f"{p['stage']}: 0 of {p['steps']} steps (not trained)")
    return kept, cut


def describe_plan(plan: Sequence[dict[str, Any]]) -> str:
    """One line per stage: its steps, rows, beta and gamma."""
    return "\n".join(
        f"  {p['stage']:<7} steps {p['first_step']}-{p['first_step'] + p['steps'] - 1} ({p['steps']}), "
        f"{p['rows']} rows, beta {p['beta']:g}, gamma {p['gamma']:g}"
        for p in plan
    )

"""Curriculum (docs/paper.md): order the rows easy → medium → hard, one stage after another.

A row's difficulty comes from the fraction ``s`` of specialists right (data/difficulty.py: easy
s = 1, medium 0 < s < 1, hard s = 0). ``order_rows`` lays the stages out back to back, each
shuffled within itself and repeated for its epochs, and pads every stage to whole generation
batches, so that with TRL's ``shuffle_dataset=False`` each batch belongs to exactly one stage and
the trainer can apply that stage's β and γ (rl/grpo.py). Without curriculum every row goes into
one shuffled ``mixed`` stage: the paper's ablation.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from data.difficulty import LEVELS, classify
from rl.grpo_config import Stage

log = logging.getLogger(__name__)

Row = dict[str, Any]

__all__ = ["LEVELS", "StageSpan", "classify", "order_rows", "split_by_difficulty", "stage_spans"]


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
    groups: dict[str, list[Row]] = {level: [] for level in LEVELS}
    missing = 0
    for row in rows:
        level = row.get("difficulty")
        if level is None:
            missing += 1
        elif level not in groups:
            raise CurriculumError(f"unknown difficulty {level!r} (expected one of {', '.join(LEVELS)})")
        else:
            groups[level].append(row)
    if missing:
        raise CurriculumError(
            f"{missing} of {len(rows)} rows have no difficulty (no gold-scored specialists); "
            "train them without curriculum (--no-curriculum)"
        )
    return groups


def _stage_rows(rows: Sequence[Row], stage: Stage, batch: int, rng: random.Random) -> list[Row]:
    """``stage.epochs`` passes over ``rows``, each reshuffled, padded up to whole batches of ``batch``."""
    n = max(batch, math.ceil(len(rows) * stage.epochs / batch) * batch)
    out: list[Row] = []
    while len(out) < n:
        epoch = list(rows)
        rng.shuffle(epoch)
        out.extend(epoch)
    return [{**r, "stage": stage.name} for r in out[:n]]


def order_rows(
    rows: Sequence[Row],
    stages: Sequence[Stage],
    *,
    batch: int,
    curriculum: bool = True,
    mixed_stage: Stage | None = None,
    seed: int = 0,
) -> tuple[list[Row], list[StageSpan]]:
    """Rows in training order, each tagged with its ``stage``, and where every stage sits.

    ``batch``: prompts per generation batch; every stage is padded to a multiple of it. With
    ``curriculum`` the stages run in the order given, each on its own difficulty's rows (a stage
    without rows is skipped); otherwise ``mixed_stage`` takes every row, shuffled.
    """
    if not rows:
        raise CurriculumError("no rows to train on")
    if batch < 1:
        raise CurriculumError(f"batch must be >= 1, got {batch}")
    rng = random.Random(seed)
    if not curriculum:
        if mixed_stage is None:
            raise CurriculumError("training without curriculum needs a mixed stage")
        plan = [(mixed_stage, list(rows))]
    else:
        groups = split_by_difficulty(rows)
        unknown = [s.name for s in stages if s.name not in groups]
        if unknown:
            raise CurriculumError(f"stages {unknown} name no difficulty (expected {', '.join(LEVELS)})")
        plan = [(s, groups[s.name]) for s in stages]
    ordered: list[Row] = []
    spans: list[StageSpan] = []
    for stage, stage_rows in plan:
        if not stage_rows:
            log.warning("curriculum stage %s has no rows; skipped", stage.name)
            continue
        block = _stage_rows(stage_rows, stage, batch, rng)
        spans.append(StageSpan(stage, len(ordered), len(block)))
        ordered.extend(block)
    return ordered, spans


def stage_spans(spans: Sequence[StageSpan], batch: int) -> list[dict[str, Any]]:
    """The stage plan in optimizer steps (one generation batch a step), for logs and reports."""
    return [
        {
            "stage": sp.stage.name,
            "first_step": sp.start // batch + 1,
            "steps": sp.rows // batch,
            "beta": sp.stage.beta,
            "gamma": sp.stage.gamma,
        }
        for sp in spans
    ]

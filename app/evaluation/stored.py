"""What an evaluation leaves behind: its runs in the store and its report files; re-scoring.

A report is a function of the stored runs and the scorer (:mod:`data.answers`), so when the
scoring rules change, :func:`rescore` rebuilds an eval's report from the same runs without asking
any model again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.evaluation.report import (
    EvalError,
    ReportStep,
    RunRecord,
    build_report,
    report_markdown,
    scorer_version,
)
from data.schema import Run, Step
from data.store import TrajectoryStore

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_MD = "report.json", "report.md"
# What a report says about its eval besides the scores: carried over when it is re-scored.
_INFO_KEYS = ("eval_id", "benchmark", "mode", "split", "models", "config")


def eval_records(store: TrajectoryStore, eval_id: str) -> list[RunRecord]:
    """The stored runs of an eval, with the step fields a report reads (no token ids/logprobs)."""
    run_cols = [Run.id.label("run_id")] + [getattr(Run, n) for n in _names(RunRecord) - {"run_id", "steps"}]
    step_cols = [Step.run_id] + [getattr(Step, n) for n in _names(ReportStep)]
    with store.session() as s:
        runs = s.execute(select(*run_cols).where(Run.eval_id == eval_id)).all()
        step_rows = s.execute(
            select(*step_cols)
            .join(Run, Run.id == Step.run_id)
            .where(Run.eval_id == eval_id)
            .order_by(Step.seq)
        ).all()
    steps: dict[str, list[ReportStep]] = {}
    for row in step_rows:
        steps.setdefault(row.run_id, []).append(ReportStep(**_not_null(row._mapping, skip="run_id")))
    return [RunRecord(**_not_null(r._mapping), steps=tuple(steps.get(r.run_id, ()))) for r in runs]


def _names(record: type) -> set[str]:
    return {f.name for f in fields(record)}


def _not_null(row: Mapping[str, Any], skip: str = "") -> dict[str, Any]:
    """A row's non-NULL columns (a record's defaults stand in for NULLs)."""
    return {k: v for k, v in row.items() if v is not None and k != skip}


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md_path.write_text(report_markdown(report), encoding="utf-8")
    return json_path, md_path


def read_report(path: Path) -> dict[str, Any]:
    """A report written by :func:`write_report` (raises :class:`EvalError` with a clear reason)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"{path} is not a readable report ({exc})") from None
    if not isinstance(data, dict) or not {"accuracy", "per_case", "cost"} <= data.keys():
        raise EvalError(f"{path} is not an evaluation report (no accuracy/per_case/cost)")
    return data


def rescore(
    store: TrajectoryStore, eval_id: str, out_dir: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Rebuild the report of ``eval_id`` from its stored runs with the current scorer and write it
    to ``out_dir``; returns the new report and the one it replaces (None when there was none).

    The eval's description and case list come from the previous report in ``out_dir`` when there
    is one (a previous report by another scorer version is kept as ``report.scorer-vN.json``);
    otherwise from the runs alone.
    """
    records = eval_records(store, eval_id)
    if not records:
        raise EvalError(f"no stored runs for eval {eval_id!r}")
    previous = read_report(out_dir / REPORT_JSON) if (out_dir / REPORT_JSON).is_file() else None
    if previous is not None and previous.get("eval_id") != eval_id:
        raise EvalError(
            f"{out_dir / REPORT_JSON} is the report of eval {previous.get('eval_id')!r}, not {eval_id!r}"
        )
    info, case_ids, skipped = _previous_layout(previous, records, eval_id)
    report = build_report(records, case_ids=case_ids, info=info, skipped=skipped)
    if previous is not None and scorer_version(previous) != scorer_version(report):
        kept = out_dir / f"report.scorer-v{scorer_version(previous)}.json"
        kept.write_text(json.dumps(previous, indent=2, default=str) + "\n", encoding="utf-8")
        log.info("the previous report (scorer v%d) is kept as %s", scorer_version(previous), kept)
    write_report(report, out_dir)
    return report, previous


def _previous_layout(
    previous: Mapping[str, Any] | None, records: list[RunRecord], eval_id: str
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """The eval's description, its cases in order and the skipped ones, for a re-scored report."""
    run_order = list(dict.fromkeys(r.case_id for r in sorted(records, key=lambda r: r.created_at)))
    if previous is None:
        benchmark = next((r.meta.get("benchmark") for r in records if r.meta.get("benchmark")), None)
        log.warning("no previous report of %s: its settings are unknown, its cases are its runs", eval_id)
        return {"eval_id": eval_id, "benchmark": benchmark or "unknown", "mode": "unknown"}, run_order, {}
    ran = set(run_order)  # a case skipped then (bad input) but run since is no longer skipped
    skipped = {s["case_id"]: s["reason"] for s in previous.get("skipped", []) if s["case_id"] not in ran}
    case_ids = previous.get("case_ids") or [c["case_id"] for c in previous["per_case"]] + list(skipped)
    # Cases run since the previous report (a resumed eval) are reported too.
    case_ids = list(dict.fromkeys([*case_ids, *run_order]))
    return {k: previous.get(k) for k in _INFO_KEYS}, case_ids, skipped

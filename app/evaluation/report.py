"""Evaluation reports: score stored runs, aggregate with bootstrap CIs, render, compare.

A report is plain JSON-ready data built from the runs an evaluation stored (:class:`RunRecord`),
so it depends only on what is in the database: an interrupted and resumed evaluation reports the
same as an uninterrupted one. Closed questions (options, or a closed yes/no or free-form answer)
make the accuracy; open questions are reported apart (exact match, token F1, token recall). Every
answer is compared by :mod:`data.answers`; a report records the version of those rules
(``scorer_version``), and reports scored by different versions are not compared unless forced.

Difficulty follows the paper's curriculum: s = the fraction of the consulted specialists whose
answer is right; easy s = 1, medium 0 < s < 1, hard s = 0 (closed questions, modes with
specialists). Triage accuracy: the triage's first pick is the gold specialty (top-1), and the gold
specialty is among those consulted (in panel).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from rich.table import Table

from data.answers import SCORER_VERSION, exact_match, is_correct, token_f1, token_recall
from data.difficulty import LEVELS as DIFFICULTIES
from data.difficulty import classify
from data.specialties import SPECIALTIES

UNLABELLED = "(unlabelled)"
BOOTSTRAP_RESAMPLES = 2000
# Reports written before the scorer was versioned were scored by version 1.
UNVERSIONED_SCORER = 1


class EvalError(ValueError):
    """The evaluation or a report is mis-specified (unknown mode, unreadable report...)."""


class ScorerMismatch(EvalError):
    """Two reports scored by different versions of the answer-matching rules."""


@dataclass(frozen=True, kw_only=True)
class ReportStep:
    """What a report needs of one stored model call (fields named as the ``steps`` columns;
    a default stands in for a NULL)."""

    node: str
    role: str
    specialty: str | None = None
    parsed: Mapping[str, Any] = field(default_factory=dict)
    parse_status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What a report needs of one stored run of an evaluation case (fields named as the ``runs``
    columns, ``run_id`` for ``id``; a default stands in for a NULL)."""

    run_id: str
    case_id: str = ""
    status: str
    created_at: datetime
    options: Sequence[str] = field(default_factory=list)
    gold_answer: str | None = None
    gold_specialty: str | None = None
    specialties: Sequence[str] = field(default_factory=list)
    answer: str | None = None
    answer_status: str | None = None
    wall_s: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    steps: Sequence[ReportStep] = field(default_factory=tuple)


# --- statistics ---------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean (seeded: the same data, the same CI)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _rate(hits: Sequence[bool]) -> dict[str, Any]:
    n = len(hits)
    return {"n": n, "correct": int(sum(hits)), "accuracy": (sum(hits) / n) if n else None}


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


# --- building -----------------------------------------------------------------------------------


def _choose(records: Iterable[RunRecord]) -> dict[str, RunRecord]:
    """One run per case: the newest successful one, else the newest failed one."""
    chosen: dict[str, RunRecord] = {}
    for rec in records:
        best = chosen.get(rec.case_id)
        if best is None or (rec.status == "ok", rec.created_at) > (best.status == "ok", best.created_at):
            chosen[rec.case_id] = rec
    return chosen


def _difficulty(rec: RunRecord, gold: str) -> tuple[float | None, str | None]:
    opinions = [st for st in rec.steps if st.role == "specialist"]
    if not opinions:
        return None, None
    s = sum(is_correct(st.parsed.get("answer"), gold, rec.options) for st in opinions) / len(opinions)
    return s, classify(s)


def score_run(rec: RunRecord) -> dict[str, Any]:
    """The per-case entry of a report."""
    closed = rec.meta.get("kind", "closed") == "closed"
    gold = rec.gold_answer or ""
    answer = rec.answer if rec.status == "ok" else None
    entry: dict[str, Any] = {
        "case_id": rec.case_id,
        "run_id": rec.run_id,
        "status": rec.status,
        "kind": "closed" if closed else "open",
        "specialty": rec.gold_specialty,
        "subset": rec.meta.get("subset"),
        "answer": answer,
        "answer_status": rec.answer_status,
        "model_calls": len(rec.steps),
        "prompt_tokens": sum(st.prompt_tokens for st in rec.steps),
        "completion_tokens": sum(st.completion_tokens for st in rec.steps),
        "model_s": sum(st.latency_s for st in rec.steps),
        "wall_s": rec.wall_s,
    }
    if closed:
        entry["correct"] = is_correct(answer, gold, rec.options)
        entry["s"], entry["difficulty"] = _difficulty(rec, gold)
    else:
        text = rec.meta.get("answer_text") or gold
        entry["exact"] = exact_match(answer, text)
        entry["f1"] = token_f1(answer, text)
        entry["recall"] = token_recall(answer, text)
    triage = next((st for st in rec.steps if st.role == "triage"), None)
    if triage is not None and rec.gold_specialty:
        picks = triage.parsed.get("specialties") or []
        entry["triage_top1"] = bool(picks) and picks[0] == rec.gold_specialty
        entry["triage_in_panel"] = rec.gold_specialty in rec.specialties
        entry["triage_parsed"] = triage.parse_status != "failed"
    return entry


def _breakdown(cases: Sequence[Mapping[str, Any]], key: str, order: Sequence[str] = ()) -> dict[str, Any]:
    groups: dict[str, list[bool]] = {}
    for c in cases:
        groups.setdefault(c.get(key) or UNLABELLED, []).append(c["correct"])
    rank = {name: i for i, name in enumerate(order)}
    return {k: _rate(groups[k]) for k in sorted(groups, key=lambda k: (rank.get(k, len(rank)), k))}


def build_report(
    records: Iterable[RunRecord],
    *,
    case_ids: Sequence[str],
    info: Mapping[str, Any],
    skipped: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The report of one evaluation over ``case_ids`` (in order); ``skipped`` maps case ids that
    could not be asked (unreadable image...) to the reason; ``info`` describes the evaluation."""
    skipped = dict(skipped or {})
    chosen = _choose(r for r in records if r.case_id in set(case_ids))
    per_case = [score_run(chosen[c]) for c in case_ids if c in chosen]
    closed = [c for c in per_case if c["kind"] == "closed"]
    opened = [c for c in per_case if c["kind"] == "open"]
    hits = [c["correct"] for c in closed]
    ci = bootstrap_ci(hits)
    triaged = [c for c in per_case if "triage_top1" in c]
    answered = [c for c in per_case if c["status"] == "ok"]
    statuses = Counter(c["answer_status"] for c in answered)
    errors = [c for c in per_case if c["status"] != "ok"]
    cost_keys = ("model_calls", "prompt_tokens", "completion_tokens", "model_s", "wall_s")
    return {
        **info,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scorer_version": SCORER_VERSION,
        "case_ids": list(case_ids),
        "cases": {
            "total": len(case_ids),
            "run": len(per_case),
            "closed": len(closed),
            "open": len(opened),
            "skipped": len(skipped),
            "missing": sum(c not in chosen and c not in skipped for c in case_ids),
            "errors": len(errors),
        },
        "accuracy": {**_rate(hits), "ci95": list(ci) if ci else None},
        "open": {
            "n": len(opened),
            "exact": _mean(float(c["exact"]) for c in opened),
            "token_f1": _mean(c["f1"] for c in opened),
            "recall": _mean(c["recall"] for c in opened),
        },
        "by_specialty": _breakdown(closed, "specialty", SPECIALTIES),
        "by_difficulty": _breakdown([c for c in closed if c.get("difficulty")], "difficulty", DIFFICULTIES),
        "by_subset": _breakdown(closed, "subset") if any(c.get("subset") for c in closed) else {},
        "triage": {
            "n": len(triaged),
            "top1": _mean(float(c["triage_top1"]) for c in triaged),
            "in_panel": _mean(float(c["triage_in_panel"]) for c in triaged),
            "parsed": _mean(float(c["triage_parsed"]) for c in triaged),
        }
        if triaged
        else None,
        "format": {
            "n": len(answered),
            **{s: statuses.get(s, 0) for s in ("ok", "recovered", "failed")},
            "failure_rate": statuses.get("failed", 0) / len(answered) if answered else None,
        },
        "errors": [{"case_id": c["case_id"], "error": chosen[c["case_id"]].error} for c in errors],
        "cost": {
            "per_case": {k: _mean(c[k] for c in per_case) for k in cost_keys},
            "total": {k: float(sum(c[k] for c in per_case)) for k in cost_keys},
        },
        "skipped": [{"case_id": k, "reason": v} for k, v in skipped.items()],
        "per_case": per_case,
    }


# --- rendering ----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The headline figures as (label, value) pairs, shared by the table and the Markdown."""
    acc, cases, fmt, cost = report["accuracy"], report["cases"], report["format"], report["cost"]["per_case"]
    rows = [
        ("cases (run / total)", f"{cases['run']} / {cases['total']}"),
        ("closed accuracy %", f"{_pct(acc['accuracy'])}  ({acc['correct']}/{acc['n']})"),
        ("95% bootstrap CI", _ci(acc["ci95"])),
    ]
    if report["open"]["n"]:
        op = report["open"]
        scores = f"{_pct(op['exact'])} / {_pct(op['token_f1'])} / {_pct(op['recall'])}  (n={op['n']})"
        rows.append(("open: exact / token F1 / recall %", scores))
    if report["triage"]:
        tr = report["triage"]
        rows.append(
            ("triage top-1 / in panel %", f"{_pct(tr['top1'])} / {_pct(tr['in_panel'])}  (n={tr['n']})")
        )
    formats = f"strict {fmt['ok']}, recovered {fmt['recovered']}, failed {fmt['failed']}"
    tokens = f"{_num(cost['prompt_tokens'])} + {_num(cost['completion_tokens'])}"
    rows += [
        ("format failure rate %", f"{_pct(fmt['failure_rate'])}  ({formats})"),
        ("run errors / skipped", f"{cases['errors']} / {cases['skipped']}"),
        ("model calls / case", _num(cost["model_calls"], 2)),
        ("tokens / case (prompt + completion)", tokens),
        ("wall s / case (model s)", f"{_num(cost['wall_s'], 3)} ({_num(cost['model_s'], 3)})"),
        ("answer scorer", f"v{scorer_version(report)}"),
    ]
    return rows


def rescore_note(report: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str:
    """One line on what re-scoring changed: the scorer version and the headline figures."""
    if previous is None:
        return (
            f"re-scored eval {report['eval_id']} with scorer v{scorer_version(report)} (no previous report)"
        )
    figures = [("closed accuracy", lambda r: r["accuracy"]["accuracy"])]
    if report["open"]["n"]:
        figures += [
            ("open exact", lambda r: r["open"]["exact"]),
            ("open token F1", lambda r: r["open"]["token_f1"]),
            ("open recall", lambda r: r["open"]["recall"]),
        ]
    changes = ", ".join(f"{name} {_pct(get(previous))} -> {_pct(get(report))} %" for name, get in figures)
    return (
        f"re-scored eval {report['eval_id']}: scorer v{scorer_version(previous)} -> "
        f"v{scorer_version(report)}; {changes}"
    )


def _breakdowns(report: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (title, report[key])
        for title, key in (
            ("by gold specialty", "by_specialty"),
            ("by difficulty (s = fraction of specialists right)", "by_difficulty"),
            ("by subset", "by_subset"),
        )
        if report[key]
    ]


def _title(report: Mapping[str, Any]) -> str:
    return f"{report['benchmark']} · {report['mode']} · eval {report['eval_id']}"


def report_tables(report: Mapping[str, Any]) -> list[Table]:
    """The report as rich tables: the headline figures, then each breakdown."""
    main = Table(title=_title(report), show_header=False)
    main.add_column("metric", style="bold")
    main.add_column("value")
    for label, value in summary_rows(report):
        main.add_row(label, value)
    tables = [main]
    for title, groups in _breakdowns(report):
        t = Table(title=f"closed accuracy {title}")
        for col in ("group", "n", "correct", "accuracy %"):
            t.add_column(col)
        for name, g in groups.items():
            t.add_row(name, str(g["n"]), str(g["correct"]), _pct(g["accuracy"]))
        tables.append(t)
    return tables


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown (for notes and papers)."""
    lines = [f"# {_title(report)}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in summary_rows(report)]
    for title, groups in _breakdowns(report):
        lines += [
            "",
            f"## Closed accuracy {title}",
            "",
            "| group | n | correct | accuracy % |",
            "|---|---|---|---|",
        ]
        lines += [f"| {k} | {g['n']} | {g['correct']} | {_pct(g['accuracy'])} |" for k, g in groups.items()]
    if report["skipped"]:
        lines += ["", "## Skipped cases", ""] + [
            f"- {s['case_id']}: {s['reason']}" for s in report["skipped"]
        ]
    settings = {k: report.get(k) for k in ("split", "models", "config")}
    lines += ["", "## Settings", "", "```json", _json(settings), "```", ""]
    return "\n".join(lines)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


# --- comparing ----------------------------------------------------------------------------------


def _difficulty_labels(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, str]:
    """Difficulty per case from whichever report has specialists (A first): a baseline without
    specialists is then broken down by how hard the panel found each case."""
    for rep in (a, b):
        labels = {c["case_id"]: c["difficulty"] for c in rep["per_case"] if c.get("difficulty")}
        if labels:
            return labels
    return {}


def _closed_hits(report: Mapping[str, Any]) -> dict[str, bool]:
    return {c["case_id"]: c["correct"] for c in report["per_case"] if c["kind"] == "closed"}


def scorer_version(report: Mapping[str, Any]) -> int:
    """The version of the answer-matching rules that scored ``report``."""
    return int(report.get("scorer_version") or UNVERSIONED_SCORER)


def compare_reports(a: Mapping[str, Any], b: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
    """B against A: each metric of both and the delta (B - A); the accuracy delta gets a paired
    bootstrap CI over the closed cases both evaluated.

    Raises :class:`ScorerMismatch` when the two were scored by different scorer versions (their
    deltas would measure the scorer, not the systems), unless ``force``.
    """
    versions = scorer_version(a), scorer_version(b)
    if versions[0] != versions[1] and not force:
        older = a if versions[0] < versions[1] else b
        raise ScorerMismatch(
            f"A ({a.get('eval_id')}) was scored by scorer v{versions[0]} and B ({b.get('eval_id')}) by "
            f"v{versions[1]}: their differences would be the scorer's. Re-score the older one "
            f"(mmedagent eval rescore {older.get('eval_id')}), or compare anyway with --force."
        )
    rows: list[dict[str, Any]] = []

    def add(metric: str, va: float | None, vb: float | None, *, percent: bool = True) -> None:
        delta = None if va is None or vb is None else vb - va
        rows.append({"metric": metric, "a": va, "b": vb, "delta": delta, "percent": percent})

    add("closed accuracy", a["accuracy"]["accuracy"], b["accuracy"]["accuracy"])
    if a["open"]["n"] or b["open"]["n"]:
        add("open token F1", a["open"]["token_f1"], b["open"]["token_f1"])
        add("open recall", a["open"]["recall"], b["open"]["recall"])
    if a["triage"] or b["triage"]:
        add("triage top-1", (a["triage"] or {}).get("top1"), (b["triage"] or {}).get("top1"))
    add("format failure rate", a["format"]["failure_rate"], b["format"]["failure_rate"])
    for key in ("model_calls", "prompt_tokens", "completion_tokens", "wall_s"):
        per_a, per_b = a["cost"]["per_case"][key], b["cost"]["per_case"][key]
        add(f"{key.replace('_', ' ')} / case", per_a, per_b, percent=False)
    for name in dict.fromkeys([*a["by_specialty"], *b["by_specialty"]]):
        ga, gb = a["by_specialty"].get(name, {}), b["by_specialty"].get(name, {})
        add(f"accuracy · {name}", ga.get("accuracy"), gb.get("accuracy"))
    hits_a, hits_b = _closed_hits(a), _closed_hits(b)
    labels = _difficulty_labels(a, b)
    for level in DIFFICULTIES:
        ids = [c for c, lab in labels.items() if lab == level]
        ra = [hits_a[c] for c in ids if c in hits_a]
        rb = [hits_b[c] for c in ids if c in hits_b]
        if ra or rb:
            add(f"accuracy · {level}", _rate(ra)["accuracy"], _rate(rb)["accuracy"])
    shared = [c for c in hits_a if c in hits_b]
    diffs = [float(hits_b[c]) - float(hits_a[c]) for c in shared]
    ci = bootstrap_ci(diffs)
    return {
        "a": {k: a.get(k) for k in ("eval_id", "benchmark", "mode")},
        "b": {k: b.get(k) for k in ("eval_id", "benchmark", "mode")},
        "paired": {"n": len(shared), "delta": _mean(diffs), "ci95": list(ci) if ci else None},
        "scorer_versions": list(versions),
        "rows": rows,
    }


def compare_table(cmp: Mapping[str, Any]) -> Table:
    """The comparison as a rich table (percentage points for rates)."""
    a, b = cmp["a"], cmp["b"]
    name_a = f"{a['benchmark']}·{a['mode']} ({a['eval_id']})"
    name_b = f"{b['benchmark']}·{b['mode']} ({b['eval_id']})"
    t = Table(title=f"B − A   A = {name_a}   B = {name_b}")
    for col in ("metric", "A", "B", "Δ (B − A)"):
        t.add_column(col)
    for r in cmp["rows"]:
        fmt = _pct if r["percent"] else _num
        delta = "-" if r["delta"] is None else ("+" if r["delta"] >= 0 else "") + fmt(r["delta"])
        t.add_row(r["metric"] + (" %" if r["percent"] else ""), fmt(r["a"]), fmt(r["b"]), delta)
    p, captions = cmp["paired"], []
    if p["n"]:
        captions.append(
            f"paired closed-accuracy Δ over {p['n']} shared cases: {_pct(p['delta'])} pp, "
            f"95% bootstrap CI {_ci(p['ci95'])}"
        )
    va, vb = cmp["scorer_versions"]
    if va != vb:
        captions.append(f"forced: A scored by scorer v{va}, B by v{vb}")
    t.caption = "\n".join(captions) or None
    return t

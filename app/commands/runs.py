"""``runs list`` / ``runs show`` / ``runs diff``: inspect stored runs (trajectories)."""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from app.commands.common import console, err, fail, open_store
from app.run_terminal import diff_table, print_run, timeline_table
from data.run_view import diff_runs, run_report
from data.run_view import timeline as timeline_bars
from data.schema import RUN_STATUSES
from data.store import TrajectoryStore

runs_app = typer.Typer(no_args_is_help=True, help="Inspect stored runs (trajectories).")


def _mark_interrupted(store: TrajectoryStore) -> None:
    """Mark the runs whose process is gone; on a database this cannot write to, warn and read on."""
    try:
        store.mark_interrupted()
    except DBAPIError as exc:
        err.print(
            f"[yellow]warning:[/yellow] runs whose process is gone are not marked interrupted "
            f"(the database refused a write: {escape(str(exc.orig).strip())})",
            highlight=False,
            soft_wrap=True,
        )


@runs_app.command("list")
def runs_list(
    limit: int = 20,
    status: Annotated[str | None, typer.Option(help=" | ".join(RUN_STATUSES))] = None,
) -> None:
    """The newest stored runs; a run whose process died shows ``interrupted``."""
    if status not in (None, *RUN_STATUSES):
        fail(f"--status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
    with closing(open_store()) as store:
        _mark_interrupted(store)  # runs whose process is gone, found here first
        runs = store.list_runs(limit=limit, status=status)
    table = Table()
    table.add_column("run_id", no_wrap=True, min_width=32)
    for col in ("created", "source", "status", "specialists", "answer", "wall s"):
        table.add_column(col)
    for r in runs:
        table.add_row(
            r.id,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.source,
            r.status,
            ", ".join(r.specialties),
            (r.answer or r.error or "")[:40],
            f"{r.wall_s or 0:.2f}",
        )
    console.print(table)


@runs_app.command("show")
def runs_show(
    run_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="the model calls on a time axis (waits, batches, tokens)")
    ] = False,
) -> None:
    """One run with every step: completion, parse, tokens, latency, policy version, rewards; the
    gold answer. ``--json`` adds the exact prompts; ``--timeline`` draws the calls on a time axis."""
    with closing(open_store()) as store:
        _mark_interrupted(store)
        report = run_report(store, run_id)
    if report is None:
        fail(f"no run {run_id!r}")
    if as_json:
        if timeline:
            report["timeline"] = [bar.as_dict() for bar in timeline_bars(report)]
        print(json.dumps(report, indent=2))
    elif timeline:
        console.print(timeline_table(report, width=max(12, console.width - 110)))
    else:
        print_run(console, report)


@runs_app.command("diff")
def runs_diff(
    run_a: str,
    run_b: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Two runs side by side (e.g. one case before and after a policy version), differences marked."""
    with closing(open_store()) as store:
        a, b = run_report(store, run_a), run_report(store, run_b)
    for rid, found in ((run_a, a), (run_b, b)):
        if found is None:
            fail(f"no run {rid!r}")
    rows = diff_runs(a, b)
    if as_json:
        print(json.dumps({"a": run_a, "b": run_b, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        console.print(diff_table(a, b, rows))

"""``runs list`` / ``runs show``: inspect stored runs (trajectories)."""

from __future__ import annotations

import json
from contextlib import closing
from typing import Annotated

import typer
from rich.table import Table

from app.commands.common import console, fail, open_store
from data.store import run_to_dict

runs_app = typer.Typer(no_args_is_help=True, help="Inspect stored runs (trajectories).")


@runs_app.command("list")
def runs_list(
    limit: int = 20,
    status: Annotated[str | None, typer.Option(help="ok | error")] = None,
) -> None:
    """The newest stored runs."""
    with closing(open_store()) as store:
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
def runs_show(run_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """One run with every step: prompt, completion, parse, tokens, latency."""
    with closing(open_store()) as store:
        run = store.get_run(run_id)
        if run is None:
            fail(f"no run {run_id!r}")
        data = run_to_dict(run)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    console.print(
        f"[bold]run {data['run_id']}[/bold] {data['status']} {data['error'] or ''}", highlight=False
    )
    console.print(f"question: {data['question']}  options: {data['options']}", highlight=False)
    for st in data["steps"]:
        who = st["node"] + (f" ({st['specialty']})" if st["specialty"] else "")
        console.print(
            f"\n[bold]{who}[/bold] model={st['model_id']} parse={st['parse_status']} "
            f"tokens={st['prompt_tokens']}+{st['completion_tokens']} {st['latency_s']:.3f}s",
            highlight=False,
        )
        console.print(st["completion"], highlight=False, markup=False)
    console.print(f"\nanswer: {data['answer']} ({data['answer_status']})", highlight=False)

"""``export``: stored steps as an RL dataset (the writers live in data.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from app.commands.common import console, err, fail, open_store
from data.export import ExportError, ExportFilter, count_rows, export, parse_since
from data.schema import FINISHED_STATUSES


def export_command(
    role: Annotated[str, typer.Option(help="triage | specialist | attending")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (files are named by role)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="parquet | jsonl | hf")] = "parquet",
    since: Annotated[
        str | None, typer.Option(help="runs since an ISO date/datetime (UTC) or a look-back: 24h, 7d, 2w")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help=f"only runs with this status: {' | '.join(FINISHED_STATUSES)}")
    ] = None,
    with_gold: Annotated[
        bool,
        typer.Option("--with-gold", help="only cases with a gold label (triage: specialty, else answer)"),
    ] = False,
    difficulty: Annotated[
        list[str] | None, typer.Option(help="easy | medium | hard (by specialists right); repeatable")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export of this role")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="rows per batch/row group")] = 256,
) -> None:
    """Export stored steps as an RL dataset (one row per model call; TRL-ready parquet/hf)."""
    if status not in (None, *FINISHED_STATUSES):
        fail(f"--status must be one of {', '.join(FINISHED_STATUSES)}, not {status!r}")
    try:
        flt = ExportFilter(
            role=role,
            since=parse_since(since) if since else None,
            status=status,
            with_gold=with_gold,
            difficulty=difficulty or None,
        )
    except ExportError as exc:
        fail(str(exc))
    store = open_store()
    columns = (TextColumn("exporting {task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(f"{role} steps", total=count_rows(store, flt))
            result = export(
                store, flt, fmt, out, batch_size=batch_size, overwrite=overwrite,
                on_rows=lambda n: progress.advance(task, n),
            )  # fmt: skip
    except ExportError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the export: {exc}", code=1)
    finally:
        store.close()
    console.print(f"exported {result.rows} {role} rows to {result.path}", highlight=False)
    if result.images_without_pixels:
        console.print(
            f"{result.images_without_pixels} image entries have no pixels (hash-only): null in `images`",
            highlight=False,
        )

"""``mmedagent``: the command line. Bad input exits 2 with a one-line reason and writes nothing."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from app.config import Settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Multi-agent medical VQA that learns from use."
)
runs_app = typer.Typer(no_args_is_help=True, help="Inspect stored runs (trajectories).")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(runs_app, name="runs")
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line reason and exit (2 = bad input, 1 = the run itself failed)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's errors are long; the first line says what is wrong
        fail(f"invalid configuration: {str(exc).splitlines()[0]}")


def open_runtime(settings: Settings):  # -> Runtime (imported lazily: torch is slow to import)
    from app.runtime import Runtime
    from data.migrate import DatabaseNotMigrated
    from graph.protocol import BackendError

    ensure_default_model(settings)
    try:
        return Runtime(settings)
    except DatabaseNotMigrated as exc:
        fail(str(exc))
    except (BackendError, OSError) as exc:
        fail(f"cannot load the model: {exc}", code=1)


def ensure_default_model(settings: Settings) -> None:
    """Build the tiny offline checkpoint when a role uses it and it is not there yet."""
    tiny = settings.tiny_model_dir
    uses_tiny = any(settings.model_for(r) == str(tiny) for r in ("triage", "specialist", "attending"))
    if uses_tiny and not (tiny / "config.json").exists():
        from app.tiny_model import build_tiny_model

        err.print(f"building the tiny offline Qwen2.5-VL checkpoint in {tiny} ...")
        build_tiny_model(tiny)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command("tiny-model")
def tiny_model(
    out_dir: Path,
    size: Annotated[str, typer.Option(help="tiny (~1 MB) or small (~14M params)")] = "tiny",
    seed: int = 0,
) -> None:
    """Build a tiny Qwen2.5-VL checkpoint offline (real architecture, processor and template)."""
    from app.tiny_model import build_tiny_model

    if size not in ("tiny", "small"):
        fail(f"--size must be tiny or small, not {size!r}")
    path = build_tiny_model(out_dir, size=size, seed=seed)  # type: ignore[arg-type]
    console.print(f"tiny Qwen2.5-VL ({size}) saved to {path}")


@app.command()
def ask(
    image: Annotated[
        list[Path], typer.Option("--image", "-i", help="image file (PNG/JPEG/DICOM); repeatable")
    ],
    question: Annotated[str, typer.Option("--question", "-q")],
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help='e.g. "A) Nodule"; repeatable')
    ] = None,
    gold: Annotated[str | None, typer.Option(help="the right answer, when known")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Run one case through triage -> specialists -> attending and print the answer."""
    from app.runtime import CaseRequest, InputError
    from data.images import ImageError, load_image

    settings = load_settings()
    try:
        images = [load_image(p, limits=settings.image_limits()) for p in image]
    except ImageError as exc:
        fail(str(exc))
    req = CaseRequest(question=question, images=images, options=option or [], gold_answer=gold)
    runtime = open_runtime(settings)
    try:
        runtime.validate(req)
        result = runtime.ask(req)
    except InputError as exc:
        fail(str(exc))
    finally:
        runtime.close()
    if as_json:
        print(json.dumps(result.summary(), indent=2))
    else:
        console.print(f"run {result.run_id}  specialists: {', '.join(result.specialties)}")
        for op in result.opinions:
            console.print(f"[bold]{op['specialty']}[/bold]: {op['answer'] or '(no answer)'}", highlight=False)
        console.print(
            f"[bold green]answer:[/bold green] {result.answer} ({result.answer_status})", highlight=False
        )
    if result.status == "error":
        fail(f"run {result.run_id} failed: {result.error}", code=1)


@app.command()
def demo(
    n: Annotated[int, typer.Option(help="number of synthetic cases", min=1, max=200)] = 4,
    seed: int = 0,
) -> None:
    """Build the tiny model if missing, run a few synthetic-clinic cases, show the results."""
    from app.runtime import CaseRequest
    from data.images import load_image
    from data.synthetic import generate_cases
    from graph.parse import is_correct

    settings = load_settings()
    runtime = open_runtime(settings)
    table = Table(title=f"mmedagent demo: {n} synthetic-clinic cases (seed {seed})")
    table.add_column("case", no_wrap=True)
    for col in ("gold specialty", "triage -> specialists", "answer", "gold", "right", "parse", "s"):
        table.add_column(col)
    try:
        for case in generate_cases(n, seed=seed):
            req = CaseRequest(
                question=case.question,
                images=[load_image(b, limits=settings.image_limits()) for b in case.images],
                options=list(case.options),
                case_id=case.case_id,
                gold_answer=case.answer,
                gold_specialty=case.specialty,
                source="demo",
            )
            r = runtime.ask(req)
            right = r.status == "ok" and is_correct(r.answer or "", case.answer, case.options)
            table.add_row(
                case.case_id,
                case.specialty,
                ", ".join(r.specialties) or "-",
                (r.answer or r.error or "-")[:40],
                case.answer,
                "yes" if right else "no",
                r.answer_status or r.status,
                f"{r.wall_s:.2f}",
            )
    finally:
        runtime.close()
    console.print(table)
    console.print(f"trajectories stored in {settings.database_url}  (see `mmedagent runs list`)")


@runs_app.command("list")
def runs_list(
    limit: int = 20,
    status: Annotated[str | None, typer.Option(help="ok | error")] = None,
) -> None:
    """The newest stored runs."""
    from data.store import TrajectoryStore

    store = TrajectoryStore(load_settings().database_url)
    table = Table()
    table.add_column("run_id", no_wrap=True, min_width=32)
    for col in ("created", "source", "status", "specialists", "answer", "wall s"):
        table.add_column(col)
    for r in store.list_runs(limit=limit, status=status):
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
    from data.store import TrajectoryStore, run_to_dict

    store = TrajectoryStore(load_settings().database_url)
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


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    from data.migrate import current_revision, upgrade
    from data.store import make_engine

    engine = make_engine(load_settings().database_url)
    upgrade(engine)
    console.print(f"database at revision {current_revision(engine)}")


def main() -> None:
    app(prog_name="mmedagent")


if __name__ == "__main__":
    sys.exit(main())

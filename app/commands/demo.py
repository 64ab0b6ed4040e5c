"""``demo``: the learning loop end to end (app/learning_loop.py), or with ``--quick`` a few cases
through the graph."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.commands.common import console, err, fail, load_settings, open_runtime
from app.learning_loop import Arm, LoopOptions, LoopResult, paired_difference, run_loop
from app.policies import RegisterError, policy_name
from app.runtime import CaseRequest
from app.tiny_model import ensure_default_model
from data.answers import is_correct
from data.migrate import DatabaseNotMigrated
from data.synthetic import generate_cases
from graph.protocol import BackendError


def demo(
    quick: Annotated[
        bool, typer.Option("--quick", help="only a few cases through the graph (no training)")
    ] = False,
    n: Annotated[int, typer.Option(help="--quick: number of cases", min=1, max=200)] = 4,
    seed: int = 0,
    cases: Annotated[int, typer.Option(help="clinic cases stored and trained on", min=8)] = 512,
    held_out: Annotated[int, typer.Option(help="held-out cases, before and after", min=10)] = 100,
    steps: Annotated[int | None, typer.Option(help="GRPO steps (default: the recipe's)", min=1)] = None,
) -> None:
    """The learning loop on the tiny offline model: cases asked and stored, the triage trained on
    them with GRPO, held-out cases answered before and after (about 10 minutes on 2 CPU cores)."""
    if quick:
        _quick(n, seed)
        return
    from rl.datasets import DatasetError
    from rl.grpo import TrainError

    settings = load_settings()
    options = LoopOptions(seed=seed, cases=cases, held_out=held_out, steps=steps)
    started = time.perf_counter()
    log_path = settings.home / "loop" / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The trainers' metric lines go to the log; their progress bars (stderr) stay on screen.
    try:
        with log_path.open("w") as log_file, redirect_stdout(log_file), _phases() as phase:
            result = run_loop(settings, options, phase)
    except (DatabaseNotMigrated, BackendError, TrainError, DatasetError, RegisterError, ValueError) as exc:
        fail(f"{exc} (the trainers' log: {log_path})")
    _report(result, time.perf_counter() - started, log_path)


@contextmanager
def _phases() -> Iterator[Callable[[str, int | None], Callable[[], None]]]:
    """Progress bars for the loop's phases (a phase without a total prints its title: the warm-up
    and GRPO draw their own bars)."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:

        def phase(title: str, total: int | None) -> Callable[[], None]:
            if total is None:
                progress.console.print(f"[bold]{title}[/bold]")
                return lambda: None
            task = progress.add_task(title, total=total)
            return lambda: progress.advance(task)

        yield phase


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _ci(ci: list[float] | tuple[float, ...] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _column(arm: Arm, names: dict[int, str]) -> list[str]:
    from rl.evaluation import bootstrap_ci

    report = arm.report
    triage, fmt, acc = report["triage"] or {}, report["format"], report["accuracy"]
    mean, lo, hi = bootstrap_ci(list(arm.triage_hits().values()), 0)
    return [
        f"{_pct(mean)}{_ci((lo, hi))}",
        _pct(triage.get("parsed")),
        f"{_pct(acc['accuracy'])}{_ci(acc['ci95'])}",
        _pct(None if fmt["failure_rate"] is None else 1 - fmt["failure_rate"]),
        " · ".join(names[arm.versions[role]] for role in ("triage", "specialist", "attending")),
    ]


def _report(result: LoopResult, wall_s: float, log_path: Path) -> None:
    from app.commands.common import open_store

    store = open_store()
    try:
        ids = {*result.before.versions.values(), *result.after.versions.values()}
        names = {v: policy_name(store.get_policy(v)) for v in ids}
    finally:
        store.close()
    n = result.options.held_out
    table = Table(title=f"mmedagent demo: the learning loop, seed {result.options.seed}: {n} held-out cases")
    table.add_column("")
    table.add_column("before: base")
    table.add_column(f"after: triage {names[result.after.versions['triage']]}")
    labels = [
        "triage accuracy, 95 % CI",
        "triage parses",
        "answer accuracy, 95 % CI",
        "answer parses",
        "triage · specialist · attending",
    ]
    columns = zip(labels, _column(result.before, names), _column(result.after, names), strict=True)
    for label, before, after in columns:
        table.add_row(label, before, after)
    console.print(table)
    # Soft wrap: the terminal folds long lines, Rich inserts no newline into a path or a figure.
    say = partial(console.print, highlight=False, soft_wrap=True)
    delta, lo, hi = paired_difference(result.before, result.after)
    verdict = "the CI excludes zero" if lo > 0 else "the CI does NOT exclude zero"
    say(
        f"triage accuracy after − before, paired over the {n} cases: {100 * delta:+.1f} pp "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}] (95 % bootstrap CI): {verdict}"
    )
    run = result.trained.run
    t = result.timings
    say(
        f"trained on {run.rows} stored triage steps of the {result.stored_cases} clinic cases asked in "
        f"this run ({run.result.steps} GRPO steps); whole loop {wall_s:.0f} s (warm-up {t['base']:.0f} s, "
        f"clinic {t['clinic']:.0f} s, GRPO {t['train']:.0f} s, held out {t['held_out']:.0f} s)"
    )
    say(f"database:       {result.database}")
    say(
        f"held-out evals: {result.before.report['eval_id']} (before), "
        f"{result.after.report['eval_id']} (after)"
    )
    say(f"training run:   {run.result.output_dir}")
    if result.curve is not None:
        say(f"learning curve: {result.curve}")
    say(f"training log:   {log_path}")
    version = result.trained.version
    serve = f"MMEDAGENT_MODEL={result.base} mmedagent --triage {version.id if version else 'latest'}"
    say("\nNext:")
    say(f"  {serve} ui")
    say("      the clinic's chat on this loop's models, the triage the trained one")
    say("  mmedagent runs list       the stored runs (`mmedagent runs show RUN_ID`: every step)")
    say("  mmedagent policies list   the versions: base and the trained one")
    say("  mmedagent export --role triage --out triage-data   the stored triage steps as a dataset")


def _quick(n: int, seed: int) -> None:
    """A few synthetic-clinic cases through the graph on the configured model (the tiny one by
    default), one table row each."""
    settings = load_settings()
    ensure_default_model(settings, announce=err.print)
    runtime = open_runtime(settings)
    table = Table(title=f"mmedagent demo --quick: {n} synthetic-clinic cases (seed {seed})")
    table.add_column("case", no_wrap=True)
    for col in ("gold specialty", "triage -> specialists", "answer", "gold", "right", "parse", "s"):
        table.add_column(col)
    try:
        for case in generate_cases(n, seed=seed):
            req = CaseRequest.from_synthetic(case, limits=settings.image_limits(), source="demo")
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

"""``eval``: one mode of the system on a benchmark, ``eval compare A B`` of two reports, and
``eval rescore EVAL_ID`` (an eval's report rebuilt from its stored runs by the current scorer)."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.commands.common import console, err, fail, load_settings, open_runtime, open_store
from app.evaluation.claims import DEFAULT_LEASE_S
from app.evaluation.report import EvalError, compare_reports, compare_table, report_tables, rescore_note
from app.evaluation.runner import EvalSpec, evaluate
from app.evaluation.stored import read_report, rescore, write_report
from data.benchmarks import BENCHMARK_NAMES, BenchmarkError

eval_app = typer.Typer(
    invoke_without_command=True,
    help="Evaluate on a benchmark (every case a stored run; rerun to resume; processes on one eval and "
    "database share its cases); `eval compare A B`; `eval rescore EVAL_ID`.",
)


@eval_app.callback()
def eval_command(
    ctx: typer.Context,
    benchmark: Annotated[
        str | None,
        typer.Option(
            "--benchmark",
            "-b",
            help="vqa-rad, slake, pathvqa, omnimedvqa, mmmu-med, medxpertqa-mm or synthetic",
        ),
    ] = None,
    path: Annotated[Path | None, typer.Option(help="folder of the benchmark's local copy")] = None,
    mode: Annotated[str, typer.Option(help="single | vote-N | static | multi")] = "multi",
    limit: Annotated[int | None, typer.Option(min=0, help="only the first N cases")] = None,
    split: Annotated[str | None, typer.Option(help="default: the benchmark's test split")] = None,
    subset: Annotated[str | None, typer.Option(help="OmniMedVQA access/dataset, MMMU subject")] = None,
    language: Annotated[str, typer.Option(help="SLAKE: en, zh or all")] = "en",
    n: Annotated[int, typer.Option(min=0, help="synthetic: number of cases")] = 200,
    seed: Annotated[int, typer.Option(min=0, help="synthetic: seed")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="cases in flight at once")] = 1,
    lease: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="seconds a claimed case stays this process's without renewal: other processes on the "
            "same eval and database take a dead process's cases once its leases lapse",
        ),
    ] = DEFAULT_LEASE_S,
    specialist_panel: Annotated[
        list[str] | None, typer.Option("--panel", help="static: a fixed specialist; repeatable")
    ] = None,
    vote_temperature: Annotated[float, typer.Option(help="vote-N: sampling temperature")] = 1.0,
    triage_model: Annotated[str | None, typer.Option("--triage", help="model for the triage role")] = None,
    specialist_model: Annotated[str | None, typer.Option("--specialist", help="model for specialist")] = None,
    attending_model: Annotated[str | None, typer.Option("--attending", help="model for attending")] = None,
    eval_id: Annotated[str | None, typer.Option(help="default: derived from the eval's settings")] = None,
    out: Annotated[Path | None, typer.Option(help="report folder; default HOME/evals/EVAL_ID")] = None,
) -> None:
    """Evaluate one mode of the system on a benchmark and write report.json + report.md."""
    if ctx.invoked_subcommand is not None:
        return
    if not benchmark:
        fail(f"--benchmark is required: one of {', '.join(BENCHMARK_NAMES)}")
    settings = load_settings()
    models = {"triage": triage_model, "specialist": specialist_model, "attending": attending_model}
    for role, model in models.items():
        if model:
            role_spec = settings.role(role).model_copy(update={"model": model})
            settings = settings.model_copy(update={role: role_spec})
    spec = EvalSpec(
        benchmark=benchmark,
        mode=mode,
        path=path,
        split=split,
        subset=subset,
        language=language,
        limit=limit,
        n=n,
        seed=seed,
        specialists=tuple(specialist_panel or ()),
        vote_temperature=vote_temperature,
    )
    try:
        graph_mode = spec.graph_mode()
        settings = spec.settings_for(settings)
        cases = spec.load_cases()
    except (BenchmarkError, EvalError) as exc:
        fail(str(exc))
    if not cases:
        fail(f"{benchmark}: no cases to evaluate")
    runtime = open_runtime(settings, mode=graph_mode)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task(f"{benchmark} · {mode}", total=len(cases))
            advance = lambda _outcome: progress.advance(task)  # noqa: E731
            report = evaluate(
                runtime, spec, cases, eval_id=eval_id, workers=workers, on_case=advance, lease_s=lease
            )
    except KeyboardInterrupt:
        fail("interrupted: the finished cases are stored; run the same command again to resume", code=130)
    finally:
        runtime.close()
    json_path, md_path = write_report(report, out or settings.home / "evals" / report["eval_id"])
    for table in report_tables(report):
        console.print(table)
    console.print(f"report: {json_path}  {md_path}", highlight=False)


@eval_app.command("compare")
def eval_compare(
    a: Annotated[Path, typer.Argument(help="report.json of A (the reference)")],
    b: Annotated[Path, typer.Argument(help="report.json of B")],
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")] = False,
    force: Annotated[bool, typer.Option("--force", help="compare reports of other scorer versions")] = False,
) -> None:
    """Print B's metrics against A's, with deltas (B − A) and a paired CI on the accuracy delta."""
    try:
        report_a, report_b = read_report(a), read_report(b)
        cmp = compare_reports(report_a, report_b, force=force)
    except EvalError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(cmp, indent=2))
        return
    if report_a["benchmark"] != report_b["benchmark"]:
        err.print(f"note: different benchmarks ({report_a['benchmark']} vs {report_b['benchmark']})")
    console.print(compare_table(cmp))


@eval_app.command("rescore")
def eval_rescore(
    eval_id: Annotated[str, typer.Argument(help="the eval whose stored runs to score again")],
    out: Annotated[Path | None, typer.Option(help="report folder; default HOME/evals/EVAL_ID")] = None,
) -> None:
    """Rebuild an eval's report from its stored runs with the current answer scorer (no model runs)."""
    settings = load_settings()
    with closing(open_store(settings)) as store:
        try:
            report, previous = rescore(store, eval_id, out or settings.home / "evals" / eval_id)
        except EvalError as exc:
            fail(str(exc))
    for table in report_tables(report):
        console.print(table)
    console.print(rescore_note(report, previous), highlight=False, soft_wrap=True)

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
eval_app = typer.Typer(
    invoke_without_command=True,
    help="Evaluate on a benchmark (every case a stored run; rerun to resume); `eval compare A B`.",
)
app.add_typer(eval_app, name="eval")

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line reason and exit (2 = bad input, 1 = the run itself failed)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Per-role policy choices from the global --triage/--specialist/--attending options.
_policy_choices: dict[str, dict[str, str]] = {}


def load_settings() -> Settings:
    try:
        return Settings(**_policy_choices)
    except Exception as exc:  # pydantic's errors are long; the first line says what is wrong
        fail(f"invalid configuration: {str(exc).splitlines()[0]}")


def open_runtime(settings: Settings, mode=None):  # -> Runtime (imported lazily: torch is slow to import)
    from app.runtime import Runtime
    from data.migrate import DatabaseNotMigrated
    from graph.protocol import BackendError

    ensure_default_model(settings)
    try:
        return Runtime(settings, mode=mode)
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


_POLICY_HELP = 'serve this registered policy version for the role: "latest" or its id'


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    triage: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
    specialist: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
    attending: Annotated[str | None, typer.Option(help=_POLICY_HELP)] = None,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    chosen = {"triage": triage, "specialist": specialist, "attending": attending}
    _policy_choices.clear()
    _policy_choices.update({role: {"policy": p} for role, p in chosen.items() if p is not None})


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


@runs_app.command("list")
def runs_list(
    limit: int = 20,
    status: Annotated[str | None, typer.Option(help="ok | error")] = None,
) -> None:
    """The newest stored runs."""
    store = open_store()
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
    from data.store import run_to_dict

    store = open_store()
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


@app.command("ui")
def ui_command(
    host: Annotated[
        str | None, typer.Option(help="default 127.0.0.1; any other host needs a login (see README)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="default 7860")] = None,
) -> None:
    """Serve the web app (chat, traces, trajectories) on this machine."""
    from ui.app import build_app, launch, login
    from ui.safety import UnsafeBindError, check_bind

    settings = load_settings()
    host = host or settings.ui.host
    try:  # checked before the models load: a refused bind should fail fast
        auth = login(settings)
        check_bind(host, auth)
    except (ValueError, UnsafeBindError) as exc:
        fail(str(exc))
    runtime = open_runtime(settings)
    port = port or settings.ui.port
    login_note = f"login required (user {auth[0]})" if auth else "no login: reachable from this machine only"
    console.print(
        f"mmedagent UI on http://{host}:{port}  ({login_note}); Ctrl-C stops it",
        highlight=False,
        soft_wrap=True,
    )
    try:
        launch(build_app(runtime), settings, host=host, port=port, quiet=True)
    finally:
        runtime.close()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema."""
    from data.migrate import current_revision, upgrade
    from data.store import make_engine

    engine = make_engine(load_settings().database_url)
    upgrade(engine)
    console.print(f"database at revision {current_revision(engine)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. 0001")]) -> None:
    """Migrate the database back to an older schema (drops what that schema lacks)."""
    from alembic.util import CommandError

    from data.migrate import current_revision, downgrade
    from data.store import make_engine

    engine = make_engine(load_settings().database_url)
    try:
        downgrade(engine, revision)
    except CommandError as exc:
        fail(str(exc))
    console.print(f"database at revision {current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the one this version needs (exit 1 when behind)."""
    from data.migrate import current_revision, head_revision
    from data.store import make_engine

    engine = make_engine(load_settings().database_url)
    current, head = current_revision(engine), head_revision()
    console.print(f"database at revision {current or 'none'}; this version needs {head}", highlight=False)
    if current != head:
        fail("run `mmedagent db upgrade`", code=1)


def open_store(settings: Settings | None = None):  # -> TrajectoryStore
    """The trajectory store; exits 2 with the upgrade hint when the schema is not current."""
    from data.migrate import DatabaseNotMigrated
    from data.store import TrajectoryStore

    settings = settings or load_settings()
    try:
        return TrajectoryStore(settings.database_url, store_pixels=settings.store_pixels)
    except DatabaseNotMigrated as exc:
        fail(str(exc))


@app.command()
def feedback(
    run_id: str,
    correct: Annotated[
        bool | None, typer.Option("--correct/--wrong", help="the clinician's verdict on the final answer")
    ] = None,
    answer: Annotated[str | None, typer.Option(help="the right answer, when the run's was wrong")] = None,
    note: Annotated[str | None, typer.Option(help="free-text comment")] = None,
) -> None:
    """Record a clinician's verdict on a run's answer (appended: earlier verdicts are kept)."""
    if correct is None:
        fail("give the verdict: --correct or --wrong")
    store = open_store()
    try:
        reward_id = store.add_feedback(run_id, correct=correct, answer=answer, note=note)
    except KeyError:
        fail(f"no run {run_id!r}")
    finally:
        store.close()
    verdict = "correct" if correct else "wrong"
    console.print(f"feedback #{reward_id} on run {run_id}: {verdict}", highlight=False)


@app.command("export")
def export_command(
    role: Annotated[str, typer.Option(help="triage | specialist | attending")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (files are named by role)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="parquet | jsonl | hf")] = "parquet",
    since: Annotated[
        str | None, typer.Option(help="runs since an ISO date/datetime (UTC) or a look-back: 24h, 7d, 2w")
    ] = None,
    status: Annotated[str | None, typer.Option(help="only runs with this status: ok | error")] = None,
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from data.export import ExportError, ExportFilter, count_rows, export, parse_since

    if status not in (None, "ok", "error"):
        fail(f"--status must be ok or error, not {status!r}")
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from data.benchmarks import BENCHMARK_NAMES, BenchmarkError
    from rl.evaluate import EvalError, EvalSpec, evaluate, write_report
    from rl.report import report_tables

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
            report = evaluate(runtime, spec, cases, eval_id=eval_id, workers=workers, on_case=advance)
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
) -> None:
    """Print B's metrics against A's, with deltas (B − A) and a paired CI on the accuracy delta."""
    from rl.evaluate import EvalError, read_report
    from rl.report import compare_reports, compare_table

    try:
        report_a, report_b = read_report(a), read_report(b)
    except EvalError as exc:
        fail(str(exc))
    cmp = compare_reports(report_a, report_b)
    if as_json:
        print(json.dumps(cmp, indent=2))
        return
    if report_a["benchmark"] != report_b["benchmark"]:
        err.print(f"note: different benchmarks ({report_a['benchmark']} vs {report_b['benchmark']})")
    console.print(compare_table(cmp))


policies_app = typer.Typer(no_args_is_help=True, help="Registered policy versions per role.")
app.add_typer(policies_app, name="policies")


@app.command()
def train(
    role: Annotated[str, typer.Option(help="triage | attending")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the run and the trained policy")],
    from_db: Annotated[
        bool, typer.Option("--from-db", help="train on the store's gold-labelled runs")
    ] = False,
    data: Annotated[Path | None, typer.Option(help="a `mmedagent export` folder to train on")] = None,
    synthetic: Annotated[int, typer.Option(min=0, help="train on N synthetic-clinic cases")] = 0,
    curriculum: Annotated[
        bool | None,
        typer.Option("--curriculum/--no-curriculum", help="easy -> medium -> hard, or all mixed [recipe's]"),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="YAML recipe (rl/recipes/); default: the paper's settings")
    ] = None,
    warmup_steps: Annotated[
        int, typer.Option(min=0, help="random-label SFT format warm-up steps before GRPO")
    ] = 0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="cap on GRPO optimizer steps")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="overrides the recipe")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="overrides the recipe")] = None,
    register: Annotated[bool, typer.Option(help="register the result as a new policy version")] = True,
) -> None:
    """GRPO-train a role's policy (curriculum-ordered by default) and register it as a new version."""
    from app.backends.factory import apply_policy_choices
    from app.policies import resolve_policy, weights_hash
    from graph.protocol import BackendError
    from rl.datasets import (
        DatasetError,
        rows_from_dir,
        rows_from_store,
        synthetic_attending_rows,
        synthetic_triage_rows,
    )
    from rl.grpo import merge_adapter, train_grpo
    from rl.grpo_config import GRPORecipe
    from rl.sft import format_warmup

    if role not in ("triage", "attending"):
        fail(f"--role must be triage or attending, not {role!r}")
    if sum([from_db, data is not None, synthetic > 0]) != 1:
        fail("give exactly one data source: --from-db, --data DIR or --synthetic N")
    out = out.resolve()  # the registered policy must load from any working directory
    if (out / "policy").exists():
        fail(f"{out / 'policy'} already exists: choose another --out")
    settings = load_settings()
    ensure_default_model(settings)
    store = open_store(settings)
    try:
        try:
            settings, chosen = apply_policy_choices(settings, store)
        except BackendError as exc:
            fail(str(exc))
        model, adapter = settings.model_for(role), settings.role(role).adapter
        parent = chosen.get(role) or resolve_policy(store, role, model, adapter).id
        try:
            if from_db:
                rows = rows_from_store(store, role)
            elif data is not None:
                rows = rows_from_dir(data, role)
            else:
                make = synthetic_triage_rows if role == "triage" else synthetic_attending_rows
                rows = make(synthetic, seed=seed or 0)
        except DatasetError as exc:
            fail(str(exc))
        if not rows:
            fail(f"no usable {role} rows (runs need a gold label and stored pixels)")
        overrides = {
            "role": role, "curriculum": curriculum, "max_steps": max_steps,
            "learning_rate": learning_rate, "seed": seed,
        }  # fmt: skip
        try:
            rec = (
                GRPORecipe.from_yaml(recipe, **overrides)
                if recipe
                else GRPORecipe(**{k: v for k, v in overrides.items() if v is not None})
            )
        except (OSError, ValueError, TypeError) as exc:
            fail(f"bad recipe: {exc}")
        start = merge_adapter(model, adapter, out / "start") if adapter else model
        if warmup_steps:
            err.print(f"format warm-up: {warmup_steps} SFT steps on random labels ...")
            start = str(format_warmup(start, rows, role, out / "warmup", steps=warmup_steps).policy_path)
        rec.model = start
        order = "curriculum" if rec.curriculum else "mixed"
        err.print(f"GRPO on {len(rows)} {role} rows from {start} ({order})")
        try:
            result = train_grpo(rec, rows, out)
        except ValueError as exc:  # e.g. rows without difficulty under --curriculum
            fail(str(exc))
        served_model, served_adapter = result.serving
        console.print(
            f"trained {role} policy: {result.policy_path}  ({result.steps} steps, {result.wall_s:.0f} s, "
            f"final reward {result.metrics.get('final_reward', float('nan')):.3f})",
            highlight=False,
        )
        if register:
            source = "store" if from_db else str(data) if data else f"synthetic:{synthetic}"
            version = store.register_policy(
                role,
                served_model,
                weights_hash(served_model, served_adapter),
                adapter_path=served_adapter,
                parent_id=parent,
                training_run={
                    **result.summary(),
                    "rows": len(rows),
                    "data": source,
                    "warmup_steps": warmup_steps,
                },
            )
            console.print(
                f"registered {role} policy version {version.id} (parent {parent}); "
                f"serve it with `mmedagent --{role} latest ...`",
                highlight=False,
            )
    finally:
        store.close()


@policies_app.command("list")
def policies_list(
    role: Annotated[str | None, typer.Option(help="triage | specialist | attending")] = None,
) -> None:
    """Every registered policy version (newest last), with its training run."""
    store = open_store()
    try:
        rows = store.list_policies(role)
    finally:
        store.close()
    table = Table()
    for col in ("id", "role", "created", "parent", "model", "adapter", "trained"):
        table.add_column(col)
    for p in rows:
        run = p.training_run or {}
        trained = f"{run.get('trainer', '')} {run.get('steps', '')} steps" if run else "-"
        table.add_row(
            str(p.id),
            p.role,
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(p.parent_id or "-"),
            p.base_model,
            p.adapter_path or "-",
            trained,
        )
    console.print(table)


def main() -> None:
    app(prog_name="mmedagent")


if __name__ == "__main__":
    sys.exit(main())

"""The training pipeline behind ``mmedagent train`` and ``python -m rl.grpo``: one set of options.

Both entries parse the options of :func:`build_parser`; ``mmedagent train`` adds the store, the
serving configuration (the model a role serves, its adapter) and registers the result as a policy
version, while ``python -m rl.grpo`` (the multi-process launch) trains only. Several processes:

    torchrun --nproc_per_node 2 -m rl.grpo --role attending --synthetic 48 --recipe tiny-attending \
        --model MODEL --out DIR

``torchrun`` starts one process per ``--nproc_per_node`` on CPU (gloo) and on GPUs (nccl);
``accelerate launch --num_processes N`` starts N on GPUs but a single one with ``--cpu``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.schema import TRAINABLE_ROLES
from rl.datasets import (
    REWARD_SOURCES,
    Row,
    as_table,
    iter_attending_warmup_rows,
    iter_rows_from_dir,
    iter_rows_from_store,
    iter_synthetic_attending_rows,
    iter_synthetic_triage_rows,
    write_rows,
)
from rl.grpo import GRPOResult, merge_adapter, train_grpo
from rl.grpo_config import GRPORecipe, recipe_path

if TYPE_CHECKING:
    from data.store import TrajectoryStore

log = logging.getLogger(__name__)

TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}
RUN_PLAN_FILE = "run_plan.json"  # the options and the frozen row list, written when a run starts


class TrainError(ValueError):
    """The options cannot make a training run (one line for the user)."""


def build_parser(prog: str, *, registering: bool = False) -> argparse.ArgumentParser:
    """The options of a training run; ``registering`` adds ``--register/--no-register``."""
    p = argparse.ArgumentParser(
        prog=prog, description="GRPO-train a role's policy (curriculum for the attending)."
    )
    p.add_argument("--role", required=True, choices=TRAINABLE_ROLES)
    p.add_argument("--out", "-o", required=True, type=Path, help="folder for the run and the trained policy")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from-db", action="store_true", help="train on the store's gold-labelled runs")
    source.add_argument("--data", type=Path, help="a `mmedagent export` folder to train on")
    source.add_argument("--synthetic", type=int, default=0, metavar="N", help="N synthetic-clinic cases")
    p.add_argument(
        "--reward-source", choices=REWARD_SOURCES, default="gold",
        help="--from-db labels: gold, the latest clinician verdict, or both (gold, else the clinician's)",
    )  # fmt: skip
    p.add_argument("--recipe", help="recipe name (rl/recipes/: tiny-attending, ...) or YAML path")
    p.add_argument("--model", help="model to start from [the recipe's, else the role's served model]")
    p.add_argument(
        "--curriculum", action=argparse.BooleanOptionalAction, default=None,
        help="easy -> medium -> hard, or all mixed [the recipe's; attending: curriculum, triage: mixed]",
    )  # fmt: skip
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="random-label SFT format warm-up steps first (synthetic attending: on the clinic's own cases)",
    )
    p.add_argument("--max-steps", type=int, help="cap on GRPO optimizer steps (cuts the stage plan)")
    p.add_argument("--learning-rate", type=float, help="overrides the recipe")
    p.add_argument("--seed", type=int, help="overrides the recipe")
    p.add_argument("--report-to", choices=["tensorboard", "trackio", "wandb", "none"], help="[the recipe's]")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last checkpoint: same options, same rows in the same order",
    )  # fmt: skip
    if registering:
        p.add_argument(
            "--register", action=argparse.BooleanOptionalAction, default=True,
            help="register the result as a new policy version",
        )  # fmt: skip
    return p


@dataclass
class TrainRun:
    """A finished run: the result, what it trained on, and where it started from."""

    result: GRPOResult
    rows: int
    source: str
    start: str


def check_tracker(report_to: str | None) -> None:
    """A one-line error when the chosen experiment tracker is not installed."""
    if report_to and report_to != "none" and importlib.util.find_spec(TRACKERS[report_to]) is None:
        raise TrainError(
            f"--report-to {report_to}: the {report_to} package is not installed (pip install {report_to})"
        )


def load_recipe(opts: argparse.Namespace) -> GRPORecipe:
    """The recipe (the paper's defaults without one) with the command line's overrides."""
    overrides = {
        "role": opts.role,
        "curriculum": opts.curriculum,
        "max_steps": opts.max_steps,
        "learning_rate": opts.learning_rate,
        "seed": opts.seed,
        "report_to": None if opts.report_to is None else [opts.report_to],
    }
    try:
        if opts.recipe:
            return GRPORecipe.from_yaml(recipe_path(opts.recipe), **overrides)
        return GRPORecipe(**{k: v for k, v in overrides.items() if v is not None})
    except (OSError, ValueError, TypeError) as exc:
        raise TrainError(f"bad recipe: {exc}") from exc


def source_name(opts: argparse.Namespace) -> str:
    if opts.from_db:
        return "store" if opts.reward_source == "gold" else f"store ({opts.reward_source} labels)"
    return str(opts.data) if opts.data is not None else f"synthetic:{opts.synthetic}"


def load_rows(opts: argparse.Namespace, store: TrajectoryStore | None = None) -> Any:
    """The rows the options name (exactly one source), streamed to a memory-mapped table
    (rl.datasets.write_rows): host memory does not grow with their number."""
    if sum([bool(opts.from_db), opts.data is not None, opts.synthetic > 0]) != 1:
        raise TrainError("give exactly one data source: --from-db, --data DIR or --synthetic N")
    if opts.from_db:
        if store is None:
            raise TrainError("--from-db needs the store (`mmedagent train`)")
        rows = iter_rows_from_store(store, opts.role, reward_source=opts.reward_source)
    elif opts.data is not None:
        rows = iter_rows_from_dir(opts.data, opts.role)
    else:
        make = iter_synthetic_triage_rows if opts.role == "triage" else iter_synthetic_attending_rows
        rows = make(opts.synthetic, seed=opts.seed or 0)
    table = write_rows(rows)
    if not len(table):
        raise TrainError(f"no usable {opts.role} rows (runs need a gold label and stored pixels)")
    return table


def run_training(
    opts: argparse.Namespace,
    rows: Iterable[Row] | Any,
    *,
    model: str | None = None,
    adapter: str | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainRun:
    """Warm up (optionally) and GRPO-train from ``--model``, else ``model`` (what the role serves,
    ``adapter`` merged in first: ``mmedagent train``), else the recipe's model. ``rows``: a table
    (:func:`load_rows`) or any iterable of rows, written to one first."""
    from accelerate import PartialState

    from rl.sft import format_warmup

    check_tracker(opts.report_to)
    out = Path(opts.out).resolve()  # the registered policy must load from any working directory
    if (out / "policy").exists():
        raise TrainError(f"{out / 'policy'} already exists: choose another --out")
    table = as_table(rows)
    if opts.resume:
        return _resume(out, table, callbacks)
    recipe = load_recipe(opts)
    start = opts.model or model or recipe.model
    if not start:
        raise TrainError("no model to start from: give --model or a recipe with `model:`")
    state = PartialState()
    if adapter and not opts.model:
        with state.main_process_first():  # one process writes the merged start, the others read it
            if state.is_main_process:
                merge_adapter(start, adapter, out / "start")
        start = str(out / "start")
    if opts.warmup_steps:
        log.info("format warm-up: %d SFT steps on random labels", opts.warmup_steps)
        start = str(
            format_warmup(
                start, warmup_rows(opts, table), opts.role, out / "warmup", steps=opts.warmup_steps
            ).policy_path
        )
    recipe.model = start
    if state.is_main_process:
        plan = {"options": _jsonable(opts), "start": start, "rows": [row_key(r) for r in table]}
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_PLAN_FILE).write_text(json.dumps(plan, indent=1))
    train_rows, eval_rows = split_eval(table, recipe.eval_fraction, recipe.seed)
    result = train_grpo(recipe, train_rows, out, callbacks=callbacks, eval_rows=eval_rows)
    return TrainRun(result, len(table), source_name(opts), start)


def warmup_rows(opts: argparse.Namespace, table: Any) -> Any:
    """The format warm-up's rows: for a synthetic attending run the clinic's own warm-up cases
    (:func:`iter_attending_warmup_rows`: reading learned, not the training rows by heart), else
    the training rows."""
    if opts.synthetic and opts.role == "attending":
        return write_rows(iter_attending_warmup_rows(opts.seed or 0))
    return table


def split_eval(table: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, eval) selections of ``table``: ``fraction`` of its rows held out at random (seeded),
    none when 0."""
    import random

    n = len(table)
    held = (
        set(random.Random(f"eval|{seed}").sample(range(n), max(1, round(n * fraction))))
        if fraction > 0
        else set()
    )
    return table.select([i for i in range(n) if i not in held]), table.select(sorted(held))


def row_key(row: Row) -> str:
    """A row's identity for freezing a run's row list: its prompt, label, case and image bytes."""
    h = hashlib.sha256()
    label = {k: row.get(k) for k in ("case_id", "answer", "specialty", "options")}
    h.update(json.dumps([row["prompt"], label], sort_keys=True, default=str).encode())
    for image in row["images"]:
        h.update(hashlib.sha256(image).digest())
    return h.hexdigest()[:32]


def resume_options(out: Path) -> argparse.Namespace:
    """The options a run in ``out`` started with (``--resume`` continues with exactly these)."""
    path = Path(out).resolve() / RUN_PLAN_FILE
    if not path.is_file():
        raise TrainError(f"{out} holds no run to resume ({RUN_PLAN_FILE} missing)")
    saved = json.loads(path.read_text())["options"]
    for key in ("out", "data"):
        if saved.get(key) is not None:
            saved[key] = Path(saved[key])
    return argparse.Namespace(**{**saved, "resume": True})


def _resume(out: Path, table: Any, callbacks: Sequence[Any]) -> TrainRun:
    """Continue the run in ``out`` on its frozen rows (found in ``table``, in their frozen order)."""
    plan = json.loads((out / RUN_PLAN_FILE).read_text())
    opts = resume_options(out)
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise TrainError(f"{out} holds no checkpoint to resume from (the recipe's save_steps saves them)")
    by_key: dict[str, list[int]] = {}
    for i, row in enumerate(table):
        by_key.setdefault(row_key(row), []).append(i)
    indices: list[int] = []
    for key in plan["rows"]:
        if not by_key.get(key):
            raise TrainError(f"a row of the run is gone from its source ({key}): it cannot resume exactly")
        indices.append(by_key[key].pop(0))
    frozen = table.select(indices)
    recipe = load_recipe(opts)
    recipe.model = plan["start"]
    recipe.resume_from_checkpoint = str(checkpoints[-1])
    log.info("resuming from %s on the run's %d frozen rows", checkpoints[-1].name, len(frozen))
    train_rows, eval_rows = split_eval(frozen, recipe.eval_fraction, recipe.seed)
    result = train_grpo(recipe, train_rows, out, callbacks=callbacks, eval_rows=eval_rows)
    return TrainRun(result, len(frozen), source_name(opts), plan["start"])


def _jsonable(opts: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rl.grpo`` / ``torchrun -m rl.grpo``: train without registering."""
    import os

    opts = build_parser("python -m rl.grpo").parse_args(argv)
    if opts.resume:
        opts = resume_options(opts.out)
    main_process = os.environ.get("RANK", "0") == "0"  # the others log warnings only
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        run = run_training(opts, load_rows(opts))
    except (TrainError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    r = run.result
    log.info("policy saved to %s after %d steps (%.0f s)", r.policy_path, r.steps, r.wall_s)
    log.info("stage log: %s", json.dumps([(e["step"], e["stage"], e["stage_by_rank"]) for e in r.stage_log]))

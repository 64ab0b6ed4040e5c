"""``train`` (GRPO on a role's policy) and ``policies list`` (the registered versions)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.backends.factory import apply_policy_choices
from app.commands.common import console, err, fail, load_settings, open_store
from app.policies import resolve_policy, weights_hash
from app.tiny_model import ensure_default_model
from graph.protocol import BackendError

if TYPE_CHECKING:
    from data.store import TrajectoryStore
    from rl.train import TrainRun

policies_app = typer.Typer(no_args_is_help=True, help="Registered policy versions per role.")

# `mmedagent train` takes the options of rl/train.py's parser (the multi-process launch
# `torchrun -m rl.grpo` reads the same), so typer passes them through unparsed.
TRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """GRPO-train a role's policy (curriculum for the attending) and register it as a new version.

    Options: `mmedagent train --help` (the same as `python -m rl.grpo`, plus --register/--no-register).
    """
    from rl.datasets import DatasetError
    from rl.train import TrainError, build_parser, load_rows, resume_options, run_training

    opts = build_parser("mmedagent train", registering=True).parse_args(ctx.args)
    if opts.resume:
        try:
            opts = argparse.Namespace(**{**vars(resume_options(opts.out)), "register": opts.register})
        except TrainError as exc:
            fail(str(exc))
    logging.getLogger("rl").setLevel(logging.INFO)  # the stage plan, and what max_steps cut
    settings = load_settings()
    ensure_default_model(settings, announce=err.print)
    store = open_store(settings)
    try:
        try:
            settings, chosen = apply_policy_choices(settings, store)
        except BackendError as exc:
            fail(str(exc))
        model, adapter = settings.model_for(opts.role), settings.role(opts.role).adapter
        parent = (
            None
            if opts.model
            else chosen.get(opts.role) or resolve_policy(store, opts.role, model, adapter).id
        )
        try:
            run = run_training(opts, load_rows(opts, store), model=model, adapter=adapter)
        except (TrainError, DatasetError, ValueError) as exc:  # e.g. rows without difficulty
            fail(str(exc))
        result = run.result
        console.print(
            f"trained {opts.role} policy: {result.policy_path}  ({result.steps} steps, "
            f"{result.wall_s:.0f} s, final reward {result.metrics.get('final_reward', float('nan')):.3f})",
            highlight=False,
        )
        if opts.register:
            _register(store, opts, run, parent)
    finally:
        store.close()


def _register(store: TrajectoryStore, opts: argparse.Namespace, run: TrainRun, parent: int | None) -> None:
    served_model, served_adapter = run.result.serving
    version = store.register_policy(
        opts.role,
        served_model,
        weights_hash(served_model, served_adapter),
        adapter_path=served_adapter,
        parent_id=parent,
        training_run={
            **run.result.summary(),
            "rows": run.rows,
            "data": run.source,
            "warmup_steps": opts.warmup_steps,
            "start": run.start,
        },
    )
    console.print(
        f"registered {opts.role} policy version {version.id} (parent {parent}); "
        f"serve it with `mmedagent --{opts.role} latest ...`",
        highlight=False,
    )


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

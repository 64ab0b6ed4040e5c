"""``train`` (GRPO on a role's policy) and ``policies list`` (the registered versions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from app.backends.factory import apply_policy_choices
from app.commands.common import console, err, fail, load_settings, open_store
from app.policies import resolve_policy, weights_hash
from app.tiny_model import ensure_default_model
from graph.protocol import BackendError
from rl.datasets import (
    DatasetError,
    rows_from_dir,
    rows_from_store,
    synthetic_attending_rows,
    synthetic_triage_rows,
)
from rl.grpo_config import GRPORecipe

policies_app = typer.Typer(no_args_is_help=True, help="Registered policy versions per role.")


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
    # deferred: torch, transformers and TRL take seconds to import
    from rl.grpo import merge_adapter, train_grpo
    from rl.sft import format_warmup

    if role not in ("triage", "attending"):
        fail(f"--role must be triage or attending, not {role!r}")
    if sum([from_db, data is not None, synthetic > 0]) != 1:
        fail("give exactly one data source: --from-db, --data DIR or --synthetic N")
    out = out.resolve()  # the registered policy must load from any working directory
    if (out / "policy").exists():
        fail(f"{out / 'policy'} already exists: choose another --out")
    settings = load_settings()
    ensure_default_model(settings, announce=err.print)
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

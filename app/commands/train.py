"""``train`` (GRPO on a role's policy) and ``policies list`` (the registered versions)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from app.commands.common import console, err, fail, load_settings, open_store
from app.policies import RegisterError, listed_name, register_run
from app.tiny_model import ensure_default_model
from app.training import train_and_register
from data.schema import PolicyVersion
from graph.protocol import BackendError

if TYPE_CHECKING:
    from data.store import TrajectoryStore

policies_app = typer.Typer(no_args_is_help=True, help="Registered policy versions per role.")

# `mmedagent train` takes the options of rl/grpo.py's parser (the multi-process launch
# `torchrun -m rl.grpo` reads the same), so typer passes them through unparsed.
TRAIN_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """GRPO-train a role's policy (curriculum for the attending) and register it as a new version.

    Options: `mmedagent train --help` (the same as `python -m rl.grpo`; --no-register skips the
    registration). Without --model it starts from what the role serves.
    """
    from rl.datasets import DatasetError
    from rl.grpo import TrainError, check_options, parse_args, resume_spec

    try:
        spec = parse_args(ctx.args, prog="mmedagent train")
        if spec.script.resume:
            spec = resume_spec(spec.out, register=spec.script.register)
        check_options(spec)
    except TrainError as exc:
        fail(str(exc))
    logging.getLogger("rl").setLevel(logging.INFO)  # the stage plan, and what max_steps cut
    settings = load_settings()
    ensure_default_model(settings, announce=err.print)
    store = open_store(settings)
    try:
        try:
            trained = train_and_register(spec, settings, store)
        except BackendError as exc:  # an unknown --ROLE version
            fail(str(exc))
        except (TrainError, DatasetError, RegisterError, ValueError) as exc:  # e.g. rows without difficulty
            fail(str(exc))
        result = trained.run.result
        console.print(
            f"trained {spec.script.role} policy: {result.policy_path}  ({result.steps} steps, "
            f"{result.wall_s:.0f} s, final reward {result.metrics.get('final_reward', float('nan')):.3f})",
            highlight=False,
        )
        if trained.version is not None:
            _announce(trained.version)
    finally:
        store.close()


def _announce(version: PolicyVersion) -> None:
    console.print(
        f"registered {version.role} policy version {version.id} (parent {version.parent_id}); "
        f"serve it with `mmedagent --{version.role} latest ...`",
        highlight=False,
    )


@policies_app.command("register")
def policies_register(
    run_dir: Annotated[Path, typer.Argument(help="a finished run's --out (e.g. of torchrun -m rl.grpo)")],
    parent: Annotated[int | None, typer.Option(help="the version it was trained from")] = None,
) -> None:
    """Register a finished training run (its training_run.json) as a new policy version."""
    store = open_store()
    try:
        if parent is not None:
            _get_policy(store, parent)
        try:
            version = register_run(store, run_dir, parent)
        except RegisterError as exc:
            fail(str(exc))
        _announce(version)
    finally:
        store.close()


def _trained(run: dict) -> str:
    """One line: how a version was trained (or "-")."""
    if not run:
        return "-"
    order = "curriculum" if run.get("curriculum", True) else "mixed"
    final = run.get("metrics", {}).get("final_reward")
    reward = f", reward {final:.3f}" if isinstance(final, int | float) else ""
    return f"{run.get('trainer', '')} {run.get('steps', '')} steps, {order}, {run.get('data', '?')}{reward}"


@policies_app.command("list")
def policies_list(
    role: Annotated[str | None, typer.Option(help="triage | specialist | attending")] = None,
) -> None:
    """Every registered policy version (newest last), with the essentials of its training run."""
    store = open_store()
    try:
        rows = store.list_policies(role)
    finally:
        store.close()
    table = Table()
    # "vN" is version id N (`--attending N`); an untrained checkpoint is "base", with its id.
    for col in ("version", "role", "created", "parent", "model", "adapter"):
        table.add_column(col)
    table.add_column("trained", min_width=16)  # its words stay whole in an 80-column terminal
    for p in rows:
        table.add_row(
            listed_name(p),
            p.role,
            p.created_at.strftime("%Y-%m-%d %H:%M"),
            str(p.parent_id or "-"),
            p.base_model,
            p.adapter_path or "-",
            _trained(p.training_run or {}),
        )
    console.print(table)


def _get_policy(store: TrajectoryStore, version: int) -> PolicyVersion:
    policy = store.get_policy(version)
    if policy is None:
        fail(f"no policy version {version} (see `mmedagent policies list`)")
    return policy


@policies_app.command("show")
def policies_show(version: Annotated[int, typer.Argument(help="policy version id")]) -> None:
    """One version: data source, rows per stage, curriculum or mixed, final reward by difficulty, parent."""
    store = open_store()
    try:
        p = _get_policy(store, version)
    finally:
        store.close()
    run = p.training_run or {}
    lines = [
        f"policy version {p.id} ({p.role}), created {p.created_at:%Y-%m-%d %H:%M:%S}, "
        f"parent {p.parent_id or '-'}",
        f"model    {p.base_model}",
        f"adapter  {p.adapter_path or '-'}",
    ]
    if run:
        order = "curriculum" if run.get("curriculum", True) else "mixed"
        lines += [
            f"data     {run.get('data', '?')}: {run.get('rows', '?')} rows, {order}, "
            f"loss {run.get('loss_type', '?')}",
            f"batch    {run.get('global_batch', '?')} completions a step on "
            f"{run.get('world_size', '?')} process(es); {run.get('steps', '?')} steps "
            f"in {run.get('wall_s', '?')} s",
        ]
        for st in run.get("stages", []):
            lines.append(
                f"stage    {st['stage']:<7} {st.get('rows', '?')} rows, {st['steps']} steps, "
                f"beta {st['beta']:g}, gamma {st['gamma']:g}"
            )
        if run.get("cut_by_max_steps"):
            lines.append(f"cut      by max_steps: {'; '.join(run['cut_by_max_steps'])}")
        final = run.get("final_reward_by_difficulty") or {}
        if final:
            lines.append("reward   " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))
    console.print("\n".join(lines), highlight=False)


@policies_app.command("merge")
def policies_merge(
    version: Annotated[int, typer.Argument(help="policy version id (a LoRA adapter)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the merged full checkpoint")],
) -> None:
    """Fold a version's LoRA adapter into its base model: a full checkpoint for servers without adapters."""
    from rl.models import merge_adapter

    store = open_store()
    try:
        p = _get_policy(store, version)
    finally:
        store.close()
    if not p.adapter_path:
        fail(f"policy version {version} is a full checkpoint already: {p.base_model}")
    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty: choose another --out")
    merged = merge_adapter(p.base_model, p.adapter_path, out)
    console.print(f"merged policy version {version} into {merged}", highlight=False)

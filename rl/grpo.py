"""A GRPO training run, top to bottom: ``mmedagent train`` and ``python -m rl.grpo`` (under
``torchrun``, one process per GPU) parse the same options and run the same steps.

1. :func:`parse_args`: TRL's parser over the run's arguments (:class:`TrainArguments`), the recipe
   (rl/recipe.py ``GRPORecipe``) and the model arguments (``PolicyModelConfig``). ``--recipe NAME``
   (or ``--config PATH``) reads a YAML recipe; any field of the three can be set there or on the
   command line (``--learning_rate 1e-6``, ``--use_peft false``, ``--format_sft '{"max_steps": 0}'``).
2. :func:`load_rows`: the rows of exactly one source (the store, an export folder, the synthetic
   clinic), written to a memory-mapped table.
3. :func:`train`: the run's rows frozen in ``run_plan.json`` (``--resume`` continues on exactly
   those), the start prepared (the served adapter merged in; the recipe's format SFT), held-out
   rows set aside, then :func:`train_grpo`: curriculum-ordered rows, the trainer
   (rl/trainer.py), the policy and ``training_run.json`` saved in ``--out``.

``mmedagent train`` then registers the policy as a new version; after a ``torchrun`` run,
``mmedagent policies register OUT`` does (docs/training-at-scale.md: several GPUs and hosts).

    torchrun --nproc_per_node 8 -m rl.grpo --recipe qwen2.5-vl-7b-attending --data data/att --out runs/att
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from data.schema import TRAINABLE_ROLES
from rl.batching import GenerationBatch
from rl.curriculum import cap_plan, describe_plan, ordered_dataset, stage_spans
from rl.datasets import (
    Row,
    as_table,
    iter_attending_warmup_rows,
    iter_rows_from_dir,
    iter_rows_from_store,
    iter_synthetic_attending_rows,
    iter_synthetic_triage_rows,
)
from rl.processes import check_sharding, host_table, run_state
from rl.recipe import GRPORecipe, PolicyModelConfig, recipe_path

if TYPE_CHECKING:
    from data.store import TrajectoryStore
    from rl.trainer import CurriculumGRPOTrainer

log = logging.getLogger(__name__)

POLICY_DIR = "policy"
RUN_FILE = "training_run.json"  # the finished run: what `mmedagent policies register` reads
PLAN_FILE = "run_plan.json"  # the options, the start and the frozen row list, written when a run starts
RECIPE_COPY = "recipe.yaml"  # the recipe as the run read it (a resumed run reads this copy)
TRACKERS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


class TrainError(ValueError):
    """The options cannot make a training run (one line for the user)."""


@dataclass
class TrainArguments:
    """The run's own arguments (the recipe and the model arguments hold the rest)."""

    role: Literal["triage", "attending"] | None = field(default=None, metadata={"help": "the role to train"})
    from_db: bool = field(default=False, metadata={"help": "train on the store's labelled runs"})
    data: str | None = field(default=None, metadata={"help": "a `mmedagent export` folder to train on"})
    synthetic: int = field(default=0, metadata={"help": "N synthetic-clinic cases"})
    reward_source: Literal["gold", "clinician", "both"] = field(
        default="gold",
        metadata={"help": "--from_db labels: gold, the latest verdict, or both (gold, else the verdict)"},
    )
    since: str | None = field(
        default=None,
        metadata={"help": "--from_db: only runs stored since then (ISO date or datetime, UTC)"},
    )
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its last checkpoint"}
    )
    register: bool = field(default=True, metadata={"help": "mmedagent train: register the policy"})


@dataclass
class TrainSpec:
    """A parsed command line: the three argument groups and the arguments as given."""

    script: TrainArguments
    recipe: GRPORecipe
    model: PolicyModelConfig
    argv: list[str]

    @property
    def out(self) -> Path:
        return Path(self.recipe.output_dir).resolve()


def parse_args(argv: Sequence[str], prog: str = "python -m rl.grpo") -> TrainSpec:
    """The options of a run (``--recipe NAME|PATH`` read as TRL's ``--config``); a bad recipe or
    option value is a :class:`TrainError`."""
    from trl import TrlParser

    args = list(argv)
    if "--recipe" in args:
        at = args.index("--recipe")
        try:
            args[at : at + 2] = ["--config", str(recipe_path(args[at + 1]).resolve())]
        except (FileNotFoundError, IndexError) as exc:
            raise TrainError(str(exc) or "--recipe needs a name or a path") from None
    parser = TrlParser((TrainArguments, GRPORecipe, PolicyModelConfig), prog=prog)
    try:
        script, recipe, model = parser.parse_args_and_config(args)
    except (ValueError, TypeError, OSError) as exc:
        raise TrainError(f"bad recipe or option: {exc}") from None
    return TrainSpec(script, recipe, model, args)


def resume_spec(out: str | Path, *, register: bool = True) -> TrainSpec:
    """The options the run in ``out`` started with, reading its copy of the recipe, to resume."""
    path = Path(out).resolve() / PLAN_FILE
    if not path.is_file():
        raise TrainError(f"{out} holds no run to resume ({PLAN_FILE} missing)")
    argv = json.loads(path.read_text())["argv"]
    spec = parse_args([*argv, "--resume", "true"])
    spec.script.register = register
    return spec


def check_options(spec: TrainSpec) -> None:
    """One line for what cannot make a run: no role, no --out, a missing tracker, a finished run."""
    if spec.script.role not in TRAINABLE_ROLES:
        raise TrainError(f"give --role ({' or '.join(TRAINABLE_ROLES)}), or role: in the recipe")
    if spec.recipe.output_dir in (None, "", "trainer_output"):
        raise TrainError("give --out: the folder for the run and the trained policy")
    for tracker in spec.recipe.report_to:
        if tracker in TRACKERS and importlib.util.find_spec(TRACKERS[tracker]) is None:
            raise TrainError(f"report_to {tracker}: the {tracker} package is not installed")
    if (spec.out / POLICY_DIR).exists():
        raise TrainError(f"{spec.out / POLICY_DIR} already exists: choose another --out")
    if spec.script.since is not None:
        if not spec.script.from_db:
            raise TrainError("--since selects stored runs: it goes with --from_db")
        _since(spec.script)


def source_name(script: TrainArguments) -> str:
    if script.from_db:
        return "store" if script.reward_source == "gold" else f"store ({script.reward_source} labels)"
    return str(script.data) if script.data is not None else f"synthetic:{script.synthetic}"


def load_rows(spec: TrainSpec, store: TrajectoryStore | None = None) -> Any:
    """The rows the options name (exactly one source), streamed to a memory-mapped table
    (rl.datasets.write_rows): host memory does not grow with their number."""
    script = spec.script
    if sum([bool(script.from_db), script.data is not None, script.synthetic > 0]) != 1:
        raise TrainError("give exactly one data source: --from_db, --data DIR or --synthetic N")
    if script.from_db:
        if store is None:
            raise TrainError("--from_db needs the store (`mmedagent train`)")
        rows = iter_rows_from_store(
            store, script.role, since=_since(script), reward_source=script.reward_source
        )
    elif script.data is not None:
        rows = iter_rows_from_dir(Path(script.data), script.role)
    else:
        make = iter_synthetic_triage_rows if script.role == "triage" else iter_synthetic_attending_rows
        rows = make(script.synthetic, seed=spec.recipe.seed)
    table = host_table(rows, "rows", spec.out)
    if not len(table):
        raise TrainError(f"no usable {script.role} rows (runs need a label and stored pixels)")
    return table


def _since(script: TrainArguments) -> datetime | None:
    """``--since`` as a time. Absolute only: a run resumed later must select the same runs."""
    if script.since is None:
        return None
    try:
        when = datetime.fromisoformat(script.since)
    except ValueError:
        raise TrainError(f"--since {script.since!r}: expected an ISO date or datetime") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class TrainRun:
    """A finished run: the result, what it trained on, and where it started from."""

    result: GRPOResult
    rows: int
    source: str
    start: str


def train(
    spec: TrainSpec,
    rows: Iterable[Row] | Any,
    *,
    served: tuple[str | None, str | None] = (None, None),
    callbacks: Sequence[Any] = (),
) -> TrainRun:
    """The run: the rows frozen (or, resuming, the frozen ones found in ``rows``), the start
    prepared, GRPO trained from it. ``served``: the (model, adapter) the role serves, the start
    when the model arguments name none (``mmedagent train``)."""
    check_options(spec)
    table = as_table(rows)
    if spec.script.resume:
        plan = json.loads((spec.out / PLAN_FILE).read_text())
        table, start, checkpoint = frozen_rows(table, plan["rows"]), plan["start"], last_checkpoint(spec.out)
        log.info("resuming from %s on the run's %d frozen rows", Path(checkpoint).name, len(table))
    else:
        start, checkpoint = prepare_start(spec, table, served), None
    train_rows, eval_rows = split_eval(table, spec.recipe.eval_fraction, spec.recipe.seed)
    info = {"role": spec.script.role, "rows": len(table), "data": source_name(spec.script), "start": start}
    result = train_grpo(
        spec.recipe,
        _starting_from(spec.model, start),
        spec.script.role,
        train_rows,
        spec.out,
        callbacks=callbacks,
        eval_rows=eval_rows,
        resume_from=checkpoint,
        run_info=info,
    )
    return TrainRun(result, len(table), info["data"], start)


def prepare_start(spec: TrainSpec, table: Any, served: tuple[str | None, str | None]) -> str:
    """The model GRPO starts from: the model arguments', else the served one with its adapter merged
    in; then the recipe's format SFT. The plan (options, start, row keys) is written first."""
    from rl.models import merge_adapter
    from rl.sft import format_sft

    state, out = run_state(), spec.out
    start = spec.model.model_name_or_path or served[0]
    if not start:
        raise TrainError(
            "no model to start from: give --model_name_or_path or model_name_or_path: in the recipe"
        )
    if served[1] and not spec.model.model_name_or_path:
        with state.main_process_first():  # one process writes the merged start, the others read it
            if state.is_main_process:
                merge_adapter(start, served[1], out / "start")
        start = str(out / "start")
    section = spec.recipe.format_sft
    if section:
        log.info("format SFT: %d steps on random labels", section["max_steps"])
        done = format_sft(
            _starting_from(spec.model, start),
            warmup_rows(spec, table),
            spec.script.role,
            out / "format_sft",
            section,
            init_kwargs=spec.recipe.model_init_kwargs,
            seed=spec.recipe.seed,
            progress_bar=spec.recipe.progress_bar,
        )
        start = str(done.policy_path)
    if state.is_main_process:
        write_plan(spec, start, table)
    return start


def write_plan(spec: TrainSpec, start: str, table: Any) -> None:
    """``run_plan.json``: the arguments (the recipe read from its copy in --out), the start and every
    row's key, in order: what ``--resume`` continues with."""
    out = spec.out
    out.mkdir(parents=True, exist_ok=True)
    argv = list(spec.argv)
    if "--config" in argv:
        at = argv.index("--config") + 1
        shutil.copyfile(argv[at], out / RECIPE_COPY)
        argv[at] = str(out / RECIPE_COPY)
    argv += ["--output_dir", str(out)]  # absolute (the last given wins): resumable from any folder
    if spec.script.data is not None:
        argv += ["--data", str(Path(spec.script.data).resolve())]
    plan = {"argv": argv, "start": start, "rows": [row_key(r) for r in table]}
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=1))


def warmup_rows(spec: TrainSpec, table: Any) -> Any:
    """The format SFT's rows: for a synthetic attending run the clinic's own warm-up cases
    (:func:`iter_attending_warmup_rows`: reading learned, not the training rows by heart), else
    the training rows."""
    if spec.script.synthetic and spec.script.role == "attending":
        return host_table(iter_attending_warmup_rows(spec.recipe.seed), "warmup", spec.out)
    return table


def split_eval(table: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, eval) selections of ``table``: ``fraction`` of its rows held out at random (seeded),
    none when 0."""
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


def frozen_rows(table: Any, keys: Sequence[str]) -> Any:
    """The rows of ``keys`` found in ``table``, in the keys' order (a resumed run's own rows)."""
    by_key: dict[str, list[int]] = {}
    for i, row in enumerate(table):
        by_key.setdefault(row_key(row), []).append(i)
    indices: list[int] = []
    for key in keys:
        if not by_key.get(key):
            raise TrainError(f"a row of the run is gone from its source ({key}): it cannot resume exactly")
        indices.append(by_key[key].pop(0))
    return table.select(indices)


def last_checkpoint(out: Path) -> str:
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not checkpoints:
        raise TrainError(f"{out} holds no checkpoint to resume from (the recipe's save_steps saves them)")
    return str(checkpoints[-1])


def _starting_from(model_args: PolicyModelConfig, start: str) -> PolicyModelConfig:
    from dataclasses import replace

    return replace(model_args, model_name_or_path=start)


# --- the GRPO phase ------------------------------------------------------------------------------


@dataclass
class GRPOResult:
    """What a GRPO run produced. ``policy_path`` is an adapter (LoRA) or a whole checkpoint."""

    output_dir: Path
    policy_path: Path
    base_model: str
    adapter: bool
    steps: int
    wall_s: float
    stages: list[dict[str, Any]]
    metrics: dict[str, float] = field(default_factory=dict)
    stage_log: list[dict[str, Any]] = field(default_factory=list)
    world_size: int = 1
    global_batch: int = 0  # completions behind one optimizer step, every process together
    loss_type: str = "grpo"
    cut: list[str] = field(default_factory=list)  # stages max_steps shortened or dropped
    curriculum: bool = True
    eval: list[dict[str, Any]] = field(default_factory=list)  # eval accuracy by difficulty per scoring

    @property
    def serving(self) -> tuple[str, str | None]:
        """(model, adapter) to serve this policy with."""
        return (self.base_model, str(self.policy_path)) if self.adapter else (str(self.policy_path), None)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the run (stored with the policy version)."""
        return {
            "trainer": "grpo",
            "output_dir": str(self.output_dir),
            "steps": self.steps,
            "wall_s": round(self.wall_s, 2),
            "stages": self.stages,
            "curriculum": self.curriculum,
            "cut_by_max_steps": self.cut,
            "final_reward_by_difficulty": final_by_difficulty(self.stage_log),
            "eval": self.eval,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "loss_type": self.loss_type,
            "metrics": self.metrics,
        }


def train_grpo(
    recipe: GRPORecipe,
    model_args: PolicyModelConfig,
    role: str,
    rows: Iterable[Row] | Any,
    output_dir: str | Path,
    *,
    callbacks: Sequence[Any] = (),
    eval_rows: Sequence[Row] = (),
    resume_from: str | None = None,
    run_info: dict[str, Any] | None = None,
) -> GRPOResult:
    """GRPO-train ``model_args.model_name_or_path`` on ``rows`` into ``output_dir``.

    The rows are curriculum-ordered (or one shuffled mixed stage), every stage padded to whole
    generation batches of all processes together, so each batch holds one stage and every row of
    every stage is trained; ``recipe.max_steps`` cuts the plan (logged, recorded as ``cut``) and
    never extends it. The policy goes to ``<out>/policy`` (an adapter under LoRA, a whole checkpoint
    with its processor under full fine-tuning) with ``training_run.json`` beside it (the summary,
    ``run_info``, the recipe, every step's stage), both written by the main process. ``eval_rows``
    are scored greedily every ``recipe.eval_steps`` steps and at the end (rl/evaluation.py).
    """
    if not model_args.model_name_or_path:
        raise ValueError("the model arguments name no model to start from")
    if recipe.use_vllm:  # before any row or model is read
        from rl.vllm_sync import check_vllm

        check_vllm(model_args.model_name_or_path, recipe.vllm_mode)
    out = Path(output_dir)
    plan = plan_stages(recipe.replace(output_dir=str(out)), role, rows)
    trainer = build_trainer(plan.args, model_args, role, plan.dataset, plan.stages, callbacks)
    check_sharding(trainer)
    scorer = _add_eval(trainer, eval_rows, role, recipe)
    if resume_from:  # the stage the checkpoint's last step trained
        trainer.resume_in_stage(plan.stage_at(int(Path(resume_from).name.rsplit("-", 1)[-1])))
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    result = GRPOResult(
        output_dir=out,
        policy_path=out / POLICY_DIR,
        base_model=model_args.model_name_or_path,
        adapter=model_args.use_peft,
        steps=trainer.state.global_step,
        wall_s=time.perf_counter() - started,
        stages=plan.steps,
        metrics=_final_metrics(trainer.state.log_history, output.metrics),
        stage_log=trainer.stage_log,
        world_size=plan.gen.processes,
        global_batch=plan.gen.completions_per_step,
        loss_type=recipe.loss_type,
        cut=plan.cut,
        curriculum=recipe.curriculum_for(role),
        eval=scorer.results if scorer else [],
    )
    save_policy(trainer, result, plan.args, model_args, run_info or {"role": role})
    return result


@dataclass
class StagePlan:
    """The ordered rows and what the trainer does with them: ``steps``, one entry per stage (its
    first step, number of steps, rows, β, γ), what max_steps ``cut``, the generation batch, and
    ``args``: the recipe with ``max_steps`` set to the plan's."""

    dataset: Any
    steps: list[dict[str, Any]]
    cut: list[str]
    gen: GenerationBatch
    stages: list[Any]
    args: GRPORecipe

    def stage_at(self, done: int) -> str | None:
        """The stage of the step after ``done`` steps."""
        return next((p["stage"] for p in self.steps if p["first_step"] + p["steps"] > done), None)


def plan_stages(recipe: GRPORecipe, role: str, rows: Iterable[Row] | Any) -> StagePlan:
    """The rows in curriculum order (or one mixed stage), padded to whole generation batches of the
    processes running, and the stage plan, cut by ``recipe.max_steps`` and logged."""
    from rl.trainer import run_generation_batch

    gen = run_generation_batch(recipe)
    table = as_table(rows)
    curriculum = recipe.curriculum_for(role)
    dataset, spans = ordered_dataset(
        table, recipe.stages, batch=gen.prompts, curriculum=curriculum, mixed_stage=recipe.mixed_stage,
        seed=recipe.seed,
    )  # fmt: skip
    steps, cut = cap_plan(stage_spans(spans, gen.prompts, gen.optimizer_steps), recipe.max_steps)
    args = recipe.replace(max_steps=sum(p["steps"] for p in steps))
    log.info(
        "GRPO %s (%s, loss %s): %d rows, %d processes, %d completions a step (%d prompts x %d per "
        "generation batch); stage plan:\n%s",
        role, "curriculum" if curriculum else "mixed", recipe.loss_type, len(table), gen.processes,
        gen.completions_per_step, gen.prompts, recipe.num_generations, describe_plan(steps),
    )  # fmt: skip
    if cut:
        log.warning("max_steps %d cuts the stage plan: %s", recipe.max_steps, "; ".join(cut))
    return StagePlan(dataset, steps, cut, gen, [sp.stage for sp in spans], args)


def build_trainer(
    recipe: GRPORecipe,
    model_args: PolicyModelConfig,
    role: str,
    dataset: Any,
    stages: Sequence[Any],
    callbacks: Sequence[Any] = (),
) -> CurriculumGRPOTrainer:
    """The curriculum trainer on the starting policy (``model_init_kwargs`` applied, frozen
    parameters or LoRA), the role's rewards and the processor (left padding)."""
    from transformers import AutoProcessor

    from rl.models import load_policy_model, model_init_kwargs, peft_config
    from rl.rewards import REWARD_FUNCS
    from rl.trainer import CurriculumGRPOTrainer

    start = model_args.model_name_or_path
    return CurriculumGRPOTrainer(
        model=load_policy_model(model_args, model_init_kwargs(model_args, recipe.model_init_kwargs)),
        reward_funcs=REWARD_FUNCS[role],
        args=recipe,
        train_dataset=dataset,
        processing_class=AutoProcessor.from_pretrained(start, padding_side="left"),
        peft_config=peft_config(model_args),
        callbacks=list(callbacks),
        stages=stages,
        answer_tokens_only=recipe.policy_tokens == "answer",
    )


def _add_eval(trainer: Any, rows: Sequence[Row], role: str, recipe: GRPORecipe) -> Any:
    if not len(rows):
        return None
    from rl.evaluation import EvalAccuracy

    scorer = EvalAccuracy(
        trainer, rows, role, max_new_tokens=recipe.max_completion_length, every=recipe.eval_steps
    )
    trainer.add_callback(scorer)
    return scorer


def save_policy(
    trainer: Any, result: GRPOResult, recipe: GRPORecipe, model_args: PolicyModelConfig, info: dict[str, Any]
) -> None:
    """The policy (and, under full fine-tuning, its processor) and ``training_run.json``."""
    trainer.save_model(str(result.policy_path))  # the main process writes (transformers' should_save)
    if trainer.is_world_process_zero():
        if not result.adapter:
            trainer.processing_class.save_pretrained(result.policy_path)
        model, adapter = result.serving
        record = {
            **result.summary(),
            **info,
            "serving": {"model": model, "adapter": adapter},
            "recipe": recipe.to_dict(),
            "model_args": vars(model_args),
            "per_step": trainer.stage_log,
            "log_history": trainer.state.log_history,
        }
        (result.output_dir / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()


def final_by_difficulty(stage_log: Sequence[dict[str, Any]], last: int = 3) -> dict[str, float]:
    """Each difficulty's reward averaged over the last ``last`` steps that trained on it."""
    values: dict[str, list[float]] = {}
    for entry in stage_log:
        for level, value in entry.get("reward_by_difficulty", {}).items():
            values.setdefault(level, []).append(value)
    return {level: round(sum(v[-last:]) / len(v[-last:]), 4) for level, v in values.items()}


def _final_metrics(history: list[dict[str, Any]], train_metrics: dict[str, Any]) -> dict[str, float]:
    """Train metrics plus the mean of the last few logged rewards (a smoothed end point)."""
    logged = [h for h in history if "reward" in h]
    tail = logged[-3:]
    metrics = {k: float(v) for k, v in train_metrics.items() if isinstance(v, int | float)}
    for key in ("reward", "entropy", "kl", "frac_reward_zero_std"):
        values = [h[key] for h in tail if key in h]
        if values:
            metrics[f"final_{key}"] = sum(values) / len(values)
    return metrics


# --- python -m rl.grpo ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rl.grpo`` / ``torchrun -m rl.grpo``: train; ``mmedagent policies register OUT``
    registers the result."""
    import os
    import sys

    main_process = os.environ.get("RANK", "0") == "0"  # the others log warnings only
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        spec = parse_args(sys.argv[1:] if argv is None else argv)
        if spec.script.resume:
            spec = resume_spec(spec.recipe.output_dir)
        run = train(spec, load_rows(spec))
    except (TrainError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    r = run.result
    log.info("policy saved to %s after %d steps (%.0f s)", r.policy_path, r.steps, r.wall_s)
    log.info("register it: mmedagent policies register %s", r.output_dir)


if __name__ == "__main__":
    main()

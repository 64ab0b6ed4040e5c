"""Curriculum GRPO on TRL's GRPOTrainer (docs/paper.md).

The objective is the paper's: J_GRPO − β·KL(π‖π_ref) + γ·H, with per-stage β and γ. The recipe's
``loss_type: grpo`` (TRL's default is ``dapo``) averages each completion's token losses over its
length as J_GRPO does; the KL is GRPO's per-token k3 estimator, without TRL 1.16's default
importance-ratio "bias correction" (``use_bias_correction_kl: false``). TRL already
implements both terms: ``beta`` (per-token KL against the reference, i.e. the starting policy: the
base model with the adapter disabled under LoRA, a frozen copy under full fine-tuning) and
``entropy_coef`` (``loss -= γ · mean token entropy of the completions``, the entropies computed
from the same logits as the log-probabilities). :class:`CurriculumGRPOTrainer` therefore adds no
new loss code: it sets ``beta`` and ``entropy_coef`` from the stage of each generation batch, which
rl/curriculum.py and rl/batching.py make a single stage on every process.

Rows come in curriculum order with TRL's ``shuffle_dataset=False``; without curriculum they are
shuffled once by rl/curriculum.py (one ``mixed`` stage), so the trainer never reshuffles.

With ``use_vllm`` (colocate), generation runs on TRL's vLLM engine; rl/vllm_sync.py adds what this
project needs there: a one-line failure where vLLM cannot run the recipe, vision special tokens
never sampled, and the weight sync when the engine runs on CPU (TRL's own sync on CUDA).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from graph.protocol import ChatBackend
from rl.batching import GenerationBatch, generation_batch
from rl.curriculum import LEVELS, cap_plan, describe_plan, ordered_dataset, stage_spans
from rl.datasets import Row, as_table
from rl.grpo_config import GRPORecipe, Stage
from rl.rewards import REWARD_FUNCS

log = logging.getLogger(__name__)

POLICY_DIR = "policy"
RUN_FILE = "training_run.json"


class CurriculumGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose KL β and entropy coefficient γ follow the stage of the batch in hand.

    Every training row carries a ``stage`` column naming one of ``stages``. Before a generation
    batch is scored, every process checks (collectively) that the batch holds one stage, and
    ``beta`` and ``entropy_coef`` are set from it; the loss of that batch (computed from the
    buffered generations) uses them. ``stage_log`` records, per generation batch, the optimizer
    step it feeds, its stage (and each process's), β, γ, the case ids of every process and the
    reward by difficulty; the same figures go to TRL's logs (``curriculum/*``,
    ``reward_by_difficulty/*``).

    With TRL's ``use_adaptive_entropy`` (a recipe's ``extra``) each stage starts at its own γ;
    TRL raises it while the completions' entropy is below ``entropy_target`` and lowers it above,
    and applies it only below the target.

    ``answer_tokens_only``: the policy-gradient and entropy terms act on the tokens inside
    ``<answer>…</answer>`` only (the decision), while the KL term keeps acting on every token and
    holds the format. It goes through TRL's token-mask hook (``get_high_entropy_mask``, which
    ``top_entropy_quantile`` otherwise drives), so both terms see the same tokens.
    """

    def __init__(self, *args: Any, stages: Sequence[Stage], answer_tokens_only: bool = False, **kwargs: Any):
        self.answer_tokens_only = answer_tokens_only
        self._answer_mask: torch.Tensor | None = None
        self.stages = {s.name: s for s in stages}
        if not self.stages:
            raise ValueError("at least one stage is needed")
        train_args: GRPOConfig = kwargs["args"]
        # TRL decides at construction whether a reference model and the entropy term exist; they
        # must exist when any stage uses them.
        train_args.beta = max(s.beta for s in stages)
        train_args.entropy_coef = max(s.gamma for s in stages)
        self.stage_log: list[dict[str, Any]] = []
        self._stage_name: str | None = None
        self._rewards: torch.Tensor | None = None
        self._stage_by_rank: list[str] = []
        if train_args.use_vllm:
            from rl.vllm_sync import check_vllm

            model = kwargs.get("model", args[0] if args else None)
            check_vllm(model if isinstance(model, str) else model.name_or_path, train_args.vllm_mode)
        super().__init__(*args, **kwargs)
        if self.use_vllm:
            self._setup_vllm()
        if answer_tokens_only:
            if train_args.top_entropy_quantile < 1.0:
                raise ValueError("answer_tokens_only replaces top_entropy_quantile: leave it at 1.0")
            self.top_entropy_quantile = 0.0  # routes TRL's token mask through get_high_entropy_mask

    def _setup_vllm(self) -> None:
        """TRL's vLLM generation, as rl/vllm_sync.py completes it: the vision special tokens biased
        out of sampling, and the CPU weight sync where the engine runs on CPU."""
        from rl.vllm_sync import install_cpu_weight_sync, vision_token_bias

        generation = self.vllm_generation
        kwargs = dict(generation.generation_kwargs)
        bias = vision_token_bias(self.processing_class)
        kwargs["logit_bias"] = {**(kwargs.get("logit_bias") or {}), **bias}
        generation.generation_kwargs = kwargs
        install_cpu_weight_sync(generation)

    def resume_in_stage(self, name: str | None) -> None:
        """A resumed run continues in stage ``name`` (its last trained step's): adaptive entropy then
        keeps the coefficient restored from the checkpoint until the next stage begins."""
        self._stage_name = name

    def _set_stage(self, inputs: list[dict[str, Any]]) -> Stage:
        """The stage of this generation batch, checked on every process together: its β and γ set."""
        from accelerate.utils import gather_object

        local = sorted({x["stage"] for x in inputs})
        by_rank = gather_object([local])  # one list per process, in rank order
        names = {n for per_rank in by_rank for n in per_rank}
        if len(names) != 1:
            raise RuntimeError(
                f"generation batch for step {self.state.global_step + 1} mixes curriculum stages: "
                f"{dict(enumerate(by_rank))} (stages must be padded to the global generation batch)"
            )
        stage = self.stages[names.pop()]
        self.beta = stage.beta
        if stage.name != self._stage_name or not self.use_adaptive_entropy:
            # each stage starts at its own γ; with TRL's adaptive entropy its controller moves it from
            # there (a run resumed mid-stage keeps the coefficient restored from its checkpoint)
            self.entropy_coef = stage.gamma
            self._stage_name = stage.name
        self._stage_by_rank = [per_rank[0] for per_rank in by_rank]
        return stage

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> Any:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards = rewards_per_func  # gathered over every process, in rank order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        training = self.model.training
        stage = self._set_stage(inputs) if training else None
        output = super()._generate_and_score_completions(inputs)
        if training and stage is not None:
            self._log_stage(stage, inputs)
        if self.answer_tokens_only:
            output["answer_mask"] = answer_token_mask(self.processing_class, output["completion_ids"])
        return output

    def _log_stage(self, stage: Stage, inputs: list[dict[str, Any]]) -> None:
        """Record the step's stage, β, γ, every process's stage, its case ids and reward by difficulty."""
        from accelerate.utils import gather_object

        case_ids = gather_object([str(x.get("case_id", "")) for x in inputs])
        levels = gather_object([x.get("difficulty") or "" for x in inputs])
        by_level: dict[str, float] = {}
        if self._rewards is not None:
            weights = self.reward_weights.to(self._rewards.device)
            reward = (self._rewards * weights.unsqueeze(0)).nansum(dim=1).tolist()
            by_level["all"] = sum(reward) / len(reward)
            for level in LEVELS:
                values = [r for r, lv in zip(reward, levels, strict=True) if lv == level]
                if values:
                    by_level[level] = sum(values) / len(values)
        metrics = self._metrics["train"]
        metrics["curriculum/stage"].append(float(list(self.stages).index(stage.name)))
        metrics["curriculum/beta"].append(self.beta)
        metrics["curriculum/gamma"].append(self.entropy_coef)
        for level, value in by_level.items():
            if level != "all":
                metrics[f"reward_by_difficulty/{level}"].append(value)
        self.stage_log.append(
            {
                "step": self.state.global_step + 1,
                "stage": stage.name,
                "stage_by_rank": self._stage_by_rank,
                "beta": self.beta,
                "gamma": self.entropy_coef,
                "reward_by_difficulty": by_level,
                "case_ids": sorted(set(case_ids)),
            }
        )

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self._answer_mask = inputs.get("answer_mask")
        return super()._compute_loss(model, inputs)

    def get_high_entropy_mask(
        self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float
    ) -> torch.Tensor:
        if self.answer_tokens_only and self._answer_mask is not None:
            return self._answer_mask.bool() & mask.bool()
        return super().get_high_entropy_mask(entropies, mask, threshold)


def answer_token_mask(processing_class: Any, completion_ids: torch.Tensor) -> torch.Tensor:
    """1 for the completion tokens that spell the content of ``<answer>…</answer>``, else 0.

    A token belongs to the answer when the text before it holds ``<answer>`` and the answer text
    up to and including it holds no ``</`` yet (the closing tag is format, not decision).
    """
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    mask = torch.zeros(completion_ids.shape, dtype=torch.float32, device=completion_ids.device)
    for row, ids in enumerate(completion_ids.tolist()):
        pieces = tokenizer.batch_decode([[t] for t in ids], skip_special_tokens=True)
        text = ""
        for i, piece in enumerate(pieces):
            if "<answer>" in text and "</" not in (text + piece).split("<answer>", 1)[1]:
                mask[row, i] = 1.0
            text += piece
    return mask


@dataclass
class GRPOResult:
    """What a training run produced. ``policy_path`` is an adapter (LoRA) or a whole checkpoint."""

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


def final_by_difficulty(stage_log: Sequence[dict[str, Any]], last: int = 3) -> dict[str, float]:
    """Each difficulty's reward averaged over the last ``last`` steps that trained on it."""
    values: dict[str, list[float]] = {}
    for entry in stage_log:
        for level, value in entry.get("reward_by_difficulty", {}).items():
            values.setdefault(level, []).append(value)
    return {level: round(sum(v[-last:]) / len(v[-last:]), 4) for level, v in values.items()}


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


def grpo_config(recipe: GRPORecipe, output_dir: Path) -> GRPOConfig:
    """TRL's config for ``recipe``: its GRPOConfig fields as they are, and what a curriculum run fixes."""
    trl_fields = {f.name for f in fields(GRPOConfig) if f.init}
    options = {k: v for k, v in recipe.to_dict().items() if k in trl_fields}
    return GRPOConfig(
        **{
            **options,
            "output_dir": str(output_dir),
            "num_train_epochs": 1,  # the ordered rows already hold every stage's epochs
            "shuffle_dataset": False,  # the curriculum's order
        }
    )


def load_policy_model(recipe: GRPORecipe) -> Any:
    """The starting policy (float32 on CPU), with ``recipe.freeze``'d parameters frozen."""
    from transformers import AutoModelForImageTextToText

    dtype = "float32" if _on_cpu() else "auto"
    model = AutoModelForImageTextToText.from_pretrained(recipe.model, dtype=dtype)
    frozen = tuple(recipe.freeze)
    if frozen and recipe.finetune == "full":
        for name, param in model.named_parameters():
            if name.startswith(frozen):
                param.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"freeze {list(frozen)} leaves nothing to train")
    return model


def _peft_config(recipe: GRPORecipe) -> Any:
    if recipe.finetune != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=lora_targets(recipe),
        task_type="CAUSAL_LM",
    )


def lora_targets(recipe: GRPORecipe) -> list[str] | str:
    """PEFT's ``target_modules``: the recipe's projection names, in the language model only unless
    ``lora_scope`` is ``all`` (a regex PEFT matches against the full module name)."""
    if recipe.lora_scope == "all":
        return list(recipe.lora_target_modules)
    names = "|".join(re.escape(n) for n in recipe.lora_target_modules)
    return rf".*\blanguage_model\..*\.({names})"


def run_generation_batch(args: GRPOConfig) -> GenerationBatch:
    """The generation batch of a live config (its world size), checked against TRL's own figure."""
    gen = generation_batch(
        processes=args.world_size,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_generations=args.num_generations,
        steps_per_generation=args.steps_per_generation,
        num_iterations=args.num_iterations,
    )
    if gen.completions != args.generation_batch_size:  # TRL changed its arithmetic: fail loudly
        raise RuntimeError(
            f"rl/batching.py expects {gen.completions} completions per generation batch, "
            f"TRL configured {args.generation_batch_size}"
        )
    return gen


def train_grpo(
    recipe: GRPORecipe,
    rows: Iterable[Row] | Any,
    output_dir: str | Path,
    *,
    callbacks: Sequence[Any] = (),
    eval_rows: Sequence[Row] = (),
) -> GRPOResult:
    """Train ``recipe.model`` on ``rows`` (curriculum-ordered or mixed) and save the policy.

    ``rows``: any iterable of rows (a generator keeps them out of memory) or a table of
    rl.datasets.write_rows; they are streamed to memory-mapped tables (rl/curriculum.ordered_dataset).

    Every stage is padded to whole generation batches of all processes together, so each batch
    holds one stage and every row of every stage is trained; ``recipe.max_steps`` cuts the plan
    (logged, and recorded as ``cut``) and never extends it. The policy goes to
    ``output_dir/policy`` (an adapter under LoRA, a whole checkpoint with its processor under full
    fine-tuning) with ``training_run.json`` beside it, both written by the main process only.
    ``eval_rows`` are scored greedily (``max_completion_length`` new tokens) every
    ``recipe.eval_steps`` steps and at the end: accuracy by difficulty.
    """
    from transformers import AutoProcessor

    if not recipe.model:
        raise ValueError("the recipe names no model to start from")
    if recipe.use_vllm:  # before any row or model is read
        from rl.vllm_sync import check_vllm

        check_vllm(recipe.model, recipe.vllm_mode)
    out = Path(output_dir)
    args = grpo_config(recipe, out)
    gen = run_generation_batch(args)
    table = as_table(rows)
    n_rows = len(table)
    dataset, spans = ordered_dataset(
        table,
        recipe.stages,
        batch=gen.prompts,
        curriculum=recipe.curriculum,
        mixed_stage=recipe.mixed_stage,
        seed=recipe.seed,
    )
    plan, cut = cap_plan(stage_spans(spans, gen.prompts, gen.optimizer_steps), recipe.max_steps)
    args.max_steps = sum(p["steps"] for p in plan)
    log.info(
        "GRPO %s (%s, loss %s): %d rows, %d processes, %d completions a step (%d prompts x %d per "
        "generation batch); stage plan:\n%s",
        recipe.role, "curriculum" if recipe.curriculum else "mixed", recipe.loss_type, n_rows,
        gen.processes, gen.completions_per_step, gen.prompts, recipe.num_generations, describe_plan(plan),
    )  # fmt: skip
    if cut:
        log.warning("max_steps %d cuts the stage plan: %s", recipe.max_steps, "; ".join(cut))
    processor = AutoProcessor.from_pretrained(recipe.model, padding_side="left")
    trainer = CurriculumGRPOTrainer(
        model=load_policy_model(recipe),
        reward_funcs=REWARD_FUNCS[recipe.role],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=_peft_config(recipe),
        callbacks=list(callbacks),
        stages=[sp.stage for sp in spans],
        answer_tokens_only=recipe.policy_tokens == "answer",
    )
    scorer = None
    if eval_rows:
        scorer = EvalAccuracy(
            trainer,
            eval_rows,
            recipe.role,
            max_new_tokens=recipe.max_completion_length,
            every=recipe.eval_steps,
        )
        trainer.add_callback(scorer)
    if isinstance(recipe.resume_from_checkpoint, str):  # the stage the checkpoint's last step trained
        done = int(Path(recipe.resume_from_checkpoint).name.rsplit("-", 1)[-1])
        trainer.resume_in_stage(next((p["stage"] for p in plan if p["first_step"] + p["steps"] > done), None))
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=recipe.resume_from_checkpoint)
    wall = time.perf_counter() - started

    policy = out / POLICY_DIR
    trainer.save_model(str(policy))  # the main process writes (TRL/transformers' should_save)
    result = GRPOResult(
        output_dir=out,
        policy_path=policy,
        base_model=recipe.model,
        adapter=recipe.finetune == "lora",
        steps=trainer.state.global_step,
        wall_s=wall,
        stages=plan,
        metrics=_final_metrics(trainer.state.log_history, output.metrics),
        stage_log=trainer.stage_log,
        world_size=gen.processes,
        global_batch=gen.completions_per_step,
        loss_type=recipe.loss_type,
        cut=cut,
        curriculum=bool(recipe.curriculum),
        eval=scorer.results if scorer else [],
    )
    if trainer.is_world_process_zero():
        if recipe.finetune == "full":
            processor.save_pretrained(policy)
        record = {
            **result.summary(),
            "recipe": recipe.to_dict(),
            "per_step": trainer.stage_log,
            "log_history": trainer.state.log_history,
        }
        (out / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return result


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


def _row_value(row: Row, text: str, role: str) -> float:
    from rl.rewards import answer_accuracy_value, triage_accuracy_value

    if role == "triage":
        return triage_accuracy_value(text, row["specialty"])
    return answer_accuracy_value(text, row["answer"], row["options"])


def _by_difficulty(rows: Sequence[Row], values: Sequence[float]) -> dict[str, float]:
    right: dict[str, list[float]] = {"all": list(values)}
    for row, value in zip(rows, values, strict=True):
        if row.get("difficulty"):
            right.setdefault(row["difficulty"], []).append(value)
    return {k: sum(v) / len(v) for k, v in right.items() if v}


@torch.no_grad()
def model_accuracy(
    model: Any, processor: Any, rows: Sequence[Row], role: str, *, max_new_tokens: int, batch: int = 16
) -> dict[str, float]:
    """Greedy accuracy of an in-memory model on ``rows``: ``all`` and per difficulty present."""
    from rl.datasets import row_images

    tokenizer = getattr(processor, "tokenizer", processor)
    was_training = model.training
    model.eval()
    values: list[float] = []
    try:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            texts = [
                processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
                for r in chunk
            ]
            images = [img for r in chunk for img in row_images(r)]
            inputs = processor(
                text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt"
            )
            inputs = inputs.to(model.device)
            out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            done = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            values.extend(_row_value(r, text, role) for r, text in zip(chunk, done, strict=True))
    finally:
        model.train(was_training)
    return _by_difficulty(rows, values)


class EvalAccuracy(TrainerCallback):
    """Scores the eval rows every ``every`` steps and at the end: accuracy by difficulty, logged
    (``eval_accuracy/<level>``: TensorBoard/trackio, ``log_history``) and kept in ``results``."""

    def __init__(
        self, trainer: GRPOTrainer, rows: Sequence[Row], role: str, *, max_new_tokens: int, every: int
    ):
        self.trainer, self.rows, self.role = trainer, list(rows), role
        self.max_new_tokens, self.every = max_new_tokens, every
        self.results: list[dict[str, Any]] = []

    def _score(self, state: Any) -> None:
        if self.results and self.results[-1]["step"] == state.global_step:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        accuracy = model_accuracy(
            model, self.trainer.processing_class, self.rows, self.role, max_new_tokens=self.max_new_tokens
        )
        self.results.append({"step": state.global_step, "accuracy": accuracy})
        model.eval()  # TRL's log() files metrics under the mode the model is in: not the train ones
        try:
            self.trainer.log({f"eval_accuracy/{k}": v for k, v in accuracy.items()})
        finally:
            model.train()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every > 0 and state.global_step % self.every == 0:
            self._score(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._score(state)


def score_policy(
    backend: ChatBackend, rows: Sequence[Row], role: str, *, max_new_tokens: int = 24, batch: int = 64
) -> dict[str, float]:
    """Greedy accuracy of a served policy on held-out rows: ``all`` and per difficulty present."""
    from graph.protocol import ChatRequest, Sampling
    from rl.datasets import row_images

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    values: list[float] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        done = backend.generate([ChatRequest(r["prompt"], row_images(r), sampling) for r in chunk])
        values.extend(_row_value(r, c.text, role) for r, c in zip(chunk, done, strict=True))
    return _by_difficulty(rows, values)


def merge_adapter(model: str, adapter: str, output_dir: str | Path) -> str:
    """Fold a LoRA adapter into its base model and save the result: GRPO's new LoRA trains on it."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(output_dir)
    base = AutoModelForImageTextToText.from_pretrained(model, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoProcessor.from_pretrained(model).save_pretrained(out)
    return str(out)


if __name__ == "__main__":
    # ``python -m rl.grpo`` (``torchrun --nproc_per_node N -m rl.grpo`` for N processes): the options
    # of ``mmedagent train`` (rl/train.py), without registering the policy. Under this guard only:
    # rl.train imports this module, so importing it at the top would be a cycle.
    from rl.train import main

    main()

"""Curriculum GRPO on TRL's GRPOTrainer (docs/paper.md).

The objective is the paper's: J_GRPO − β·KL(π‖π_ref) + γ·H, with per-stage β and γ. TRL 1.16 already
implements both terms: ``beta`` (per-token KL against the reference, i.e. the starting policy: the
base model with the adapter disabled under LoRA, a frozen copy under full fine-tuning) and
``entropy_coef`` (``loss -= γ · mean token entropy of the completions``, the entropies computed
from the same logits as the log-probabilities). :class:`CurriculumGRPOTrainer` therefore adds no
new loss code: it sets ``beta`` and ``entropy_coef`` from the stage of each generation batch, which
rl/curriculum.py guarantees is a single stage.

Rows come in curriculum order with TRL's ``shuffle_dataset=False``; without curriculum they are
shuffled once by rl/curriculum.py (one ``mixed`` stage), so the trainer never reshuffles.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from graph.protocol import ChatBackend
from rl.curriculum import order_rows, stage_spans
from rl.datasets import Row, to_dataset
from rl.grpo_config import GRPORecipe, Stage
from rl.rewards import REWARD_FUNCS

log = logging.getLogger(__name__)

POLICY_DIR = "policy"
RUN_FILE = "training_run.json"


class CurriculumGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose KL β and entropy coefficient γ follow the stage of the batch in hand.

    Every training row carries a ``stage`` column naming one of ``stages``. Before a generation
    batch is scored, ``beta`` and ``entropy_coef`` are set from its stage; the loss of that batch
    (computed from the buffered generations) uses them. ``stage_log`` records, per generation
    batch, the optimizer step it feeds, its stage, β, γ and case ids.

    With TRL's ``use_adaptive_entropy`` (a recipe's ``extra``) the stage's γ is only the starting
    coefficient: TRL raises it while the completions' entropy is below ``entropy_target`` and
    lowers it above, and applies it only below the target.

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
        super().__init__(*args, **kwargs)
        if answer_tokens_only:
            if train_args.top_entropy_quantile < 1.0:
                raise ValueError("answer_tokens_only replaces top_entropy_quantile: leave it at 1.0")
            self.top_entropy_quantile = 0.0  # routes TRL's token mask through get_high_entropy_mask

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.model.training:
            names = {x["stage"] for x in inputs}
            if len(names) != 1:
                raise RuntimeError(f"a generation batch mixes curriculum stages {sorted(names)}")
            stage = self.stages[names.pop()]
            self.beta = stage.beta
            if not self.use_adaptive_entropy:  # adaptive: TRL's controller owns the coefficient
                self.entropy_coef = stage.gamma
            self.stage_log.append(
                {
                    "step": self.state.global_step + 1,
                    "stage": stage.name,
                    "beta": self.beta,
                    "gamma": self.entropy_coef,
                    "case_ids": sorted({str(x.get("case_id", "")) for x in inputs}),
                }
            )
        output = super()._generate_and_score_completions(inputs)
        if self.answer_tokens_only:
            output["answer_mask"] = answer_token_mask(self.processing_class, output["completion_ids"])
        return output

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
            "metrics": self.metrics,
        }


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


def grpo_config(recipe: GRPORecipe, output_dir: Path) -> GRPOConfig:
    """TRL's config for ``recipe`` (``recipe.extra`` passes any other GRPOConfig field through)."""
    cpu = _on_cpu()
    options: dict[str, Any] = {
        "output_dir": str(output_dir),
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "warmup_steps": recipe.warmup_steps,
        "max_grad_norm": recipe.max_grad_norm,
        "num_generations": recipe.num_generations,
        "per_device_train_batch_size": recipe.completions_per_step // recipe.gradient_accumulation_steps,
        "gradient_accumulation_steps": recipe.gradient_accumulation_steps,
        "max_completion_length": recipe.max_completion_length,
        "temperature": recipe.temperature,
        "top_entropy_quantile": recipe.top_entropy_quantile,
        "num_train_epochs": 1,  # the ordered rows already hold every stage's epochs
        "max_steps": recipe.max_steps,
        "shuffle_dataset": False,
        "seed": recipe.seed,
        # transformers' name (TRL's configs still default the deprecated alias, which warns if left unset)
        "activation_checkpointing": recipe.gradient_checkpointing,
        "report_to": recipe.report_to,
        "use_vllm": recipe.use_vllm,
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps" if recipe.save_steps > 0 else "no",
        "disable_tqdm": not recipe.progress_bar,
        "use_cpu": cpu,
        "bf16": not cpu and torch.cuda.is_bf16_supported(),
    }
    if recipe.save_steps > 0:
        options["save_steps"] = recipe.save_steps
    return GRPOConfig(**{**options, **recipe.extra})


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
        target_modules=recipe.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def train_grpo(
    recipe: GRPORecipe, rows: Sequence[Row], output_dir: str | Path, *, callbacks: Sequence[Any] = ()
) -> GRPOResult:
    """Train ``recipe.model`` on ``rows`` (curriculum-ordered or mixed) and save the policy.

    The policy goes to ``output_dir/policy`` (an adapter under LoRA, a whole checkpoint with its
    processor under full fine-tuning) with ``training_run.json`` beside it.
    """
    from transformers import AutoProcessor

    if not recipe.model:
        raise ValueError("the recipe names no model to start from")
    out = Path(output_dir)
    ordered, spans = order_rows(
        rows,
        recipe.stages,
        batch=recipe.prompts_per_step,
        curriculum=recipe.curriculum,
        mixed_stage=recipe.mixed_stage,
        seed=recipe.seed,
    )
    plan = stage_spans(spans, recipe.prompts_per_step)
    log.info("GRPO %s: %d rows -> %s", recipe.role, len(rows), plan)
    processor = AutoProcessor.from_pretrained(recipe.model, padding_side="left")
    trainer = CurriculumGRPOTrainer(
        model=load_policy_model(recipe),
        reward_funcs=REWARD_FUNCS[recipe.role],
        args=grpo_config(recipe, out),
        train_dataset=to_dataset(ordered),
        processing_class=processor,
        peft_config=_peft_config(recipe),
        callbacks=list(callbacks),
        stages=[sp.stage for sp in spans],
        answer_tokens_only=recipe.policy_tokens == "answer",
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=recipe.resume_from_checkpoint)
    wall = time.perf_counter() - started

    policy = out / POLICY_DIR
    trainer.save_model(str(policy))
    if recipe.finetune == "full":
        processor.save_pretrained(policy)
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
    )
    record = {**result.summary(), "recipe": recipe.to_dict(), "log_history": trainer.state.log_history}
    (out / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
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


def score_policy(
    backend: ChatBackend, rows: Sequence[Row], role: str, *, max_new_tokens: int = 24, batch: int = 64
) -> dict[str, float]:
    """Greedy accuracy of a served policy on held-out rows: ``all`` and per difficulty present."""
    from graph.protocol import ChatRequest, Sampling
    from rl.rewards import answer_accuracy_value, triage_accuracy_value

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0)
    right: dict[str, list[float]] = {"all": []}
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        done = backend.generate([ChatRequest(r["prompt"], list(r["images"]), sampling) for r in chunk])
        for row, completion in zip(chunk, done, strict=True):
            if role == "triage":
                value = triage_accuracy_value(completion.text, row["specialty"])
            else:
                value = answer_accuracy_value(completion.text, row["answer"], row["options"])
            right["all"].append(value)
            if row.get("difficulty"):
                right.setdefault(row["difficulty"], []).append(value)
    return {k: sum(v) / len(v) for k, v in right.items() if v}


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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rl.grpo`` (or ``accelerate launch -m rl.grpo`` on several GPUs): train from a recipe
    on an export folder. Registering the result as a policy version is ``mmedagent train``'s job."""
    import argparse

    from rl.datasets import rows_from_dir

    parser = argparse.ArgumentParser(prog="python -m rl.grpo", description=main.__doc__)
    parser.add_argument("--recipe", required=True, help="YAML recipe (rl/recipes/)")
    parser.add_argument("--data", required=True, help="a `mmedagent export` folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", help="overrides the recipe's model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = GRPORecipe.from_yaml(args.recipe, model=args.model)
    result = train_grpo(recipe, rows_from_dir(args.data, recipe.role), args.out)
    log.info("policy saved to %s after %d steps (%.0f s)", result.policy_path, result.steps, result.wall_s)


if __name__ == "__main__":
    main()

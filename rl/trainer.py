"""The curriculum GRPO trainer: TRL's GRPOTrainer whose KL β and entropy γ follow the stage of the
batch in hand (docs/paper.md).

The objective is the paper's: J_GRPO − β·KL(π‖π_ref) + γ·H, with per-stage β and γ. TRL already
implements both terms: ``beta`` (per-token KL against the reference, i.e. the starting policy: the
base model with the adapter disabled under LoRA, a frozen copy under full fine-tuning) and
``entropy_coef`` (``loss -= γ · mean token entropy of the completions``, the entropies computed
from the same logits as the log-probabilities). :class:`CurriculumGRPOTrainer` therefore adds no
new loss code: it sets ``beta`` and ``entropy_coef`` from the stage of each generation batch, which
rl/curriculum.py and rl/batching.py make a single stage on every process. The TRL internals it
relies on are listed in tests/test_library_contracts.py.

With ``use_vllm`` (colocate), generation runs on TRL's vLLM engine; rl/vllm_sync.py adds what this
project needs there: a one-line failure where vLLM cannot run the recipe, vision special tokens
never sampled, and the weight sync when the engine runs on CPU (TRL's own sync on CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from trl import GRPOConfig, GRPOTrainer

from rl.answer_mask import answer_token_mask
from rl.batching import GenerationBatch, generation_batch
from rl.curriculum import LEVELS
from rl.recipe import Stage


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

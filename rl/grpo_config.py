"""The GRPO recipe: ``trl.GRPOConfig`` plus the LoRA and curriculum fields, read from a YAML file
in rl/recipes/ with TRL's parser (open-r1's layout: any GRPOConfig field stands at the top level).

Defaults are the paper's (docs/paper.md: G = 8, lr 1e-6, temperature 1.0, per-stage β and γ) except
where a field says otherwise; rl/recipes/*.yaml hold the settings measured to work for a model size
(the tiny CPU model needs lr 2e-3 and full fine-tuning: rl/recipes/tiny-triage.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trl import GRPOConfig

RECIPES_DIR = Path(__file__).parent / "recipes"
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file given by path, or by name among rl/recipes/ (``tiny-attending``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    by_name = RECIPES_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
    if path.parent == Path(".") and by_name.is_file():
        return by_name
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no recipe {str(name_or_path)!r}: give a YAML path or one of {known}")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: which rows, how many passes over them, and its KL β / entropy γ."""

    name: str
    beta: float  # KL(π‖π_ref) coefficient
    gamma: float  # entropy bonus: loss -= γ · mean token entropy of the completions
    epochs: float = 1.0  # passes over the stage's rows
    # The share of the stage's rows replayed from the stages before it (rehearsal): a stage that
    # never shows an earlier stage's kind of case can wipe out what that stage taught (measured on
    # the attending: rl/recipes/tiny-attending.yaml). 0: the stage's own rows only (the paper).
    replay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"stage {self.name}: replay must be in [0, 1), got {self.replay}")


# The paper's per-stage coefficients: more KL and more entropy as the cases get harder, so the
# policy keeps exploring where the specialists mislead it.
PAPER_STAGES: tuple[Stage, ...] = (
    Stage("easy", beta=1e-3, gamma=1e-4),
    Stage("medium", beta=4e-3, gamma=5e-3),
    Stage("hard", beta=1e-2, gamma=3e-2),
)
# Without curriculum all rows form one shuffled stage; it takes the middle stage's coefficients.
MIXED_STAGE = Stage("mixed", beta=4e-3, gamma=5e-3)


@dataclass
class GRPORecipe(GRPOConfig):
    """Everything one GRPO training run needs besides its data: every ``trl.GRPOConfig`` field (its
    defaults, except the paper's / this project's below) and the fields GRPOConfig lacks.

    ``finetune``: ``lora`` (default; the adapter is saved and served on top of ``model``) or ``full``
    (every weight trains and a whole checkpoint is saved). LoRA on the ~0.3M-parameter tiny model
    has too little capacity to learn the synthetic task in minutes, so its recipe uses ``full``.
    ``completions_per_step`` is the number of completions per optimizer step and process (prompts × G),
    generated at once and split into ``gradient_accumulation_steps`` micro-batches (it sets
    ``per_device_train_batch_size``); with N processes a step trains on N times as many
    (rl/batching.py computes the global generation batch).
    """

    role: Literal["triage", "attending"] = "attending"
    model: str = ""
    finetune: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # "language_model": LoRA adapts those projections in the language model only (the vision tower's
    # MLP has gate_proj/up_proj/down_proj too, and vLLM's LoRA serving does not apply adapters
    # there); "all": wherever the names match.
    lora_scope: Literal["language_model", "all"] = "language_model"
    # Parameter-name prefixes kept frozen under full fine-tuning. Adam moves every trained weight by
    # about the learning rate each step, whatever the size of its gradient; weights whose gradient
    # is mostly noise (the token embeddings, the vision tower) then random-walk away at the high rates
    # the tiny model needs, so its recipe freezes them.
    freeze: list[str] = field(default_factory=list)
    completions_per_step: int = 128
    # "answer": the policy-gradient and entropy terms act on the answer's tokens only (the decision);
    # the KL term still acts on every token. For the tiny model, whose <think> only repeats what its
    # format warm-up taught, the reward says nothing about those tokens, and their gradient is noise
    # that breaks the format at the learning rates it needs. "all": every completion token (the
    # paper). CurriculumGRPOTrainer (answer_tokens_only) applies it.
    policy_tokens: Literal["all", "answer"] = "all"
    # None: the curriculum for the attending (the paper) and one mixed stage for triage.
    curriculum: bool | None = None
    stages: list[Stage] = field(default_factory=lambda: list(PAPER_STAGES))
    mixed_stage: Stage = MIXED_STAGE
    # > 0: that share of the rows is held out and scored greedily during training (accuracy by
    # difficulty, max_completion_length new tokens) every eval_steps steps (0: at the end only)
    eval_fraction: float = 0.0
    progress_bar: bool = True

    # GRPOConfig fields whose default differs from TRL's
    lr_scheduler_type: str = "constant"
    max_completion_length: int | None = 256
    # < 1 (TRL's option): the policy-gradient (and entropy) terms act only on that top fraction of
    # tokens by entropy. TRL's loss aggregation: "grpo" (default) averages each completion's token
    # losses over its own length, then over the completions: the paper's J_GRPO. TRL's own default
    # is "dapo" (token-level normalisation over the batch); a recipe may choose it or another
    # (recorded in the run).
    loss_type: str = "grpo"
    # The KL term is the paper's (GRPO's k3 estimator exp(r) - r - 1, r = log π_ref - log π, per
    # token). TRL 1.16 multiplies it by the importance ratio by default (DeepSeek-V3.2's bias
    # correction, which changes its gradient even on-policy); False keeps the paper's term.
    use_bias_correction_kl: bool = False
    seed: int = 0
    # TRL defaults it on; off unless a recipe turns it on (the 7B recipe does)
    gradient_checkpointing: bool = False
    eval_steps: float | None = 0  # the held-out scoring's period (EvalAccuracy), not transformers' eval loop
    save_steps: float = 0  # 0: no intermediate checkpoints
    bf16: bool | None = None  # None: on a GPU that has bf16 (TRL: whenever fp16 is off, CPU included)

    def __post_init__(self) -> None:
        import torch

        if self.curriculum is None:
            self.curriculum = self.role == "attending"
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        if not isinstance(self.mixed_stage, Stage):
            self.mixed_stage = Stage(**self.mixed_stage)
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.completions_per_step % self.num_generations:
            raise ValueError(
                f"completions_per_step ({self.completions_per_step}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )
        if self.completions_per_step % self.gradient_accumulation_steps:
            raise ValueError("completions_per_step must be a multiple of gradient_accumulation_steps")
        if self.policy_tokens not in ("all", "answer"):
            raise ValueError(f"policy_tokens must be 'all' or 'answer', got {self.policy_tokens!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.lora_scope not in ("language_model", "all"):
            raise ValueError(f"lora_scope must be 'language_model' or 'all', got {self.lora_scope!r}")
        if len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError("stage names must be unique")
        self.per_device_train_batch_size = self.completions_per_step // self.gradient_accumulation_steps
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        self.use_cpu = self.use_cpu or not torch.cuda.is_available()
        self.save_strategy = "steps" if self.save_steps > 0 else "no"
        self.disable_tqdm = not self.progress_bar
        # as given: GRPOConfig derives the one from the other, and refuses both given
        self._given_batch = {
            "generation_batch_size": self.generation_batch_size,
            "steps_per_generation": self.steps_per_generation,
        }
        super().__post_init__()

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per optimizer step and process (a single process: the generation batch)."""
        return self.completions_per_step // self.num_generations

    def to_dict(self) -> dict[str, Any]:
        """Every field (enums as values, stages as mappings): ``GRPORecipe(**recipe.to_dict())``
        rebuilds the recipe."""
        data = {**super().to_dict(), **self._given_batch}
        data.update({k: getattr(self, k) for k in data if k.endswith("_token")})  # not masked: rebuildable
        data["stages"] = [vars(s).copy() for s in self.stages]
        data["mixed_stage"] = vars(self.mixed_stage).copy()
        return data

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> GRPORecipe:
        """Read a recipe file (by path or name) with TRL's parser; ``overrides`` (e.g. from the
        command line; None: not given) win over the file."""
        import yaml
        from trl import TrlParser

        path = recipe_path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe is a mapping of field: value")
        parser = TrlParser(cls)
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = parser.set_defaults_with_config(**{**data, **given})
        if unknown:
            raise ValueError(
                f"{path}: unknown recipe fields {[k.removeprefix('--') for k in unknown[::2]]}: neither "
                "recipe fields nor trl.GRPOConfig fields"
            )
        (recipe,) = parser.parse_args_into_dataclasses(args=[])
        return recipe

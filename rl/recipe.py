"""What a training run is configured with, in open-r1's layout: one YAML recipe (rl/recipes/) read
by TRL's parser into three dataclasses, any field of which the command line can set too
(rl/grpo.py ``parse_args``):

- :class:`GRPORecipe`: ``trl.GRPOConfig`` plus the curriculum (stages with their KL β and entropy
  γ), the batch per optimizer step and the format SFT section;
- :class:`PolicyModelConfig`: ``trl.ModelConfig`` (the model to start from, its dtype, attention
  implementation, LoRA) plus which parameters LoRA adapts or full fine-tuning freezes;
- the run's own arguments (role, data source, output folder: rl/grpo.py ``TrainArguments``).

Defaults are the paper's (docs/paper.md: G = 8, lr 1e-6, temperature 1.0, per-stage β and γ, LoRA on
the language model). The recipes hold settings only; docs/learning.md holds what was measured to
choose the tiny recipes' (the tiny CPU model needs lr 2e-3 and full fine-tuning).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from trl import GRPOConfig, ModelConfig, SFTConfig

RECIPES_DIR = Path(__file__).parent / "recipes"
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's

# GRPOConfig fields the trainer sets itself, and where their values come from: a recipe that sets
# one is refused (it would be ignored).
TRAINER_OWNED = {
    "beta": "each stage's beta (stages:, mixed_stage:)",
    "entropy_coef": "each stage's gamma (stages:, mixed_stage:)",
    "per_device_train_batch_size": "completions_per_step / gradient_accumulation_steps",
    "num_train_epochs": "each stage's epochs (the ordered rows hold every pass)",
    "shuffle_dataset": "the curriculum's order (rl/curriculum.py shuffles a mixed stage once)",
    "save_strategy": "save_steps (0: no intermediate checkpoints)",
    "disable_tqdm": "progress_bar",
}
# SFTConfig fields the format SFT sets itself.
FORMAT_SFT_OWNED = {"output_dir": "the run's --out (<out>/format_sft)"}


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
    # never shows an earlier stage's kind of case can wipe out what that stage taught
    # (docs/learning.md). 0: the stage's own rows only (the paper).
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
class PolicyModelConfig(ModelConfig):
    """The model to start from and how it trains: ``trl.ModelConfig`` with this project's defaults
    (LoRA on, the paper's, on every projection of the language model).

    ``model_name_or_path``: None under ``mmedagent train`` means the role's served model (its adapter
    merged in first). ``dtype`` None: float32 on CPU, the checkpoint's own ("auto") on a GPU.
    ``dtype``, ``attn_implementation`` and ``model_revision`` reach ``from_pretrained``
    (rl/models.py ``model_init_kwargs``), as a recipe's ``model_init_kwargs`` do.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"aliases": ["--model"], "help": "the model to start from"}
    )
    dtype: str | None = None
    use_peft: bool = True
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = field(
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_scope not in ("language_model", "all"):
            raise ValueError(f"lora_scope must be 'language_model' or 'all', got {self.lora_scope!r}")
        if self.freeze and self.use_peft:
            raise ValueError("freeze is for full fine-tuning (use_peft: false); LoRA trains its adapter only")


@dataclass
class GRPORecipe(GRPOConfig):
    """Everything one GRPO training run needs besides its data and model: every ``trl.GRPOConfig``
    field (its defaults, except the paper's / this project's below) and the fields GRPOConfig lacks.

    ``completions_per_step`` is the number of completions per optimizer step and process (prompts × G),
    generated at once and split into ``gradient_accumulation_steps`` micro-batches (it sets
    ``per_device_train_batch_size``); with N processes a step trains on N times as many
    (rl/batching.py computes the global generation batch). The fields of :data:`TRAINER_OWNED` are
    refused: the trainer sets them from the stages and the batch.
    """

    completions_per_step: int = 128
    # "answer": the policy-gradient and entropy terms act on the answer's tokens only (the decision);
    # the KL term still acts on every token (rl/trainer.py). "all": every completion token (the paper).
    policy_tokens: Literal["all", "answer"] = "all"
    # None: the curriculum for the attending (the paper) and one mixed stage for triage.
    curriculum: bool | None = None
    stages: list[Stage] = field(default_factory=lambda: list(PAPER_STAGES))
    mixed_stage: Stage = MIXED_STAGE
    # > 0: that share of the rows is held out and scored greedily during training (accuracy by
    # difficulty, max_completion_length new tokens) every eval_steps steps (0: at the end only)
    eval_fraction: float = 0.0
    progress_bar: bool = True
    # The format SFT before GRPO (rl/sft.py): trl.SFTConfig fields (max_steps, learning_rate,
    # per_device_train_batch_size, ...; its defaults where unset) plus use_peft (LoRA, merged into
    # the start of GRPO, or full fine-tuning). None or max_steps 0: none. A JSON object on the
    # command line.
    format_sft: dict | str | None = None

    # GRPOConfig fields whose default differs from TRL's
    output_dir: str | None = field(
        default=None, metadata={"aliases": ["--out", "-o"], "help": "the folder for the run and its policy"}
    )
    lr_scheduler_type: str = "constant"
    max_completion_length: int | None = 256
    # TRL's loss aggregation: "grpo" averages each completion's token losses over its own length,
    # then over the completions: the paper's J_GRPO (TRL's own default is "dapo").
    loss_type: str = "grpo"
    # The KL term is the paper's (GRPO's k3 estimator exp(r) - r - 1, r = log π_ref - log π, per
    # token). TRL 1.16 multiplies it by the importance ratio by default (DeepSeek-V3.2's bias
    # correction, which changes its gradient even on-policy); False keeps the paper's term.
    use_bias_correction_kl: bool = False
    seed: int = 0
    # TRL defaults it on; off unless a recipe turns it on (the 7B recipe does)
    gradient_checkpointing: bool = False
    eval_steps: float | None = (
        0  # the held-out scoring's period (rl/evaluation.py), not transformers' eval loop
    )
    save_steps: float = 0  # 0: no intermediate checkpoints
    bf16: bool | None = None  # None: on a GPU that has bf16 (TRL: whenever fp16 is off, CPU included)
    # Set by the trainer (TRAINER_OWNED); None here so that a recipe setting them can be told apart.
    beta: float | None = None
    entropy_coef: float | None = None
    per_device_train_batch_size: int | None = None
    num_train_epochs: float | None = None
    shuffle_dataset: bool | None = None
    save_strategy: str | None = None
    disable_tqdm: bool | None = None

    def __post_init__(self) -> None:
        import torch

        given = [name for name in TRAINER_OWNED if getattr(self, name) is not None]
        if given:
            raise ValueError(f"recipe sets {given[0]}: the trainer takes it from {TRAINER_OWNED[given[0]]}")
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        if not isinstance(self.mixed_stage, Stage):
            self.mixed_stage = Stage(**self.mixed_stage)
        self._check()
        self.format_sft = _format_sft_section(self.format_sft)
        self.beta = self.entropy_coef = 0.0  # CurriculumGRPOTrainer sets them from the stages in use
        self.per_device_train_batch_size = self.completions_per_step // self.gradient_accumulation_steps
        self.num_train_epochs = 1
        self.shuffle_dataset = False
        self.save_strategy = "steps" if self.save_steps > 0 else "no"
        self.disable_tqdm = not self.progress_bar
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        self.use_cpu = self.use_cpu or not torch.cuda.is_available()
        # as given: GRPOConfig derives the one from the other, and refuses both given
        self._given_batch = {
            "generation_batch_size": self.generation_batch_size,
            "steps_per_generation": self.steps_per_generation,
        }
        super().__post_init__()

    def _check(self) -> None:
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
        if len({s.name for s in self.stages}) != len(self.stages):
            raise ValueError("stage names must be unique")

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per optimizer step and process (a single process: the generation batch)."""
        return self.completions_per_step // self.num_generations

    def curriculum_for(self, role: str) -> bool:
        """Whether ``role`` trains in curriculum order: the recipe's choice, else the attending only."""
        return self.curriculum if self.curriculum is not None else role == "attending"

    def to_dict(self) -> dict[str, Any]:
        """The recipe's settings (enums as values, stages as mappings), without the fields the
        trainer sets: ``GRPORecipe(**recipe.to_dict())`` rebuilds it."""
        data = {**super().to_dict(), **self._given_batch}
        data.update({k: getattr(self, k) for k in data if k.endswith("_token")})  # not masked: rebuildable
        data["stages"] = [vars(s).copy() for s in self.stages]
        data["mixed_stage"] = vars(self.mixed_stage).copy()
        for name in TRAINER_OWNED:
            data.pop(name, None)
        return data

    def replace(self, **changes: Any) -> GRPORecipe:
        """A copy with ``changes`` (built anew, so every check and derived field follows them)."""
        return GRPORecipe(**{**self.to_dict(), **changes})


def _format_sft_section(section: dict | str | None) -> dict[str, Any] | None:
    """The format SFT section, checked: SFTConfig fields and use_peft only (None: no format SFT)."""
    if isinstance(section, str):
        section = json.loads(section)
    if section is not None and not isinstance(section, dict):
        raise ValueError("format_sft is a mapping of trl.SFTConfig fields")
    if not section or not section.get("max_steps"):
        return None
    known = {f.name for f in fields(SFTConfig) if f.init} | {"use_peft"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"format_sft: unknown fields {unknown}: neither trl.SFTConfig fields nor use_peft")
    for name, source in FORMAT_SFT_OWNED.items():
        if name in section:
            raise ValueError(f"format_sft sets {name}: the run takes it from {source}")
    return dict(section)

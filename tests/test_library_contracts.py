"""Library contracts: every place in this project that relies on an internal (or an undocumented
behaviour) of TRL, transformers, datasets, gradio or vLLM, checked against the INSTALLED versions.

This file is the list. Each entry of ``CONTRACTS`` names the project place (file:function), the
library internal it relies on and what to check when it breaks; its check fails when the
installed library no longer has that internal or no longer behaves as the place assumes
(signatures, parent methods still calling our overrides, re-declared dataclass fields still in
their parent, TRL's batch arithmetic, ...). When a library upgrade fails an entry, fix the named
place (and then the entry); do not loosen the check. A new use of a library internal anywhere in
the project gets an entry here.

Fast: no model is loaded; the imports take most of the time.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

# --- helpers --------------------------------------------------------------------------------------


def _params(func: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(func).parameters)


def _same_params(func: Callable[..., Any], expected: Iterable[str]) -> None:
    """An override (or a positional call): the parameters must be exactly these, in this order."""
    got, want = _params(func), list(expected)
    assert got == want, f"{func.__qualname__} parameters are {got}, the project expects {want}"


def _accepts(func: Callable[..., Any], names: Iterable[str]) -> None:
    """A call by keyword: every name must still be a parameter (or absorbed by ``**kwargs``)."""
    sig = inspect.signature(func)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    missing = [n for n in names if n not in sig.parameters]
    assert not missing, f"{func.__qualname__} no longer takes {missing} (parameters: {list(sig.parameters)})"


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _mentions(obj: Any, *snippets: str) -> None:
    src = _source(obj)
    missing = [s for s in snippets if s not in src]
    assert not missing, f"the source of {obj.__qualname__} no longer contains {missing}"


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _own_annotations(cls: type) -> list[str]:
    return list(inspect.get_annotations(cls))  # its own, not inherited


def _grpo_trainer() -> Any:
    pytest.importorskip("trl")
    from trl import GRPOTrainer

    return GRPOTrainer


def _grpo_module() -> Any:
    """The namespace GRPOTrainer's own code looks names up in (what it really calls)."""
    return sys.modules[_grpo_trainer().__module__]


def _vllm() -> Any:
    return pytest.importorskip("vllm")


def _gradio() -> Any:
    return pytest.importorskip("gradio")


# --- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contract:
    place: str  # the project place that relies on the internal (file:function)
    internal: str  # the library internal relied on
    fix: str  # what to check / change when it breaks
    check: Callable[[SimpleNamespace], None]

    @property
    def id(self) -> str:
        return f"{self.place} -> {self.internal}"


CONTRACTS: list[Contract] = []


def contract(place: str, internal: str, fix: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def register(check: Callable[..., None]) -> Callable[..., None]:
        CONTRACTS.append(Contract(place, internal, fix, check))
        return check

    return register


# ===== TRL: GRPOTrainer (rl/trainer.py) ===========================================================


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._generate_and_score_completions",
    "GRPOTrainer._generate_and_score_completions(self, inputs), called once per generation batch "
    "by _prepare_inputs, its output buffered with split_tensor_dict/shuffle_sequence_dict",
    "the stage (β, γ) is set per generation batch here and answer_mask is added to its output: "
    "find where TRL now generates and buffers, and move the override there",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _same_params(trainer._generate_and_score_completions, ["self", "inputs"])
    _mentions(
        trainer._prepare_inputs,
        "self._generate_and_score_completions(generation_batch)",
        "shuffle_sequence_dict(",
        "split_tensor_dict(",
        "self.args.steps_per_generation * self.num_iterations",
    )
    # it returns a dict with completion_ids (answer_token_mask reads it); training is told apart by
    # model.training (the stage is only set in training)
    _mentions(
        trainer._generate_and_score_completions, '"completion_ids": completion_ids', "self.model.training"
    )


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._generate_and_score_completions (answer_mask)",
    "trl.trainer.utils shuffle_sequence_dict / split_tensor_dict / split_pixel_values_by_grid carry "
    "every tensor key of the generation output, rows aligned",
    "answer_mask (an extra key of the output) must reach _compute_loss with its rows matching "
    "completion_ids: if TRL now filters keys, pass the mask another way",
)
def _(ctx: SimpleNamespace) -> None:
    import torch

    g = _grpo_module()
    rows = torch.arange(12).unsqueeze(1).repeat(1, 3)
    batch = {"completion_ids": rows.clone(), "answer_mask": rows.clone() * 10}
    batch = g.split_pixel_values_by_grid(batch)
    torch.manual_seed(0)
    shuffled = g.shuffle_sequence_dict(batch)
    assert set(shuffled) == {"completion_ids", "answer_mask"}, f"keys after shuffling: {set(shuffled)}"
    assert torch.equal(shuffled["answer_mask"], shuffled["completion_ids"] * 10), "rows shuffled apart"
    chunks = [g.unsplit_pixel_values_by_grid(c) for c in g.split_tensor_dict(shuffled, 3)]
    assert len(chunks) == 3 and all(set(c) == {"completion_ids", "answer_mask"} for c in chunks)
    assert all(torch.equal(c["answer_mask"], c["completion_ids"] * 10) for c in chunks)


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._calculate_rewards",
    "GRPOTrainer._calculate_rewards(self, inputs, prompts, completions, completion_ids_list), called "
    "by _generate_and_score_completions, returning rewards gathered over every process",
    "_log_stage zips these rewards with the gathered difficulty levels (strict): if TRL no longer "
    "calls it, renames it or stops gathering, reward_by_difficulty breaks",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _same_params(
        trainer._calculate_rewards, ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    )
    _mentions(
        trainer._generate_and_score_completions,
        "self._calculate_rewards(inputs, prompts, completions, completion_ids_list)",
    )
    src = _source(trainer._calculate_rewards)
    assert re.search(r"rewards_per_func = gather\(rewards_per_func\)\s+return rewards_per_func", src), (
        "GRPOTrainer._calculate_rewards no longer returns gather(rewards_per_func)"
    )


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._compute_loss",
    "GRPOTrainer._compute_loss(self, model, inputs), called by compute_loss with the buffered inputs",
    "the override reads inputs['answer_mask'] before TRL's loss: find TRL's new loss entry point",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _same_params(trainer._compute_loss, ["self", "model", "inputs"])
    _mentions(trainer.compute_loss, "self._compute_loss(model, inputs)")


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._set_stage",
    "GRPOTrainer._compute_loss reads self.beta and self.entropy_coef at loss time (not args.*)",
    "the per-stage KL β and entropy γ are set on the trainer per batch: if TRL reads them from args "
    "(or caches them), every stage silently trains with the construction-time maximum",
)
def _(ctx: SimpleNamespace) -> None:
    loss = _grpo_trainer()._compute_loss
    _mentions(loss, "self.beta * per_token_kl", "if self.beta != 0.0:", "apply_coef = self.entropy_coef")
    read_from_args = re.findall(r"self\.args\.(?:beta|entropy_coef)\b", _source(loss))
    assert not read_from_args, f"GRPOTrainer._compute_loss now reads {read_from_args}"


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer.__init__",
    "GRPOTrainer.__init__ decides from args.beta / args.entropy_coef whether a reference model and "
    "the entropy term exist (self.beta = args.beta; _entropy_bonus_enabled)",
    "the trainer passes the maximum stage β/γ so both exist: if TRL decides elsewhere (or the "
    "entropy flag is renamed), a stage with β>0 may run without a reference model",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _mentions(
        trainer.__init__,
        "self.beta = args.beta",
        "if self.beta == 0.0:",
        "self.entropy_coef = args.entropy_coef",
        "self._entropy_bonus_enabled = self.entropy_coef != 0.0",
        "self.use_adaptive_entropy = args.use_adaptive_entropy",
        "self.top_entropy_quantile = args.top_entropy_quantile",
    )
    _mentions(trainer._compute_loss, "if self._entropy_bonus_enabled:")


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._set_stage (adaptive entropy)",
    "with use_adaptive_entropy, GRPOTrainer._compute_loss moves self.entropy_coef itself",
    "the trainer keeps a stage's adapted γ between batches of the same stage (and on resume): if "
    "TRL keeps the controller elsewhere, _set_stage must set that instead",
)
def _(ctx: SimpleNamespace) -> None:
    _mentions(
        _grpo_trainer()._compute_loss,
        'if self.use_adaptive_entropy and mode == "train":',
        "self.entropy_coef = min(",
        "self.entropy_coef = max(",
    )


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer.get_high_entropy_mask / __init__ (top_entropy_quantile = 0.0)",
    "GRPOTrainer.get_high_entropy_mask(self, entropies, mask, threshold), called by _compute_loss "
    "when self.top_entropy_quantile < 1.0, its mask applied to the policy loss and the entropy bonus",
    "policy_tokens: answer routes the answer-only mask through this hook: if TRL renames it or "
    "stops calling it, the policy gradient silently covers every token again",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _same_params(trainer.get_high_entropy_mask, ["self", "entropies", "mask", "threshold"])
    _mentions(
        trainer._compute_loss,
        "if self.top_entropy_quantile < 1.0:",
        "self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)",
        "per_token_loss = per_token_loss * entropy_mask",
        "mask * entropy_mask",  # the entropy bonus acts on the same tokens
    )


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._log_stage",
    "GRPOTrainer._metrics['train'] (per-key lists averaged and cleared by log) and self.reward_weights",
    "curriculum/* and reward_by_difficulty/* metrics are appended there: if TRL renames _metrics "
    "or reward_weights, _log_stage fails (or its metrics vanish)",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _mentions(
        trainer.__init__,
        'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}',
        "self.reward_weights = torch.",
    )
    _mentions(trainer.log, "for key, val in self._metrics[mode].items():", "self._metrics[mode].clear()")


@contract(
    "rl/evaluation.py:EvalAccuracy._score",
    "GRPOTrainer.log files its buffered metrics under 'train' or 'eval' by self.model.training",
    "the eval accuracy is logged with the model in eval mode so the train metrics are not flushed "
    "into (and averaged with) it: if TRL picks the mode otherwise, change _score",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    _accepts(trainer.log, ["logs"])
    _mentions(trainer.log, 'mode = "train" if self.model.training else "eval"', 'metrics = {f"eval_{key}"')


@contract(
    "rl/trainer.py:CurriculumGRPOTrainer._setup_vllm",
    "GRPOTrainer.vllm_generation (trl.generation.vllm_generation.VLLMGeneration), its "
    "generation_kwargs dict merged into vLLM's SamplingParams, and sync_weights called on the instance",
    "the vision-token logit_bias goes through generation_kwargs and the CPU sync replaces the "
    "instance's sync_weights: if TRL builds SamplingParams without it, images break generation",
)
def _(ctx: SimpleNamespace) -> None:
    trainer = _grpo_trainer()
    from trl.generation.vllm_generation import VLLMGeneration

    _mentions(trainer.__init__, "self.vllm_generation = VLLMGeneration(", "self.use_vllm = args.use_vllm")
    _mentions(trainer, "self.vllm_generation.sync_weights()")
    _mentions(
        VLLMGeneration.__init__,
        "self.generation_kwargs = generation_kwargs",
        "self.mode = mode",
        "self.enable_sleep_mode = enable_sleep_mode",
    )
    _mentions(
        VLLMGeneration.generate,
        "generation_kwargs.update(self.generation_kwargs)",
        "SamplingParams(**generation_kwargs)",
        '"generation_kwargs": self.generation_kwargs',
    )


@contract(
    "rl/vllm_sync.py:sync_weights_on_cpu / install_cpu_weight_sync",
    "VLLMGeneration._iter_named_params(self), .llm, .sync_weights(self), colocate sync through "
    "llm.llm_engine.model_executor.driver_worker.model_runner",
    "the CPU weight sync streams TRL's own parameter iterator into vLLM's reload_weights: if TRL "
    "renames the iterator or reaches the model another way, follow it",
)
def _(ctx: SimpleNamespace) -> None:
    _grpo_trainer()
    from trl.generation.vllm_generation import VLLMGeneration

    _same_params(VLLMGeneration._iter_named_params, ["self"])
    _same_params(VLLMGeneration.sync_weights, ["self"])
    assert inspect.isgeneratorfunction(VLLMGeneration._iter_named_params), (
        "_iter_named_params no longer yields"
    )
    _mentions(VLLMGeneration._init_vllm, "self.llm = LLM(")
    _mentions(
        VLLMGeneration.sync_weights,
        "for name, param in self._iter_named_params():",
        "self.llm.llm_engine.model_executor.driver_worker.model_runner",
    )


@contract(
    "rl/batching.py:generation_batch / rl/trainer.py:run_generation_batch",
    "GRPOConfig.__post_init__'s generation_batch_size / steps_per_generation arithmetic (world_size)",
    "rl/batching.py copies TRL's formula to pad curriculum stages for N processes: update it to "
    "TRL's new arithmetic (run_generation_batch would also refuse to train)",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from trl import GRPOConfig

    from rl.batching import generation_batch

    cases = [  # (per device, accumulation, G, steps_per_generation, generation_batch_size)
        (16, 2, 8, None, None),
        (16, 2, 8, 4, None),
        (8, 4, 8, None, 256),
        (4, 1, 2, 3, None),
    ]
    for processes in (1, 8):
        config_cls = type(
            f"GRPOConfigOn{processes}", (GRPOConfig,), {"world_size": property(lambda s, n=processes: n)}
        )
        for per_device, accum, g, spg, gbs in cases:
            args = config_cls(
                output_dir=str(ctx.tmp_path), per_device_train_batch_size=per_device,
                gradient_accumulation_steps=accum, num_generations=g, steps_per_generation=spg,
                generation_batch_size=gbs, use_cpu=True, report_to="none",
            )  # fmt: skip
            assert args.world_size == processes
            ours = generation_batch(
                processes=processes, per_device_train_batch_size=per_device,
                gradient_accumulation_steps=accum,
                num_generations=g, steps_per_generation=spg, generation_batch_size=gbs,
            )  # fmt: skip
            got = (args.generation_batch_size, args.steps_per_generation)
            want = (ours.completions, ours.steps_per_generation)
            assert got == want, (
                f"{processes} processes, {per_device=} {accum=} {spg=} {gbs=}: TRL {got}, ours {want}"
            )


@contract(
    "rl/batching.py (module docstring) / rl/curriculum.py:stage_spans",
    "GRPOTrainer._get_train_sampler: RepeatSampler walks the dataset in order (shuffle_dataset off) "
    "in chunks of generation_batch_size / num_generations prompts, drops a last incomplete chunk",
    "stages are padded to whole chunks so a generation batch holds one stage: if TRL samples "
    "otherwise, a batch may mix stages (CurriculumGRPOTrainer._set_stage would then raise)",
)
def _(ctx: SimpleNamespace) -> None:
    from rl.batching import generation_batch

    trainer = _grpo_trainer()
    _same_params(trainer._get_train_sampler, ["self", "dataset"])
    gen = generation_batch(
        processes=2, per_device_train_batch_size=4, gradient_accumulation_steps=1, num_generations=2,
        steps_per_generation=2,
    )  # fmt: skip
    fake = SimpleNamespace(
        num_generations=2,
        num_iterations=1,
        shuffle_dataset=False,
        args=SimpleNamespace(generation_batch_size=gen.completions, steps_per_generation=2, seed=0),
    )
    dataset = list(range(2 * gen.prompts + 3))  # two whole chunks and an incomplete one
    order = list(trainer._get_train_sampler(fake, dataset))
    blocks = [order[i : i + gen.completions] for i in range(0, len(order), gen.completions)]
    repeat = 2  # num_iterations × steps_per_generation: the dataloader's batches of one generation
    assert len(blocks) == 2 * repeat, f"{len(blocks)} generation batches, expected {2 * repeat}"
    for k, block in enumerate(blocks):
        chunk = k // repeat
        want = list(range(chunk * gen.prompts, (chunk + 1) * gen.prompts))
        assert sorted(set(block)) == want, (
            f"generation batch {k} holds prompts {sorted(set(block))}, not {want}"
        )
        assert all(block.count(i) == 2 for i in want), (
            f"generation batch {k}: not num_generations copies each"
        )


# ===== TRL: configs (rl/recipe.py, rl/models.py) ==================================================

# Fields GRPORecipe / PolicyModelConfig add (TRL lacks them). Every other field they declare
# re-declares a TRL field with another default, and must still exist in TRL: otherwise the setting
# silently stops reaching TRL. A new project field goes here; a new re-declaration needs nothing.
RECIPE_OWN_FIELDS = {
    "completions_per_step",
    "policy_tokens",
    "curriculum",
    "stages",
    "mixed_stage",
    "eval_fraction",
    "progress_bar",
    "format_sft",
}
MODEL_CONFIG_OWN_FIELDS = {"lora_scope", "freeze"}


def _redeclared(child: type, parent: type, own: set[str]) -> None:
    declared = _own_annotations(child)
    parent_fields = _field_names(parent)
    gone = [n for n in declared if n not in own and n not in parent_fields]
    assert not gone, (
        f"{child.__name__} re-declares {gone}, which {parent.__name__} no longer has (the setting "
        f"reaches nothing): drop or rename them (a new field of ours: add it to the test's own-fields list)"
    )
    clash = sorted(own & parent_fields)
    assert not clash, f"{parent.__name__} now has fields named like ours: {clash} (ours shadow TRL's)"
    undeclared = sorted(own - set(declared))
    assert not undeclared, f"the test lists {undeclared} as {child.__name__}'s own but it declares none"
    redeclared = [n for n in declared if n in parent_fields]
    assert redeclared, f"{child.__name__} re-declares no {parent.__name__} field: is it still a subclass?"


@contract(
    "rl/recipe.py:GRPORecipe",
    "trl.GRPOConfig fields re-declared with the project's defaults (loss_type, use_bias_correction_kl, "
    "beta, entropy_coef, output_dir, ...)",
    "a re-declared field TRL dropped silently stops reaching TRL (e.g. use_bias_correction_kl: the "
    "KL term changes without an error): follow TRL's rename in rl/recipe.py",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from trl import GRPOConfig

    from rl.recipe import GRPORecipe

    _redeclared(GRPORecipe, GRPOConfig, RECIPE_OWN_FIELDS)
    _mentions(_grpo_trainer()._compute_loss, "if self.args.use_bias_correction_kl:")


@contract(
    "rl/recipe.py:PolicyModelConfig",
    "trl.ModelConfig fields re-declared with the project's defaults (model_name_or_path, dtype, "
    "use_peft, lora_dropout, lora_target_modules)",
    "a re-declared field TRL dropped silently stops reaching get_peft_config / from_pretrained",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from trl import ModelConfig

    from rl.recipe import PolicyModelConfig

    _redeclared(PolicyModelConfig, ModelConfig, MODEL_CONFIG_OWN_FIELDS)


@contract(
    "rl/recipe.py:TRAINER_OWNED / FORMAT_SFT_OWNED / LOSS_TYPES, rl/models.py:MODEL_INIT_FIELDS, "
    "rl/trainer.py, rl/evaluation.py, rl/grpo.py",
    "trl.GRPOConfig / SFTConfig / ModelConfig fields the project reads or sets by name; "
    "GRPOConfig's supported loss_type values",
    "a field TRL renamed makes the trainer fail (or a guard against recipes setting it useless): "
    "follow the rename in the named place",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from trl import GRPOConfig, ModelConfig, SFTConfig

    from rl.models import MODEL_INIT_FIELDS
    from rl.recipe import FORMAT_SFT_OWNED, LOSS_TYPES, TRAINER_OWNED

    read = {
        "use_vllm", "vllm_mode", "vllm_enable_sleep_mode", "top_entropy_quantile", "use_adaptive_entropy",
        "entropy_target", "ds3_gather_for_generation", "gradient_checkpointing_kwargs", "model_init_kwargs",
        "generation_batch_size", "steps_per_generation", "num_iterations", "num_generations",
        "gradient_accumulation_steps", "max_completion_length", "use_cpu", "reward_weights", "loss_type",
    }  # fmt: skip
    grpo = _field_names(GRPOConfig)
    missing = sorted((read | set(TRAINER_OWNED)) - grpo)
    assert not missing, f"GRPOConfig lacks {missing}"
    assert set(FORMAT_SFT_OWNED) <= _field_names(SFTConfig), f"SFTConfig lacks {set(FORMAT_SFT_OWNED)}"
    model_read = set(MODEL_INIT_FIELDS) | {"model_name_or_path", "use_peft", "lora_target_modules", "lora_r"}
    assert model_read <= _field_names(ModelConfig), (
        f"ModelConfig lacks {sorted(model_read - _field_names(ModelConfig))}"
    )
    help_text = next(f for f in fields(GRPOConfig) if f.name == "loss_type").metadata["help"]
    supported = re.search(r"Supported values are (.*?)\.", help_text)
    assert supported, "GRPOConfig.loss_type's help no longer lists the supported values"
    trl_types = set(re.findall(r"'(\w+)'", supported.group(1)))
    assert trl_types == set(LOSS_TYPES), f"TRL's loss types {sorted(trl_types)}, rl/recipe.py's {LOSS_TYPES}"


@contract(
    "rl/recipe.py:GRPORecipe.to_dict",
    "transformers TrainingArguments.to_dict masks fields ending in '_token'",
    "to_dict puts the *_token values back so GRPORecipe(**recipe.to_dict()) rebuilds it: if the "
    "masking changes, revisit that line",
)
def _(ctx: SimpleNamespace) -> None:
    from transformers import TrainingArguments

    _mentions(TrainingArguments.to_dict, 'k.endswith("_token")')


@contract(
    "rl/models.py:peft_config",
    "trl.get_peft_config(model_args) builds a LoraConfig from ModelConfig's lora_* fields",
    "the project sets target_modules on what it returns (lora_scope): follow TRL's new way",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    from trl import get_peft_config

    from rl.recipe import PolicyModelConfig

    _same_params(get_peft_config, ["model_args"])
    config = get_peft_config(PolicyModelConfig(model_name_or_path="m", lora_r=4, lora_alpha=8))
    assert (config.r, config.lora_alpha) == (4, 8), "get_peft_config ignores lora_r / lora_alpha"
    assert hasattr(config, "target_modules")


@contract(
    "rl/grpo.py:parse_args / rl/recipe.py (aliases) / app/commands/train.py (--no-register)",
    "trl.TrlParser.parse_args_and_config(args) with --config YAML (set_defaults_with_config), "
    "field metadata 'aliases', and --no_<field> / --no-<field> complements of True booleans",
    "--recipe, --out/-o, --model and --no-register are documented options: if TRL's parser drops "
    "aliases or complements, declare them another way in rl/recipe.py / rl/grpo.py",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from trl import TrlParser

    from rl.grpo import TrainArguments
    from rl.recipe import GRPORecipe, PolicyModelConfig

    _accepts(TrlParser.parse_args_and_config, ["args"])
    config = ctx.tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 0.25\nuse_peft: false\ncompletions_per_step: 16\n")
    for no_register in ("--no-register", "--no_register"):
        parser = TrlParser((TrainArguments, GRPORecipe, PolicyModelConfig), prog="contract")
        script, recipe, model = parser.parse_args_and_config(
            ["--config", str(config), "--out", str(ctx.tmp_path / "o"), "--model", "m", no_register,
             "--num_generations", "4"]
        )  # fmt: skip
        assert script.register is False, f"{no_register} did not turn register off"
        assert recipe.output_dir == str(ctx.tmp_path / "o"), "--out (alias of output_dir) ignored"
        assert model.model_name_or_path == "m", "--model (alias of model_name_or_path) ignored"
        assert recipe.learning_rate == 0.25 and model.use_peft is False, "the YAML config's values ignored"
        assert recipe.completions_per_step == 16 and recipe.num_generations == 4
    _, short, _ = TrlParser((TrainArguments, GRPORecipe, PolicyModelConfig)).parse_args_and_config(
        ["-o", str(ctx.tmp_path / "p")]
    )
    assert short.output_dir == str(ctx.tmp_path / "p"), "-o (alias of output_dir) ignored"


@contract(
    "rl/evaluation.py:trainer_per_case",
    "trl.models.utils.unwrap_model_for_generation(model, accelerator, gather_deepspeed3_params=, "
    "gradient_checkpointing_kwargs=), trl.distributed.DistributedBackend(accelerator)"
    ".summon_full_params(module, recurse=), Trainer.model_wrapped",
    "the held-out scoring generates inside TRL's own generation context: follow TRL's rename",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("trl")
    from transformers import Trainer
    from trl.distributed import DistributedBackend
    from trl.models.utils import unwrap_model_for_generation

    assert inspect.isfunction(unwrap_model_for_generation)
    assert _params(unwrap_model_for_generation)[:2] == ["model", "accelerator"]
    _accepts(unwrap_model_for_generation, ["gather_deepspeed3_params", "gradient_checkpointing_kwargs"])
    _same_params(DistributedBackend, ["accelerator"])
    assert _params(DistributedBackend.summon_full_params)[:2] == ["self", "module"]
    _accepts(DistributedBackend.summon_full_params, ["recurse"])
    _mentions(Trainer.__init__, "self.model_wrapped = model")


# ===== datasets ===================================================================================


@contract(
    "rl/datasets.py:_ArrowFile",
    "datasets.arrow_writer.ArrowWriter(features=, path=, writer_batch_size=) with write(example), "
    "finalize(), close(); Dataset.from_file(path)",
    "rows are streamed to a memory-mapped file through this private writer: follow datasets' move "
    "(or write with pyarrow's RecordBatchFileWriter / Dataset.from_generator)",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("datasets")
    from datasets import Dataset, Features, Value
    from datasets.arrow_writer import ArrowWriter

    _accepts(ArrowWriter, ["features", "path", "writer_batch_size"])
    assert _params(ArrowWriter.write)[:2] == ["self", "example"]
    path = str(ctx.tmp_path / "rows.arrow")
    writer = ArrowWriter(
        features=Features({"a": Value("string"), "n": Value("int64")}), path=path, writer_batch_size=2
    )
    rows = [{"a": "x", "n": 1}, {"a": "y", "n": 2}, {"a": "z", "n": 3}]
    for row in rows:
        writer.write(row)
    writer.finalize()
    writer.close()
    assert Dataset.from_file(path).to_list() == rows, "ArrowWriter + Dataset.from_file round trip changed"


@contract(
    "data/export.py:_dataset_card",
    "datasets.info.DatasetInfosDict().to_dataset_card_data(card_data)",
    "the hf export's dataset card is written the way push_to_hub writes it: follow datasets' move",
)
def _(ctx: SimpleNamespace) -> None:
    pytest.importorskip("datasets")
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo, Value
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    infos = DatasetInfosDict()
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_examples=3, num_bytes=10))
    infos["triage"] = DatasetInfo(features=Features({"a": Value("string")}), splits=splits)
    data = DatasetCardData()
    infos.to_dataset_card_data(data)
    assert "num_examples: 3" in data.to_yaml(), "the dataset info no longer reaches the card"


# ===== vLLM (rl/vllm_sync.py, app/backends/vllm.py) ===============================================


@contract(
    "rl/vllm_sync.py:sync_weights_on_cpu",
    "vLLM engine internals: LLMEngine.model_executor (in-process engine), UniProcExecutor.driver_worker "
    "(WorkerWrapperBase forwarding to the worker), CPUWorker.model_runner, "
    "model_runner.reload_weights(weights_iterator=, is_checkpoint_format=), "
    "LLMEngine.reset_encoder_cache(), LLM.reset_prefix_cache()",
    "the CPU weight sync reaches the model runner through this chain: follow vLLM's change",
)
def _(ctx: SimpleNamespace) -> None:
    _vllm()
    from vllm import LLM
    from vllm.platforms import current_platform
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.executor.uniproc_executor import UniProcExecutor
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    _mentions(LLMEngine.__init__, "self.model_executor =")
    _mentions(UniProcExecutor, "self.driver_worker = WorkerWrapperBase(")
    _mentions(WorkerWrapperBase.__getattr__, "return getattr(self.worker, attr)")
    _same_params(LLMEngine.reset_encoder_cache, ["self"])
    assert callable(LLM.reset_prefix_cache)
    if current_platform.is_cpu():
        from vllm.v1.worker import cpu_worker
        from vllm.v1.worker.cpu.model_runner import CPUModelRunner as RunnerV2
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    else:
        cpu_worker = pytest.importorskip("vllm.v1.worker.cpu_worker")
        CPUModelRunner = pytest.importorskip("vllm.v1.worker.cpu_model_runner").CPUModelRunner
        RunnerV2 = pytest.importorskip("vllm.v1.worker.cpu.model_runner").CPUModelRunner
    _mentions(cpu_worker.CPUWorker, "self.model_runner")
    for runner in (CPUModelRunner, RunnerV2):
        _accepts(runner.reload_weights, ["weights_iterator", "is_checkpoint_format"])


@contract(
    "rl/vllm_sync.py:vllm_on_cpu / unsupported_cpu_head_dim / vision_token_bias",
    "vllm.platforms.current_platform.is_cpu(), vllm.v1.attention.backends.cpu_attn."
    "CPUAttentionBackend.get_supported_head_sizes(), SamplingParams(logit_bias=)",
    "the one-line vLLM set-up checks and the vision-token bias: follow vLLM's change",
)
def _(ctx: SimpleNamespace) -> None:
    vllm = _vllm()
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert isinstance(current_platform.is_cpu(), bool)
    sizes = list(CPUAttentionBackend.get_supported_head_sizes())
    assert sizes and all(isinstance(s, int) for s in sizes), f"supported head sizes: {sizes}"
    assert vllm.SamplingParams(logit_bias={5: -100.0}).logit_bias == {5: -100.0}


@contract(
    "app/backends/vllm.py:VLLMEngine.close / _watch",
    "vLLM's LLMEngine.engine_core (SyncMPClient): shutdown(timeout=), resources.engine_manager.processes, "
    "outputs_queue whose Exception items get_output raises; vllm.v1.engine.exceptions.EngineDeadError",
    "_watch reads these through getattr and silently stops watching when one is gone (a dead engine "
    "core then hangs generate): follow vLLM's change",
)
def _(ctx: SimpleNamespace) -> None:
    _vllm()
    from vllm.v1.engine.core_client import BackgroundResources, MPClient, SyncMPClient
    from vllm.v1.engine.exceptions import EngineDeadError
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.engine.utils import CoreEngineProcManager

    assert issubclass(EngineDeadError, Exception)
    _mentions(LLMEngine.__init__, "self.engine_core = EngineCoreClient.make_client(")
    _accepts(SyncMPClient.shutdown, ["timeout"])
    _mentions(MPClient.__init__, "self.resources = BackgroundResources(")
    assert "engine_manager" in _field_names(BackgroundResources), "BackgroundResources.engine_manager gone"
    _mentions(CoreEngineProcManager.__init__, "self.processes")
    _mentions(SyncMPClient.__init__, "self.outputs_queue = queue.Queue")
    _mentions(SyncMPClient.get_output, "self.outputs_queue.get()", "if isinstance(outputs, Exception):")


# ===== gradio (ui/) ===============================================================================


@contract(
    "ui/safety.py:RefusedFilesAreNotFound / ui/app.py:launch (app_kwargs)",
    "gradio's file routes ('/file=<path>' and '/file/<path>', ui/file_access.py:requested_file) answer "
    "403 for a file they will not serve; "
    "launch(app_kwargs=) reaches the FastAPI app (middleware) and enters a user 'lifespan'",
    "the middleware turns that 403 into 404 and the lifespan removes the served files: if the route, "
    "its status or app_kwargs' handling changed, update ui/safety.py / ui/app.py",
)
def _(ctx: SimpleNamespace) -> None:
    gr = _gradio()
    from gradio.routes import App
    from starlette.middleware import Middleware
    from starlette.testclient import TestClient

    from ui.app import remove_on_shutdown
    from ui.safety import RefusedFilesAreNotFound

    _accepts(gr.Blocks.launch, ["app_kwargs", "max_file_size", "ssr_mode", "mcp_server", "show_error"])
    with gr.Blocks() as demo:
        gr.Markdown("contract")
    refused = Path("/etc/hostname") if Path("/etc/hostname").exists() else Path(__file__).resolve()
    statuses = []
    for middleware in ([], [Middleware(RefusedFilesAreNotFound)]):
        served = ctx.tmp_path / f"served-{len(middleware)}"
        served.mkdir()
        app = App.create_app(
            demo, app_kwargs={"middleware": middleware, "lifespan": remove_on_shutdown(served)}
        )
        with TestClient(app) as client:
            for route in (f"/gradio_api/file={refused}", f"/gradio_api/file/{refused}"):
                statuses.append(client.get(route).status_code)
        assert not served.exists(), "the user lifespan passed in app_kwargs was not run at shutdown"
    assert statuses == [403, 403, 404, 404], (
        f"file route statuses (file=, file/; plain, then with the middleware): {statuses}"
    )


@contract(
    "ui/chat.py:_verdict_row (key=)",
    "gradio @gr.render: an event listener with a key keeps its fn id across re-renders "
    "(BlocksConfig.set_event_trigger reuses it; Renderable.apply drops unkeyed ones)",
    "a verdict click sent just before the rows re-render must reach a live handler (gradio's "
    "route_utils.get_fn looks the fn id up): if keys stop keeping ids, find another way",
)
def _(ctx: SimpleNamespace) -> None:
    gr = _gradio()
    from gradio.context import LocalContext

    _accepts(gr.Button(render=False).click, ["key", "api_visibility"])
    with gr.Blocks() as demo:
        rows = gr.State(["a"])

        @gr.render(inputs=rows)
        def _rows(keys: list[str]) -> None:
            for k in keys:
                button = gr.Button(k, key=f"button-{k}")
                button.click(lambda: None, None, None, key=f"click-{k}")
                button.click(lambda: None, None, None)  # unkeyed: a new id each render

    config = demo.default_config
    renderable = config.renderables[0]

    def ids() -> dict[str | None, int]:
        return {fn.key: fn._id for fn in config.fns.values() if fn.rendered_in is renderable}

    token = LocalContext.blocks_config.set(config)
    try:
        renderable.apply(["a"])
        first = ids()
        renderable.apply(["b", "a"])
        second = ids()
    finally:
        LocalContext.blocks_config.reset(token)
    assert "click-a" in first and second.get("click-a") == first["click-a"], (
        f"the keyed listener's fn id changed across a re-render: {first} -> {second}"
    )
    assert second[None] != first[None], (
        "unkeyed listeners kept their id: the check no longer tells them apart"
    )


@contract(
    "ui/uploads.py:take_uploads",
    "gradio.utils.get_upload_folder(): the folder gradio's upload route (/gradio_api/upload) writes "
    "each file to (GRADIO_TEMP_DIR)",
    "uploads are deleted only under this folder: if gradio moves its cache, the chat stops deleting "
    "patient files (each is refused as 'outside the upload cache')",
)
def _(ctx: SimpleNamespace) -> None:
    gr = _gradio()
    from gradio.routes import App
    from gradio.utils import get_upload_folder
    from starlette.testclient import TestClient

    _same_params(get_upload_folder, [])
    cache = ctx.tmp_path / "uploads"
    ctx.monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    assert Path(get_upload_folder()) == cache, (
        f"get_upload_folder() is {get_upload_folder()}, not $GRADIO_TEMP_DIR"
    )
    with gr.Blocks() as demo:
        gr.File()
    demo.max_file_size = None  # what launch() sets before serving
    with TestClient(App.create_app(demo)) as client:
        response = client.post("/gradio_api/upload", files={"files": ("scan.png", b"\x89PNG\r\n\x1a\n")})
    assert response.status_code == 200, f"upload route answered {response.status_code}: {response.text[:200]}"
    written = [Path(p).resolve() for p in response.json()]
    assert written and all(p.is_relative_to(cache.resolve()) and p.is_file() for p in written), (
        f"gradio wrote the upload to {written}, not under get_upload_folder() ({cache})"
    )


@contract(
    "ui/app.py:build_app / launch (demo.served_files)",
    "gradio.Blocks takes a project attribute 'served_files' it does not define itself",
    "the app's served-files folder rides on the Blocks: if gradio defines served_files, rename ours",
)
def _(ctx: SimpleNamespace) -> None:
    gr = _gradio()
    with gr.Blocks() as demo:
        gr.Markdown("contract")
    assert not hasattr(demo, "served_files"), "gradio.Blocks now has its own served_files"
    demo.served_files = "x"
    assert demo.served_files == "x"


# --- the test ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", CONTRACTS, ids=lambda c: c.id[:150])
def test_library_contract(entry: Contract, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = SimpleNamespace(tmp_path=tmp_path, monkeypatch=monkeypatch)
    try:
        entry.check(ctx)
    except (AssertionError, AttributeError, ImportError, KeyError, TypeError, ValueError, OSError) as exc:
        pytest.fail(
            f"{entry.place} relies on {entry.internal}, which the installed version changed:\n"
            f"  {type(exc).__name__}: {exc}\n  what to do: {entry.fix}",
            pytrace=False,
        )


def test_the_list_covers_every_library_internal_import() -> None:
    """A project module importing a library's private module (or a private name) has an entry."""
    root = Path(__file__).resolve().parent.parent
    private = re.compile(
        r"^\s*from\s+((?:trl|transformers|datasets|gradio|vllm|accelerate|peft)\.[\w.]+)\s+import\s+(.+)$",
        re.M,
    )
    listed = " ".join(f"{c.place} {c.internal}" for c in CONTRACTS)
    unlisted = []
    for folder in ("app", "graph", "rl", "ui", "data", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            for module, names in private.findall(path.read_text()):
                for name in re.findall(r"\w+", names.split("#")[0]):
                    if name in ("as",) or (module, name) in PUBLIC_IMPORTS:
                        continue
                    if name not in listed and module not in listed:
                        unlisted.append(f"{path.relative_to(root)}: from {module} import {name}")
    assert not unlisted, f"library internals used without an entry in this file: {unlisted}"


# Submodule imports that are the libraries' documented public API.
PUBLIC_IMPORTS = {
    ("accelerate.utils", "gather_object"),
    ("vllm.lora.request", "LoRARequest"),
}


def test_entries_name_real_project_places() -> None:
    root = Path(__file__).resolve().parent.parent
    for entry in CONTRACTS:
        for path in re.findall(r"\b((?:app|graph|rl|ui|data|bench)/[\w/]+\.py)", entry.place):
            assert (root / path).is_file(), f"{entry.id}: {path} does not exist"
        assert entry.fix and entry.internal, entry.id
    assert len({c.id for c in CONTRACTS}) == len(CONTRACTS), "two entries share a place and internal"

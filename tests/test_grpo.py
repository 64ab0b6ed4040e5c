"""The curriculum GRPO trainer for real (TRL on the tiny checkpoint): stage order, per-stage β/γ,
the entropy term's size on a fixed batch, LoRA adapters, resume."""

from __future__ import annotations

import json

import pytest
import torch

from rl.answer_mask import answer_token_mask
from rl.datasets import row_images, synthetic_attending_rows
from rl.grpo import RUN_FILE, train_grpo
from rl.models import load_policy_model, model_init_kwargs
from rl.recipe import GRPORecipe, PolicyModelConfig, Stage
from rl.rewards import REWARD_FUNCS
from rl.trainer import CurriculumGRPOTrainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

STAGES = [Stage("easy", 0.1, 0.2), Stage("medium", 0.3, 0.4), Stage("hard", 0.5, 0.6)]


@pytest.fixture(scope="module")
def rows():
    """Two rows per difficulty, small images: each stage is one step of two prompts."""
    pool = synthetic_attending_rows(40, seed=4, size=56)
    return [
        r for level in ("hard", "easy", "medium") for r in [x for x in pool if x["difficulty"] == level][:2]
    ]


def _recipe(**kw) -> GRPORecipe:
    base = {
        "learning_rate": 1e-4,
        "num_generations": 4,
        "completions_per_step": 8,
        "max_completion_length": 6,
        "stages": STAGES,
        "logging_steps": 1,
        "progress_bar": False,
        "seed": 0,
    }
    return GRPORecipe(**{**base, **kw})


def _model(model, **kw) -> PolicyModelConfig:
    return PolicyModelConfig(**{"model_name_or_path": str(model), "use_peft": False, **kw})


def _train(recipe, model, rows, out, **kw):
    return train_grpo(recipe, model, "attending", rows, out, **kw)


def _trainer(recipe, model, dataset, out):
    return CurriculumGRPOTrainer(
        model=load_policy_model(model, model_init_kwargs(model, None)),
        reward_funcs=REWARD_FUNCS["attending"],
        args=recipe.replace(output_dir=str(out)),
        train_dataset=dataset,
        stages=recipe.stages,
        answer_tokens_only=recipe.policy_tokens == "answer",
    )


@pytest.mark.slow
def test_trainer_sees_easy_then_medium_then_hard_with_each_stages_beta_and_gamma(
    tiny_model_dir, rows, tmp_path
):
    result = _train(_recipe(report_to=["tensorboard"]), _model(tiny_model_dir), rows, tmp_path / "run")
    assert result.steps == 3
    assert [e["stage"] for e in result.stage_log] == ["easy", "medium", "hard"]
    assert [(e["beta"], e["gamma"]) for e in result.stage_log] == [(0.1, 0.2), (0.3, 0.4), (0.5, 0.6)]
    by_case = {r["case_id"]: r["difficulty"] for r in rows}
    for entry in result.stage_log:
        assert {by_case[c] for c in entry["case_ids"]} == {entry["stage"]}
    # TRL's own per-step logs show the coefficient the loss used, and a KL term
    logged = [h for h in json.loads((tmp_path / "run" / RUN_FILE).read_text())["log_history"] if "kl" in h]
    assert [h["entropy_coef"] for h in logged] == [0.2, 0.4, 0.6]
    assert (tmp_path / "run" / "policy" / "config.json").is_file()  # full fine-tune: a whole checkpoint
    # per step: stage, beta, gamma and reward by difficulty in training_run.json and TensorBoard
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert [(e["step"], e["stage"], e["beta"], e["gamma"]) for e in record["per_step"]] == [
        (1, "easy", 0.1, 0.2), (2, "medium", 0.3, 0.4), (3, "hard", 0.5, 0.6),
    ]  # fmt: skip
    assert [set(e["reward_by_difficulty"]) for e in record["per_step"]] == [
        {"all", "easy"}, {"all", "medium"}, {"all", "hard"},
    ]  # fmt: skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "run").rglob("events.out.tfevents*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    scalars = {
        tag: [(e.step, round(e.value, 6)) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]
    }
    assert scalars["train/curriculum/beta"] == [(1, 0.1), (2, 0.3), (3, 0.5)]
    assert scalars["train/curriculum/gamma"] == [(1, 0.2), (2, 0.4), (3, 0.6)]
    assert scalars["train/curriculum/stage"] == [(1, 0.0), (2, 1.0), (3, 2.0)]
    assert [s for s, _ in scalars["train/reward_by_difficulty/hard"]] == [3]
    assert result.serving == (str(tmp_path / "run" / "policy"), None)


@pytest.mark.slow
def test_no_curriculum_trains_one_mixed_stage(tiny_model_dir, rows, tmp_path):
    recipe = _recipe(curriculum=False, mixed_stage=Stage("mixed", 0.05, 0.07), max_steps=2)
    result = _train(recipe, _model(tiny_model_dir), rows, tmp_path / "run")
    assert result.steps == 2
    assert {(e["stage"], e["beta"], e["gamma"]) for e in result.stage_log} == {("mixed", 0.05, 0.07)}
    seen = [by for e in result.stage_log for by in e["case_ids"]]
    assert len(set(seen)) == 4  # two steps of two distinct prompts, from a shuffled mix


def _entropy_bonus_on_one_batch(recipe, model_dir, rows, tmp_path, completion: str | None = None):
    """(γ, loss without γ − loss with γ, per-token entropies, inputs) on one fixed generation batch;
    ``completion`` replaces every sampled completion (teacher forcing)."""
    from rl.curriculum import order_rows
    from rl.datasets import to_dataset

    ordered, _ = order_rows([r for r in rows if r["difficulty"] == "easy"], recipe.stages, batch=2)
    trainer = _trainer(recipe, _model(model_dir), to_dataset(ordered), tmp_path / "run")
    if completion is not None:  # sharper logits: token entropies then differ from one position to the next
        trainer.model.lm_head.weight.data *= 40
    batch = next(iter(trainer.get_train_dataloader()))  # one generation batch: 2 prompts × 4
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(batch)
    if completion is not None:
        ids = trainer.processing_class.tokenizer(completion)["input_ids"]
        width = inputs["completion_ids"].shape[1]  # the model's inputs are sized to it: keep it
        assert len(ids) <= width
        for key in ("old_per_token_logps", "sampling_per_token_logps", "ref_per_token_logps"):
            inputs.pop(key, None)
        inputs["completion_ids"][:] = torch.tensor(ids + [ids[-1]] * (width - len(ids)))
        inputs["completion_mask"][:] = torch.tensor([1] * len(ids) + [0] * (width - len(ids)))
        inputs["answer_mask"] = answer_token_mask(trainer.processing_class, inputs["completion_ids"])
    gamma = trainer.entropy_coef
    trainer.model.eval()  # the same fixed batch, no dropout, no accumulation scaling
    with torch.no_grad():
        with_bonus = trainer.compute_loss(trainer.model, inputs).item()
        trainer.entropy_coef = 0.0
        without = trainer.compute_loss(trainer.model, inputs).item()

        # the token entropies of the completions, computed here from the plain forward pass
        prompt, completion = inputs["prompt_ids"], inputs["completion_ids"]
        out = trainer.model(
            input_ids=torch.cat([prompt, completion], dim=1),
            attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
        )
        logits = out.logits[:, prompt.size(1) - 1 : -1].float() / recipe.temperature
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    return gamma, without - with_bonus, entropy, inputs


def test_entropy_term_changes_the_loss_by_gamma_times_mean_token_entropy(tiny_model_dir, rows, tmp_path):
    recipe = _recipe(stages=[Stage("easy", 0.0, 0.25)])
    gamma, change, entropy, inputs = _entropy_bonus_on_one_batch(recipe, tiny_model_dir, rows, tmp_path)
    assert gamma == 0.25  # set from the batch's stage
    mask = inputs["completion_mask"].float()
    mean_entropy = ((entropy * mask).sum() / mask.sum()).item()
    assert mean_entropy > 0.1  # a random-ish policy: the term is not vacuous
    assert change == pytest.approx(0.25 * mean_entropy, rel=1e-3, abs=1e-5)


def test_answer_token_mask_marks_the_answer_content_only(tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    texts = [
        "<think>image</think><answer> Surgeon</answer>",
        "<think>a</think><answer> Radiologist, Surgeon</answer>",
        "<think>answer</think>no tags",
    ]
    ids = processor.tokenizer(texts, padding=True, padding_side="right")["input_ids"]
    mask = answer_token_mask(processor, torch.tensor(ids))
    picked = [[t for t, m in zip(row, marks, strict=True) if m] for row, marks in zip(ids, mask, strict=True)]
    tokens = [processor.tokenizer.decode(p) for p in picked]
    assert tokens == [" Surgeon", " Radiologist, Surgeon", ""]


def test_answer_tokens_only_puts_the_entropy_term_on_the_answer(tiny_model_dir, rows, tmp_path):
    recipe = _recipe(stages=[Stage("easy", 0.0, 0.25)], policy_tokens="answer", max_completion_length=16)
    forced = "<think>image</think><answer> B</answer>"
    gamma, change, entropy, inputs = _entropy_bonus_on_one_batch(
        recipe, tiny_model_dir, rows, tmp_path, forced
    )
    answer = inputs["answer_mask"]
    assert answer.sum(-1).tolist() == [1.0] * len(answer)  # " B", one token per completion
    on_answer = ((entropy * answer).sum() / answer.sum()).item()
    mask = inputs["completion_mask"]
    everywhere = ((entropy * mask).sum() / mask.sum()).item()
    assert abs(on_answer - everywhere) > 1e-3  # differs from the all-token mean: the check can fail
    assert change == pytest.approx(gamma * on_answer, rel=2e-3, abs=1e-5)  # float32 noise: ~1e-3 measured


@pytest.mark.slow
def test_lora_is_the_default_and_its_adapter_serves(tiny_model_dir, rows, tmp_path):
    from app.backends.local import TransformersBackend
    from graph.protocol import ChatRequest, Sampling

    assert PolicyModelConfig().use_peft  # LoRA by default (the paper's)
    result = _train(_recipe(max_steps=1), _model(tiny_model_dir, use_peft=True), rows, tmp_path / "run")
    policy = tmp_path / "run" / "policy"
    assert (policy / "adapter_config.json").is_file() and not (policy / "config.json").exists()
    assert result.serving == (str(tiny_model_dir), str(policy))
    backend = TransformersBackend(str(tiny_model_dir), adapter_path=str(policy))
    request = ChatRequest(rows[0]["prompt"], row_images(rows[0]), Sampling(max_new_tokens=4))
    (c,) = backend.generate([request])
    assert c.completion_tokens >= 1 and str(policy) in c.model_id
    # the adapter covers the language model only: the vision tower's MLP names match too
    from safetensors import safe_open

    with safe_open(str(policy / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("language_model" in k for k in keys), keys[:4]
    assert any("mlp.gate_proj" in k for k in keys)


@pytest.mark.slow
def test_resume_from_checkpoint_continues_where_it_stopped(tiny_model_dir, rows, tmp_path):
    model = _model(tiny_model_dir)
    first = _train(_recipe(save_steps=1, max_steps=1), model, rows, tmp_path / "run")
    assert first.steps == 1 and (tmp_path / "run" / "checkpoint-1").is_dir()
    checkpoint = str(tmp_path / "run" / "checkpoint-1")
    resumed = _train(_recipe(save_steps=1), model, rows, tmp_path / "run", resume_from=checkpoint)
    assert resumed.steps == 3
    # the resumed run skipped the easy batch it had already trained on
    assert [e["stage"] for e in resumed.stage_log] == ["medium", "hard"]


@pytest.mark.slow
def test_adaptive_entropy_owns_the_coefficient_when_enabled(tiny_model_dir, rows, tmp_path):
    adaptive = {"use_adaptive_entropy": True, "entropy_target": 100.0, "entropy_coef_delta": 0.02}
    recipe = _recipe(
        curriculum=False,
        mixed_stage=Stage("mixed", 0.01, 0.01),
        max_steps=2,
        **adaptive,
    )
    _train(recipe, _model(tiny_model_dir), rows, tmp_path / "run")
    history = json.loads((tmp_path / "run" / RUN_FILE).read_text())["log_history"]
    # entropy below target at every step: TRL raises the coefficient by delta per step, and the
    # stage's gamma (the starting value) does not reset it
    assert [round(h["entropy_coef"], 6) for h in history if "entropy_coef" in h] == [0.03, 0.05]


def test_adaptive_entropy_starts_each_stage_at_that_stages_gamma(tiny_model_dir, rows, tmp_path):
    adaptive = {"use_adaptive_entropy": True, "entropy_target": 100.0, "entropy_coef_delta": 0.02}
    _train(_recipe(**adaptive), _model(tiny_model_dir), rows, tmp_path / "run")
    history = json.loads((tmp_path / "run" / RUN_FILE).read_text())["log_history"]
    # one step per stage: each starts at its own gamma (0.2, 0.4, 0.6) and TRL's controller adds delta
    assert [round(h["entropy_coef"], 6) for h in history if "entropy_coef" in h] == [0.22, 0.42, 0.62]


def test_the_configured_loss_type_and_kl_reach_trl(tiny_model_dir, rows, tmp_path):
    from rl.curriculum import order_rows
    from rl.datasets import to_dataset

    assert (GRPORecipe().loss_type, GRPORecipe().use_bias_correction_kl) == ("grpo", False)  # the paper's
    for loss_type in ("grpo", "dr_grpo"):
        recipe = _recipe(loss_type=loss_type)
        ordered, _ = order_rows(rows, recipe.stages, batch=2)
        trainer = _trainer(recipe, _model(tiny_model_dir), to_dataset(ordered), tmp_path / loss_type)
        assert (trainer.loss_type, trainer.args.use_bias_correction_kl) == (loss_type, False)
    with pytest.raises(ValueError, match="loss_type"):
        _recipe(loss_type="nonsense")

"""The curriculum GRPO trainer for real (TRL on the tiny checkpoint): stage order, per-stage β/γ,
the entropy term's size on a fixed batch, LoRA adapters, resume."""

from __future__ import annotations

import json

import pytest
import torch

from rl.datasets import synthetic_attending_rows
from rl.grpo import RUN_FILE, CurriculumGRPOTrainer, grpo_config, load_policy_model, train_grpo
from rl.grpo_config import GRPORecipe, Stage
from rl.rewards import REWARD_FUNCS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

STAGES = [Stage("easy", 0.1, 0.2), Stage("medium", 0.3, 0.4), Stage("hard", 0.5, 0.6)]


@pytest.fixture(scope="module")
def rows():
    """Two rows per difficulty, small images: each stage is one step of two prompts."""
    pool = synthetic_attending_rows(40, seed=4, size=56)
    return [
        r for level in ("hard", "easy", "medium") for r in [x for x in pool if x["difficulty"] == level][:2]
    ]


def _recipe(model, **kw) -> GRPORecipe:
    base = {
        "role": "attending",
        "model": str(model),
        "finetune": "full",
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


def test_trainer_sees_easy_then_medium_then_hard_with_each_stages_beta_and_gamma(
    tiny_model_dir, rows, tmp_path
):
    result = train_grpo(_recipe(tiny_model_dir), rows, tmp_path / "run")
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
    assert result.serving == (str(tmp_path / "run" / "policy"), None)


def test_no_curriculum_trains_one_mixed_stage(tiny_model_dir, rows, tmp_path):
    recipe = _recipe(tiny_model_dir, curriculum=False, mixed_stage=Stage("mixed", 0.05, 0.07), max_steps=2)
    result = train_grpo(recipe, rows, tmp_path / "run")
    assert result.steps == 2
    assert {(e["stage"], e["beta"], e["gamma"]) for e in result.stage_log} == {("mixed", 0.05, 0.07)}
    seen = [by for e in result.stage_log for by in e["case_ids"]]
    assert len(set(seen)) == 4  # two steps of two distinct prompts, from a shuffled mix


def test_entropy_term_changes_the_loss_by_gamma_times_mean_token_entropy(tiny_model_dir, rows, tmp_path):
    from rl.curriculum import order_rows
    from rl.datasets import to_dataset

    recipe = _recipe(tiny_model_dir, stages=[Stage("easy", 0.0, 0.25)])
    ordered, _ = order_rows([r for r in rows if r["difficulty"] == "easy"], recipe.stages, batch=2)
    trainer = CurriculumGRPOTrainer(
        model=load_policy_model(recipe),
        reward_funcs=REWARD_FUNCS["attending"],
        args=grpo_config(recipe, tmp_path / "run"),
        train_dataset=to_dataset(ordered),
        stages=recipe.stages,
    )
    batch = next(iter(trainer.get_train_dataloader()))  # one generation batch: 2 prompts × 4
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(batch)
    assert trainer.entropy_coef == 0.25  # set from the batch's stage
    trainer.model.eval()  # the same fixed batch, no dropout, no accumulation scaling
    with torch.no_grad():
        with_bonus = trainer.compute_loss(trainer.model, inputs).item()
        trainer.entropy_coef = 0.0
        without = trainer.compute_loss(trainer.model, inputs).item()

        # the mean token entropy of the completions, computed here from the plain forward pass
        prompt, completion = inputs["prompt_ids"], inputs["completion_ids"]
        out = trainer.model(
            input_ids=torch.cat([prompt, completion], dim=1),
            attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            pixel_values=inputs["pixel_values"],
            image_grid_thw=inputs["image_grid_thw"],
        )
        logits = out.logits[:, prompt.size(1) - 1 : -1].float() / recipe.temperature
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        mask = inputs["completion_mask"].float()
        mean_entropy = ((entropy * mask).sum() / mask.sum()).item()
    assert mean_entropy > 0.1  # a random-ish policy: the term is not vacuous
    assert without - with_bonus == pytest.approx(0.25 * mean_entropy, rel=1e-3, abs=1e-5)


def test_lora_is_the_default_and_its_adapter_serves(tiny_model_dir, rows, tmp_path):
    from app.backends.local import TransformersBackend
    from graph.protocol import ChatRequest, Sampling

    recipe = _recipe(tiny_model_dir, finetune="lora", max_steps=1)
    assert GRPORecipe().finetune == "lora"
    result = train_grpo(recipe, rows, tmp_path / "run")
    policy = tmp_path / "run" / "policy"
    assert (policy / "adapter_config.json").is_file() and not (policy / "config.json").exists()
    assert result.serving == (str(tiny_model_dir), str(policy))
    backend = TransformersBackend(str(tiny_model_dir), adapter_path=str(policy))
    (c,) = backend.generate([ChatRequest(rows[0]["prompt"], rows[0]["images"], Sampling(max_new_tokens=4))])
    assert c.completion_tokens >= 1 and str(policy) in c.model_id


def test_resume_from_checkpoint_continues_where_it_stopped(tiny_model_dir, rows, tmp_path):
    first = train_grpo(_recipe(tiny_model_dir, save_steps=1, max_steps=1), rows, tmp_path / "run")
    assert first.steps == 1 and (tmp_path / "run" / "checkpoint-1").is_dir()
    resumed = train_grpo(
        _recipe(tiny_model_dir, save_steps=1, resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1")),
        rows,
        tmp_path / "run",
    )
    assert resumed.steps == 3
    # the resumed run skipped the easy batch it had already trained on
    assert [e["stage"] for e in resumed.stage_log] == ["medium", "hard"]

"""GRPO measurably learns (fast version of bench/learning.py): triage on the synthetic clinic, tiny
model, CPU. Held-out accuracy starts at chance after the format warm-up (random answers) and must
rise clearly under GRPO with the tiny recipe (rl/recipes/tiny-triage.yaml), shortened to STEPS.
bench/learning.py runs the recipe to its end on 3 seeds."""

from __future__ import annotations

import json

import pytest
import torch

from app.backends.local import TransformersBackend
from rl.datasets import synthetic_attending_rows, synthetic_triage_rows
from rl.grpo import RUN_FILE, score_policy, train_grpo
from rl.grpo_config import GRPORecipe
from rl.sft import format_warmup
from rl.simulated import majority_answer

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]

STEPS = 200
WARMUP = 150
KEY = "rewards/triage_accuracy_reward/mean"


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model's small matrices only lose time to thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_grpo_raises_held_out_triage_accuracy_from_chance(tiny_model_dir, tmp_path, one_thread):
    recipe = GRPORecipe.from_yaml("rl/recipes/tiny-triage.yaml", max_steps=STEPS, seed=0)
    rows = synthetic_triage_rows(recipe.prompts_per_step * STEPS, seed=0)
    held = synthetic_triage_rows(140, seed=10_000)

    warm = format_warmup(
        str(tiny_model_dir), rows, "triage", tmp_path / "warm", steps=WARMUP, progress_bar=False
    )
    before = score_policy(TransformersBackend(str(warm.policy_path)), held, "triage")["all"]
    assert before < 0.25  # near chance (1/7): the warm-up taught the format, not the answer

    recipe.model = str(warm.policy_path)
    result = train_grpo(recipe, rows, tmp_path / "grpo")
    after = score_policy(TransformersBackend(str(result.policy_path)), held, "triage")["all"]

    assert result.stage_log[0]["beta"] > 0  # the KL term is on (the recipe explains gamma = 0)
    assert after >= before + 0.3, f"held-out accuracy {before:.3f} -> {after:.3f}"
    history = json.loads((tmp_path / "grpo" / RUN_FILE).read_text())["log_history"]
    train_acc = [h[KEY] for h in history if KEY in h]
    assert train_acc[-1] > train_acc[0] + 0.1, train_acc  # the sampled completions got better too


ATTENDING_WARMUP = 200
ATTENDING_ROWS = 384


def test_curriculum_grpo_teaches_the_attending_to_overrule_wrong_specialists(
    tiny_model_dir, tmp_path, one_thread
):
    """The attending's clinic needs the image (on hard cases every specialist names one decoy) and
    the opinions (unclear images): from the format warm-up, curriculum GRPO (the paper's recipe,
    rl/recipes/tiny-attending.yaml) must beat copying the majority clearly on hard cases and
    overall, and overall beat the best any image-only policy can do (every clear case right, a
    quarter of the unclear ones)."""
    recipe = GRPORecipe.from_yaml("rl/recipes/tiny-attending.yaml", seed=0)
    rows = synthetic_attending_rows(ATTENDING_ROWS, seed=0)
    held = synthetic_attending_rows(120, seed=10_000)
    hard = [r for r in held if r["difficulty"] == "hard"]
    unclear_share = sum(r["clarity"] == "unclear" for r in held) / len(held)
    majority = {
        "all": sum(majority_right(r) for r in held) / len(held),
        "hard": sum(majority_right(r) for r in hard) / len(hard),
    }
    assert majority["hard"] == 0.0 and unclear_share > 0.2  # the clinic needs both sources

    warm = format_warmup(
        str(tiny_model_dir), rows, "attending", tmp_path / "warm", steps=ATTENDING_WARMUP, progress_bar=False
    )
    recipe.model = str(warm.policy_path)
    result = train_grpo(recipe, rows, tmp_path / "grpo")
    assert [s["stage"] for s in result.stages] == ["easy", "medium", "hard"]
    acc = score_policy(TransformersBackend(str(result.policy_path)), held, "attending")

    assert acc["hard"] >= majority["hard"] + 0.4, acc
    assert acc["all"] >= majority["all"] + 0.1, (acc, majority)
    image_only_best = (1 - unclear_share) + unclear_share / 4
    assert acc["all"] > image_only_best, (acc, image_only_best)


def majority_right(row) -> bool:
    text = row["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1]
    opinions = [line.split("] ", 1)[1] for line in text.splitlines()]
    return majority_answer(opinions, row["options"]) == row["answer"]

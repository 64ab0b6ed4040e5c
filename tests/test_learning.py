"""GRPO measurably learns (fast version of bench/learning.py): triage on the synthetic clinic, tiny
model, CPU. Held-out accuracy starts at chance after the format warm-up (random answers) and must
rise clearly under GRPO with the tiny recipe (rl/recipes/tiny-triage.yaml), shortened to STEPS.
bench/learning.py runs the recipe to its end on 3 seeds."""

from __future__ import annotations

import json

import pytest
import torch

from app.backends.local import TransformersBackend
from rl.datasets import synthetic_triage_rows
from rl.grpo import RUN_FILE, score_policy, train_grpo
from rl.grpo_config import GRPORecipe
from rl.sft import format_warmup

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

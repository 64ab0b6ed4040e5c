"""GRPO measurably learns (fast versions of bench/learning.py), on the synthetic clinic, tiny model,
CPU. Triage: held-out accuracy starts at chance after the format warm-up (random answers) and must
rise clearly under GRPO with the tiny recipe (rl/recipes/tiny-triage.yaml), shortened to STEPS.
The attending: its curriculum recipe (rl/recipes/tiny-attending.yaml) must learn to overrule
wrong specialists. bench/learning.py runs both to their end on 3 seeds, with the baselines."""

from __future__ import annotations

import json

import pytest
import torch

from app.backends.local import TransformersBackend
from rl.datasets import synthetic_attending_rows, synthetic_triage_rows
from rl.evaluation import score_policy
from rl.grpo import RUN_FILE, parse_args, train_grpo
from rl.sft import format_sft, gold_label

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # about 8 minutes alone on 2 CPU cores; the global limit is for hangs
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

STEPS = 200
WARMUP = 150
ATTENDING_ROWS = 384
ATTENDING_WARMUP = 600
KEY = "rewards/triage_accuracy_reward/mean"


@pytest.fixture
def one_thread():
    """One torch thread: the tiny model's small matrices only lose time to thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_grpo_raises_held_out_triage_accuracy_from_chance(tiny_model_dir, tmp_path, one_thread):
    from dataclasses import replace

    spec = parse_args(["--recipe", "tiny-triage", "--max_steps", str(STEPS), "--model", str(tiny_model_dir)])
    recipe = spec.recipe
    rows = synthetic_triage_rows(recipe.prompts_per_step * STEPS, seed=0)
    held = synthetic_triage_rows(140, seed=10_000)

    section = {**recipe.format_sft, "max_steps": WARMUP}  # the recipe's format SFT, shortened
    warm = format_sft(spec.model, rows, "triage", tmp_path / "warm", section, progress_bar=False)
    before = score_policy(TransformersBackend(str(warm.policy_path)), held, "triage")["all"]
    assert before < 0.25  # near chance (1/7): the warm-up taught the format, not the answer

    start = replace(spec.model, model_name_or_path=str(warm.policy_path))
    result = train_grpo(recipe, start, "triage", rows, tmp_path / "grpo")
    after = score_policy(TransformersBackend(str(result.policy_path)), held, "triage")["all"]

    assert result.stage_log[0]["beta"] > 0  # the KL term is on (the recipe explains gamma = 0)
    assert after >= before + 0.3, f"held-out accuracy {before:.3f} -> {after:.3f}"
    history = json.loads((tmp_path / "grpo" / RUN_FILE).read_text())["log_history"]
    train_acc = [h[KEY] for h in history if KEY in h]
    assert train_acc[-1] > train_acc[0] + 0.1, train_acc  # the sampled completions got better too


def test_attending_trained_by_the_cli_overrules_wrong_specialists_and_is_served(
    tiny_model_dir, tmp_path, monkeypatch, one_thread
):
    """``mmedagent train --role attending --synthetic N`` (the curriculum recipe, after its format
    warm-up) registers a policy that the graph serves and that overrules unanimous wrong
    specialists on held-out cases, where copying their majority scores 0, clearly more often than
    its warm-up, and beats copying the majority overall. (The comparison with an image-only
    attending needs a second training run: bench/learning.py makes it.)"""
    from typer.testing import CliRunner

    from app.cli import app
    from app.config import Settings
    from app.runtime import CaseRequest, Runtime
    from data.synthetic import generate_cases

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(tiny_model_dir))
    held = synthetic_attending_rows(140, seed=10_000)
    majority = [float(r["said"] == gold_label(r, "attending")) for r in held]
    assert sum(m for m, r in zip(majority, held, strict=True) if r["difficulty"] == "hard") == 0

    out = tmp_path / "attending-run"
    train = ["train", "--role", "attending", "--synthetic", str(ATTENDING_ROWS), "--recipe", "tiny-attending"]
    result = CliRunner().invoke(app, [*train, "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "registered attending policy version" in result.output

    recipe = parse_args(["--recipe", "tiny-attending"]).recipe
    assert recipe.format_sft["max_steps"] == ATTENDING_WARMUP  # the recipe's format SFT ran first
    tokens = recipe.max_completion_length
    before = score_policy(
        TransformersBackend(str(out / "format_sft" / "policy")), held, "attending", max_new_tokens=tokens
    )
    rt = Runtime(Settings(attending={"policy": "latest"}))
    try:
        served = rt.backends["attending"]
        assert served.model_id == str(out / "policy")
        after = score_policy(served, held, "attending", max_new_tokens=tokens)
        run = rt.ask(CaseRequest.from_synthetic(generate_cases(1, seed=3)[0]))
        (step,) = [s for s in rt.store.get_run(run.run_id).steps if s.role == "attending"]
        assert step.policy_version_id == rt.store.latest_policy("attending").id
    finally:
        rt.close()
    assert after["hard"] >= max(0.5, before["hard"] + 0.1), (before, after)
    assert after["all"] >= sum(majority) / len(held) + 0.1, after

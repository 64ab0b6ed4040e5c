"""bench/learning.py reuses a cached warm-up only when it was made from the same inputs, reads its
warm-ups' settings from the recipes, and its bootstrap intervals draw what they always drew."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rl.datasets import synthetic_attending_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def section(bench):
    """The tiny attending recipe's format_sft section, as bench/learning.py's warm-up runs it."""
    return bench.read_recipe("tiny-attending", 0).recipe.format_sft


def test_warmup_key_changes_with_every_input_it_is_made_from(bench, section, tiny_model_dir, tmp_path):
    rows = synthetic_attending_rows(8, seed=0)
    key = bench.warmup_key(tiny_model_dir, rows, "attending", section, 0)
    assert key == bench.warmup_key(
        tiny_model_dir, synthetic_attending_rows(8, seed=0), "attending", dict(section), 0
    )

    one_pixel = [dict(r) for r in rows]
    one_pixel[3]["images"] = [one_pixel[3]["images"][0][:-1] + b"\x00"]
    relabelled = [dict(r) for r in rows]
    relabelled[5]["said"] = "something else"
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (other_base / "config.json").write_text((other_base / "config.json").read_text() + " ")
    changed = {
        bench.warmup_key(tiny_model_dir, one_pixel, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, relabelled, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows[:-1], "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", {**section, "max_steps": 300}, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", section, 1),
        bench.warmup_key(other_base, rows, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", {**section, "learning_rate": 1e-3}, 0),
    }
    assert key not in changed and len(changed) == 7


def test_warmups_take_the_recipes_format_sft_steps(bench):
    """The figures in docs/learning.md were made with 200 (triage) and 600 (attending) warm-up steps
    of 16 rows at lr 3e-3: the tiny recipes' format_sft sections hold them."""
    for name, steps in (("tiny-triage", 200), ("tiny-attending", 600)):
        spec = bench.read_recipe(name, 3)
        assert spec.recipe.seed == 3
        assert spec.recipe.format_sft["max_steps"] == steps
        assert spec.recipe.format_sft["learning_rate"] == 3e-3
        assert bench.sft_batch(spec) == 16


def test_summary_draws_the_same_bootstrap_as_before(bench):
    """One generator per seed shared by the groups in turn, as bench's own bootstrap drew it."""
    rows = synthetic_attending_rows(40, seed=10_000)
    right = [float(i % 3 != 0) for i in range(len(rows))]

    def old_bootstrap(values, rng, n=2000):
        v = np.asarray(values, dtype=float)
        if not len(v):
            return float("nan"), float("nan"), float("nan")
        means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
        return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))

    rng = np.random.default_rng(7)
    expected = {
        g: old_bootstrap([x for x, r in zip(right, rows, strict=True) if bench.group_of(r, g)], rng)
        for g in bench.GROUPS
    }
    assert bench.summarise(right, rows, 7) == expected  # the same draws: the same floats


def test_stage_ablation_checkpoints_sit_where_the_curriculum_changes_stage(bench):
    """The stage ablation's checkpoints (easy; easy+medium) are taken at the step whose batch is the
    last of that stage: the next step's batch is the next stage's, on the rows the bench trains."""
    from rl.curriculum import order_rows

    paper = bench.read_recipe("tiny-attending", 0).recipe
    rows = synthetic_attending_rows(256, seed=0, size=56, clinic="realistic")
    plan = bench.GRPOPlan.of(paper, rows)
    ordered, _ = order_rows(rows, paper.stages, batch=paper.prompts_per_step, curriculum=True)
    batch = paper.prompts_per_step
    assert sorted(plan.stage_ends.values()) == ["easy", "easy+medium"]
    for step, name in plan.stage_ends.items():
        assert ordered[step * batch - 1]["stage"] == name.rsplit("+", 1)[-1]
        assert ordered[step * batch]["stage"] != ordered[step * batch - 1]["stage"]
    assert plan.steps == len(ordered) // batch
    # Mixed GRPO makes as many steps: its one stage passes over every row as often.
    mixed = plan.variants["mixed"]["mixed_stage"]
    assert round(len(rows) * mixed.epochs) == len(ordered)
    assert all(s.gamma == 0 for s in plan.variants["curriculum-no-entropy"]["stages"])


def test_stage_checkpoint_is_a_policy_the_serving_backend_loads(bench, tiny_model_dir, tmp_path):
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from app.backends.local import TransformersBackend

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    saver = bench.StageCheckpoints({3: "easy"}, tmp_path)
    state = type("State", (), {"global_step": 2})()
    saver.on_step_end(None, state, None, model=model, processing_class=processor)
    assert saver.saved == {}
    state.global_step = 3
    saver.on_step_end(None, state, None, model=model, processing_class=processor)
    assert saver.saved == {"easy": (tmp_path / "easy", 3)}
    rows = synthetic_attending_rows(2, seed=0, size=56)
    assert len(bench.attending_per_case(str(tmp_path / "easy"), rows, 8)) == 2
    assert TransformersBackend(str(tmp_path / "easy")).model_id


def test_paired_differences_and_the_claims_summary(bench, capsys):
    """a - b per case on the pair's split and group only, and the per-seed count of CIs above zero."""
    held = {
        "in": synthetic_attending_rows(60, seed=1, size=56, clinic="realistic", mix=bench.THIRDS),
        "shifted": synthetic_attending_rows(60, seed=1, size=56, clinic="shifted", mix=bench.THIRDS),
    }
    hard = [r["difficulty"] == "hard" for r in held["in"]]
    ones, zeros = {k: [1.0] * 60 for k in held}, {k: [0.0] * 60 for k in held}
    models = {
        "curriculum": ({"in": [float(h) for h in hard], "shifted": ones["shifted"]}, 0, 0.0),
        "mixed": (zeros, 0, 0.0),
        "sft": (ones, 0, 0.0),
    }
    out = bench.paired({"held": held, "models": models}, 0)
    assert set(out) == {
        "curriculum - mixed, in, hard", "curriculum - SFT, shifted, all", "mixed - SFT, shifted, all",
        "curriculum - SFT, in, all",
    }  # fmt: skip
    assert out["curriculum - mixed, in, hard"] == (1.0, 1.0, 1.0)  # right on every hard case
    assert out["curriculum - SFT, shifted, all"] == (0.0, 0.0, 0.0)
    assert out["mixed - SFT, shifted, all"] == (-1.0, -1.0, -1.0)
    share = 1 - sum(hard) / 60
    assert out["curriculum - SFT, in, all"][0] == pytest.approx(-share)
    report = {s: {"paired": {k: list(v) for k, v in out.items()}} for s in ("0", "1")}
    report["1"]["paired"]["curriculum - mixed, in, hard"] = [-0.2, -0.3, -0.1]
    bench.print_claims_summary(report)
    printed = capsys.readouterr().out
    assert "curriculum - mixed, in, hard: +1.000 [+1.000,+1.000]; -0.200 [-0.300,-0.100]" in printed
    assert "above 0 on 1 of 2, below 0 on 1" in printed
    both_below = "-1.000 [-1.000,-1.000]; -1.000 [-1.000,-1.000]  -> above 0 on 0 of 2, below 0 on 2"
    assert f"mixed - SFT, shifted, all: {both_below}" in printed

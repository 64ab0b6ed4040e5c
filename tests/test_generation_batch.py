"""The global generation batch (rl/batching.py) against TRL 1.16's arithmetic, and the stage plan
built on it: stages padded to it, and max_steps cutting the plan (pure: no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl.batching import BatchingError, generation_batch
from rl.curriculum import cap_plan, order_rows, stage_spans
from rl.grpo import parse_args
from rl.recipe import PAPER_STAGES


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"case_id": f"{level}-{i}", "difficulty": level} for level, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(
    ("processes", "spg", "completions", "prompts", "optimizer_steps"),
    [
        (1, None, 32, 4, 1),  # spg defaults to the accumulation (2): 8 x 1 x 2 completions
        (2, None, 64, 8, 1),
        (8, None, 256, 32, 1),
        (1, 4, 64, 8, 2),  # one generation feeds two optimizer steps
        (2, 4, 128, 16, 2),
        (8, 4, 512, 64, 2),
    ],
)
def test_generation_batch_counts_every_process(processes, spg, completions, prompts, optimizer_steps):
    gen = generation_batch(
        processes=processes,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        num_generations=8,
        steps_per_generation=spg,
    )
    assert (gen.completions, gen.prompts, gen.optimizer_steps) == (completions, prompts, optimizer_steps)
    assert gen.completions_per_step == 16 * 2 * processes


def test_generation_batch_matches_trl_on_this_process(tmp_path):
    from trl import GRPOConfig

    for spg in (None, 4):
        args = GRPOConfig(
            output_dir=str(tmp_path), per_device_train_batch_size=16, gradient_accumulation_steps=2,
            num_generations=8, steps_per_generation=spg, use_cpu=True, report_to="none",
        )  # fmt: skip
        gen = generation_batch(
            processes=args.world_size, per_device_train_batch_size=16, gradient_accumulation_steps=2,
            num_generations=8, steps_per_generation=spg,
        )  # fmt: skip
        assert gen.completions == args.generation_batch_size
        assert gen.steps_per_generation == args.steps_per_generation


def test_generation_batch_rejects_batches_that_would_straddle_optimizer_steps():
    with pytest.raises(BatchingError, match="whole number of optimizer steps"):
        generation_batch(
            processes=2, per_device_train_batch_size=8, gradient_accumulation_steps=4, num_generations=8,
            steps_per_generation=2,
        )  # fmt: skip
    with pytest.raises(BatchingError, match="whole groups"):
        generation_batch(
            processes=1, per_device_train_batch_size=6, gradient_accumulation_steps=1, num_generations=4
        )
    gen = generation_batch(
        processes=2, per_device_train_batch_size=8, gradient_accumulation_steps=1, num_generations=8,
        generation_batch_size=64,
    )  # fmt: skip
    assert (gen.steps_per_generation, gen.prompts, gen.optimizer_steps) == (4, 8, 4)


def test_the_7b_recipe_documents_its_global_batch():
    path = Path("rl/recipes/qwen2.5-vl-7b-attending.yaml")
    recipe = parse_args(["--recipe", str(path)]).recipe
    gen = generation_batch(
        processes=8,  # the launch the recipe documents
        per_device_train_batch_size=recipe.completions_per_step // recipe.gradient_accumulation_steps,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_generations=recipe.num_generations,
    )
    assert gen.completions_per_step == 1024 == gen.completions
    assert gen.prompts == 128
    text = path.read_text()
    assert "--nproc_per_node 8" in text and "1,024 completions a step" in text and "128 prompts" in text


def test_the_documented_8_process_case_trains_every_row_of_every_stage():
    """The issue's case: easy 160, medium 160, hard 48 rows on 8 processes, 16 prompts each a step."""
    gen = generation_batch(
        processes=8, per_device_train_batch_size=16, gradient_accumulation_steps=8, num_generations=8
    )
    rows = _rows({"easy": 160, "medium": 160, "hard": 48})
    ordered, spans = order_rows(rows, PAPER_STAGES, batch=gen.prompts, seed=0)
    # TRL's sampler: chunks of gen.prompts in order, the last incomplete one dropped
    chunks = [ordered[i : i + gen.prompts] for i in range(0, len(ordered), gen.prompts)]
    chunks = [c for c in chunks if len(c) == gen.prompts]
    assert all(len({r["stage"] for r in c}) == 1 for c in chunks)
    seen = {r["case_id"] for c in chunks for r in c}
    assert seen == {r["case_id"] for r in rows}  # every hard and medium row included
    plan = stage_spans(spans, gen.prompts, gen.optimizer_steps)
    assert [(p["stage"], p["steps"]) for p in plan] == [("easy", 2), ("medium", 2), ("hard", 1)]


def test_max_steps_cuts_the_plan_and_says_which_stages():
    plan = stage_spans(order_rows(_rows({"easy": 6, "medium": 4, "hard": 4}), PAPER_STAGES, batch=2)[1], 2)
    assert [p["steps"] for p in plan] == [3, 2, 2]
    kept, cut = cap_plan(plan, 4)
    assert [(p["stage"], p["steps"]) for p in kept] == [("easy", 3), ("medium", 1)]
    assert cut == ["medium: 1 of 2 steps", "hard: 0 of 2 steps (not trained)"]
    kept, cut = cap_plan(plan, 9)  # above the plan: the plan once, never looping to easy
    assert sum(p["steps"] for p in kept) == 7 and cut == []

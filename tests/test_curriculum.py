"""Curriculum split and order, recipes, GRPO rows, and the simulated specialist (no training here)."""

from __future__ import annotations

from collections import Counter

import pytest

from data.difficulty import classify
from data.synthetic import generate_cases
from graph.parse import parse_think_answer, parse_triage
from graph.prompts import attending_messages, triage_messages
from graph.protocol import ChatRequest
from rl.curriculum import CurriculumError, order_rows, ordered_dataset, split_by_difficulty, stage_spans
from rl.datasets import (
    ATTENDING_WARMUP_CASES,
    DatasetError,
    case_images,
    iter_attending_warmup_rows,
    known_case,
    row_images,
    rows_from_export,
    synthetic_attending_rows,
    synthetic_triage_rows,
)
from rl.grpo import TrainError, parse_args
from rl.recipe import PAPER_STAGES, GRPORecipe, PolicyModelConfig, Stage
from rl.rewards import answer_accuracy_value
from rl.sft import choices, gold_completions, gold_label, warmup_completions
from rl.simulated import AnswerKey, SimulatedSpecialist, majority_answer, planned_opinions


def _rows(counts: dict[str | None, int]) -> list[dict]:
    return [{"case_id": f"{level}-{i}", "difficulty": level} for level, n in counts.items() for i in range(n)]


def test_split_by_difficulty_and_its_errors():
    groups = split_by_difficulty(_rows({"hard": 2, "easy": 3, "medium": 1}))
    assert {k: len(v) for k, v in groups.items()} == {"easy": 3, "medium": 1, "hard": 2}
    with pytest.raises(CurriculumError, match="no difficulty"):
        split_by_difficulty(_rows({"easy": 2, None: 1}))
    with pytest.raises(CurriculumError, match="unknown difficulty"):
        split_by_difficulty(_rows({"trivial": 1}))


def test_curriculum_orders_stages_easy_medium_hard_in_whole_batches():
    rows = _rows({"hard": 5, "medium": 3, "easy": 4})  # input deliberately not in stage order
    stages = [Stage("easy", 1e-3, 1e-4, epochs=2), Stage("medium", 4e-3, 5e-3), Stage("hard", 1e-2, 3e-2)]
    ordered, spans = order_rows(rows, stages, batch=2, seed=1)
    names = [r["stage"] for r in ordered]
    # stages are contiguous, in order, and every row of a stage has that difficulty
    assert names == sorted(names, key=["easy", "medium", "hard"].index)
    assert all(r["stage"] == r["difficulty"] for r in ordered)
    # easy: 2 epochs of 4 rows; medium: 3 rows padded to 4; hard: 5 padded to 6
    assert Counter(names) == {"easy": 8, "medium": 4, "hard": 6}
    assert [(s.stage.name, s.start, s.rows) for s in spans] == [
        ("easy", 0, 8),
        ("medium", 8, 4),
        ("hard", 12, 6),
    ]
    assert Counter(r["case_id"] for r in ordered if r["stage"] == "easy") == {
        f"easy-{i}": 2 for i in range(4)
    }
    plan = stage_spans(spans, batch=2)
    assert plan[1] == {"stage": "medium", "first_step": 5, "steps": 2, "rows": 4, "beta": 4e-3, "gamma": 5e-3}


def test_a_stage_replays_its_share_of_earlier_stages_rows():
    rows = _rows({"easy": 6, "medium": 6, "hard": 12})
    stages = [Stage("easy", 0, 0), Stage("medium", 0, 0, replay=0.5), Stage("hard", 0, 0, replay=0.25)]
    ordered, spans = order_rows(rows, stages, batch=2, seed=3)
    by_stage = {
        s: Counter(r["difficulty"] for r in ordered if r["stage"] == s) for s in ("easy", "medium", "hard")
    }
    assert by_stage["easy"] == {"easy": 6}  # the first stage has nothing to replay
    assert by_stage["medium"] == {"medium": 6, "easy": 6}  # half of the stage from before it
    hard_earlier = by_stage["hard"]["easy"] + by_stage["hard"]["medium"]
    assert (by_stage["hard"]["hard"], hard_earlier) == (12, 4)  # a quarter, from easy and medium
    assert [s.rows for s in spans] == [6, 12, 16]
    replayed = [r["case_id"] for r in ordered if r["stage"] == "medium" and r["difficulty"] == "easy"]
    assert len(set(replayed)) == 6  # drawn without repeats while the pool lasts
    without, _ = order_rows(rows, [Stage(s.name, 0, 0) for s in stages], batch=2, seed=3)
    assert all(r["stage"] == r["difficulty"] for r in without)  # replay 0: the paper's stages
    with pytest.raises(ValueError, match="replay"):
        Stage("hard", 0, 0, replay=1.0)
    # the trainer's dataset tags every row with the stage it is replayed in, not its difficulty
    dataset, _ = ordered_dataset([{**r, "prompt": "p"} for r in rows], stages, batch=2, seed=3)
    assert [(x["stage"], x["case_id"]) for x in dataset] == [(r["stage"], r["case_id"]) for r in ordered]


def test_curriculum_skips_empty_stages_and_rejects_unknown_ones():
    _, spans = order_rows(_rows({"easy": 2, "hard": 2}), PAPER_STAGES, batch=2)
    assert [s.stage.name for s in spans] == ["easy", "hard"]
    with pytest.raises(CurriculumError, match="name no difficulty"):
        order_rows(_rows({"easy": 2}), [Stage("warmup", 0, 0)], batch=2)
    with pytest.raises(CurriculumError, match="no rows"):
        order_rows([], PAPER_STAGES, batch=2)


def test_no_curriculum_is_one_shuffled_mixed_stage():
    rows = _rows({"easy": 6, "medium": 6, "hard": 6})
    mixed = Stage("mixed", 4e-3, 5e-3)
    ordered, spans = order_rows(rows, PAPER_STAGES, batch=3, curriculum=False, mixed_stage=mixed, seed=0)
    assert [s.stage for s in spans] == [mixed]
    assert {r["stage"] for r in ordered} == {"mixed"}
    assert sorted(r["case_id"] for r in ordered) == sorted(r["case_id"] for r in rows)
    assert [r["difficulty"] for r in ordered] != [r["difficulty"] for r in rows]  # shuffled
    again, _ = order_rows(rows, PAPER_STAGES, batch=3, curriculum=False, mixed_stage=mixed, seed=0)
    assert [r["case_id"] for r in again] == [r["case_id"] for r in ordered]  # seeded
    # rows without difficulty train fine without curriculum
    order_rows(_rows({None: 4}), PAPER_STAGES, batch=2, curriculum=False, mixed_stage=mixed)


def test_recipe_defaults_yaml_and_validation(tmp_path):
    r, model = GRPORecipe(), PolicyModelConfig()
    assert (r.num_generations, r.learning_rate, r.temperature, model.use_peft) == (8, 1e-6, 1.0, True)
    # the paper's curriculum is the attending's; triage trains mixed unless a recipe asks
    assert (r.curriculum_for("attending"), r.curriculum_for("triage")) == (True, False)
    assert GRPORecipe(curriculum=True).curriculum_for("triage") is True
    assert (r.loss_type, r.use_bias_correction_kl, model.lora_scope) == ("grpo", False, "language_model")
    assert [(s.name, s.beta, s.gamma) for s in r.stages] == [
        ("easy", 1e-3, 1e-4),
        ("medium", 4e-3, 5e-3),
        ("hard", 1e-2, 3e-2),
    ]
    path = tmp_path / "r.yaml"
    path.write_text("role: triage\nuse_peft: false\nstages:\n  - {name: easy, beta: 0.1, gamma: 0.2}\n")
    loaded = parse_args(["--recipe", str(path), "--learning_rate", "5e-4"])
    assert (loaded.script.role, loaded.model.use_peft, loaded.recipe.learning_rate) == ("triage", False, 5e-4)
    assert loaded.recipe.stages == [Stage("easy", 0.1, 0.2)]
    path.write_text("lr: 1\n")
    with pytest.raises(TrainError, match="lr"):
        parse_args(["--recipe", str(path)])
    # any GRPOConfig field stands at the top level, beside the curriculum's (TRL's parser)
    path.write_text("num_iterations: 2\nloss_type: dr_grpo\nnum_generations: 4\ncurriculum: false\n")
    parsed = parse_args(["--recipe", str(path)])
    assert (parsed.recipe.num_iterations, parsed.recipe.loss_type, parsed.recipe.num_generations) == (
        2,
        "dr_grpo",
        4,
    )
    assert parsed.recipe.curriculum is False and parsed.script.role is None
    with pytest.raises(ValueError, match="multiple of"):
        GRPORecipe(completions_per_step=30)
    with pytest.raises(ValueError, match="lora_scope"):
        PolicyModelConfig(lora_scope="vision")


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted(Path("rl/recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        spec = parse_args(["--recipe", str(path)])
        assert spec.script.role in ("triage", "attending")


def test_triage_rows_use_the_graph_prompt():
    (row,) = synthetic_triage_rows(1, seed=3, size=56)
    case = generate_cases(1, seed=3, size=56)[0]
    assert row["prompt"] == triage_messages(case.question, case.options, 1)
    assert row["specialty"] == case.specialty
    assert row["images"] == list(case.images) and row_images(row)[0].size == (56, 56)


def test_dataset_holds_image_bytes_and_decodes_them_when_read():
    from datasets import Value

    from data.images import image_from_bytes
    from rl.datasets import to_dataset

    rows = synthetic_attending_rows(3, seed=5, size=56)
    ds = to_dataset(rows)
    assert ds.features["images"].feature == Value("binary")  # the table holds bytes, not pixels
    first = ds[0]["images"][0]
    expected = image_from_bytes(rows[0]["images"][0])
    assert (first.mode, first.size, first.tobytes()) == (expected.mode, expected.size, expected.tobytes())


@pytest.mark.parametrize("curriculum", [True, False])
def test_training_dataset_streamed_from_a_generator_is_the_ordered_rows(curriculum):
    from data.images import image_from_bytes
    from rl.curriculum import ordered_dataset
    from rl.datasets import iter_synthetic_attending_rows
    from rl.recipe import MIXED_STAGE

    rows = synthetic_attending_rows(20, seed=6, size=56)
    kw = {"batch": 4, "curriculum": curriculum, "mixed_stage": MIXED_STAGE, "seed": 3}
    expected, spans = order_rows(rows, PAPER_STAGES, **kw)
    dataset, streamed_spans = ordered_dataset(
        iter_synthetic_attending_rows(20, seed=6, size=56), PAPER_STAGES, **kw
    )
    assert streamed_spans == spans
    assert [(r["case_id"], r["stage"]) for r in dataset] == [(r["case_id"], r["stage"]) for r in expected]
    assert {r["stage"] for r in dataset} == ({"easy", "medium", "hard"} if curriculum else {"mixed"})
    last = dataset[len(dataset) - 1]["images"][0]
    assert last.tobytes() == image_from_bytes(expected[-1]["images"][0]).tobytes()


def test_attending_rows_carry_opinions_with_the_planned_difficulty():
    rows = synthetic_attending_rows(30, seed=2, size=56)
    assert {r["difficulty"] for r in rows} == {"easy", "medium", "hard"}
    for row, case in zip(rows, generate_cases(30, seed=2, size=56), strict=True):
        text = row["prompt"][1]["content"][-1]["text"]
        opinions = [ln.split("] ", 1)[1] for ln in text.split("Specialist opinions:\n")[1].splitlines()]
        right = sum(answer_accuracy_value(o, case.answer, case.options) for o in opinions)
        assert classify(right / 3) == row["difficulty"]
        assert all(parse_think_answer(o).status == "ok" for o in opinions)
        assert row["answer"] == case.answer and row["options"] == list(case.options)
    with pytest.raises(DatasetError):
        synthetic_attending_rows(3, mix={"impossible": 1.0})


def test_rows_from_export_rebuild_prompts_and_skip_unusable_records():
    case = generate_cases(1, seed=0, size=56)[0]
    img = {"bytes": case.images[0], "path": "x.png"}
    opinion = {"specialty": "Radiologist", "completion": "<think>x</think><answer>B</answer>", "answer": "B"}
    base = {"question": case.question, "options": list(case.options), "images": [img], "run_id": "r1"}
    records = [
        {
            **base,
            "answer": case.answer,
            "specialty": case.specialty,
            "opinions": [opinion],
            "difficulty": "hard",
        },
        {**base, "answer": None, "specialty": None, "opinions": []},  # no gold: skipped
        {**base, "answer": "A", "specialty": "Surgeon", "images": [None]},  # hash-only image: skipped
    ]
    (att,) = list(rows_from_export(records, "attending"))
    assert att["prompt"] == attending_messages(
        case.question, case.options, 1, [("Radiologist", opinion["completion"])]
    )
    assert (att["answer"], att["difficulty"], att["case_id"]) == (case.answer, "hard", "r1")
    (tri,) = list(rows_from_export(records, "triage"))
    assert tri["specialty"] == case.specialty and row_images(tri)[0].size == (56, 56)
    with pytest.raises(DatasetError):
        list(rows_from_export(records, "specialist"))


def test_sft_completions_are_strict_and_warmup_labels_are_random():
    rows = synthetic_triage_rows(7, seed=0, size=56)
    gold = gold_completions(rows, "triage")
    for g, r in zip(gold, rows, strict=True):
        text = g["completion"][0]["content"]
        assert parse_triage(text).specialties == [r["specialty"]] and parse_triage(text).status == "ok"
    warm = warmup_completions(rows, "triage", 700, seed=0)
    picked = Counter(parse_triage(w["completion"][0]["content"]).specialties[0] for w in warm)
    assert set(picked) == set(choices(rows[0], "triage")) and min(picked.values()) > 60
    agree = sum(
        parse_triage(w["completion"][0]["content"]).specialties[0] == rows[i % 7]["specialty"]
        for i, w in enumerate(warm)
    )
    assert agree < 160  # about 1/7 of 700: the labels carry no information


def test_attending_warmup_names_both_readings_and_answers_either_at_even_odds():
    rows = synthetic_attending_rows(60, seed=0, size=56)
    for r in rows:  # the rows know what their evidence names
        majority = majority_answer([ln.split("] ", 1)[1] for ln in _opinion_lines(r)], r["options"])
        assert r["said"] == next(o[3:] for o in r["options"] if o[0] == majority)
        assert r["shown"] == (gold_label(r, "attending") if r["clarity"] == "clear" else None)
    warm = warmup_completions(rows, "attending", 1200, seed=0)
    picks: Counter = Counter()
    for i, w in enumerate(warm):
        r = rows[i % len(rows)]
        parsed = parse_think_answer(w["completion"][0]["content"])
        assert parsed.think == f"{r['seen']}; specialists: {r['said']}"
        if r["clarity"] == "clear" and r["shown"] != r["said"]:
            picks["image" if parsed.answer.strip() == r["shown"] else "specialists"] += 1
        elif r["clarity"] == "unclear":
            picks["unclear: specialists" if parsed.answer.strip() == r["said"] else "unclear: other"] += 1
    # where image and specialists disagree, each is answered about half the time: nothing says which
    # is right; an unclear image names nothing, and the majority's reading is the one left
    assert 0.4 < picks["image"] / (picks["image"] + picks["specialists"]) < 0.6
    assert picks["unclear: specialists"] > 100 and picks["unclear: other"] == 0
    # without opinions (the single mode) the think names the image alone and answers at random
    alone = synthetic_attending_rows(8, seed=0, size=56, opinions=False)
    assert all(r["said"] is None for r in alone)
    assert {
        parse_think_answer(w["completion"][0]["content"]).think
        for w in warmup_completions(alone, "attending", 8)
    } == {r["seen"] for r in alone}


def test_a_synthetic_attending_run_warms_up_on_cases_of_its_own():
    """The warm-up learns to read images and opinions, not the training or held-out cases by heart."""
    seed = 3
    warm = list(iter_attending_warmup_rows(seed, n=150))
    training = synthetic_attending_rows(150, seed=seed)
    held_out = synthetic_attending_rows(140, seed=10_000 + seed)
    images = {r["images"][0] for r in warm}
    assert len(images) == 150
    assert not images & {r["images"][0] for r in [*training, *held_out]}
    assert Counter(r["difficulty"] for r in warm).keys() == {"easy", "medium", "hard"}


@pytest.mark.slow  # draws the whole pool of 2,400 cases
def test_the_cli_warms_a_synthetic_attending_run_up_on_the_pool():
    """``mmedagent train --synthetic N --role attending`` warms up on the pool; other runs on their rows."""
    from rl.grpo import warmup_rows

    def spec(*args: str):
        return parse_args([*args, "--seed", str(seed)])

    seed = 3
    training = synthetic_attending_rows(150, seed=seed)
    cli = warmup_rows(spec("--role", "attending", "--synthetic", "150"), training)
    first = next(iter_attending_warmup_rows(seed, n=1))
    assert len(cli) == ATTENDING_WARMUP_CASES and cli[0]["images"] == first["images"]
    for source in (spec("--role", "attending", "--from_db"), spec("--role", "triage", "--synthetic", "150")):
        assert warmup_rows(source, training) is training  # logged trajectories, or triage: its rows


def _opinion_lines(row: dict) -> list[str]:
    return row["prompt"][1]["content"][-1]["text"].split("Specialist opinions:\n", 1)[1].splitlines()


def test_simulated_specialist_is_right_with_its_probability_and_deterministic():
    cases = generate_cases(60, seed=5, size=56)
    key = AnswerKey.from_synthetic(cases)
    assert len(key) == 60

    def ask(backend, case, specialty="Radiologist"):
        from graph.prompts import specialist_messages

        msgs = specialist_messages(specialty, case.question, case.options, 1)
        (c,) = backend.generate([ChatRequest(msgs, case_images(case))])
        return answer_accuracy_value(c.text, case.answer, case.options)

    always, never, half = (SimulatedSpecialist(key, p) for p in (1.0, 0.0, 0.5))
    assert all(ask(always, c) == 1.0 for c in cases)
    assert all(ask(never, c) == 0.0 for c in cases)
    rate = sum(ask(half, c) for c in cases) / len(cases)
    assert 0.3 < rate < 0.7
    assert [ask(half, c) for c in cases] == [ask(half, c) for c in cases]
    # an unknown case gets a well-formed, uninformed opinion
    stranger = generate_cases(1, seed=99, size=56)[0]
    from graph.prompts import specialist_messages

    msgs = specialist_messages("Surgeon", stranger.question, stranger.options, 1)
    (c,) = always.generate([ChatRequest(msgs, case_images(stranger))])
    assert parse_think_answer(c.text).status == "ok"


def test_planned_opinions_and_majority():
    case = generate_cases(1, seed=1, size=56)[0]
    kc = known_case(case)
    for n_right in range(4):
        ops = planned_opinions(kc, n_right, ["Pathologist", "Radiologist", "Surgeon"], seed=0)
        right = sum(answer_accuracy_value(t, case.answer, case.options) for _, t in ops)
        assert right == n_right
    easy = [t for _, t in planned_opinions(kc, 3, ["A", "B", "C"])]
    assert majority_answer(easy, case.options) == case.answer
    hard = [t for _, t in planned_opinions(kc, 0, ["A", "B", "C"])]
    assert len(set(hard)) == 1  # mistaken specialists agree on one decoy: text alone cannot tell
    assert majority_answer(hard, case.options) != case.answer
    with pytest.raises(ValueError):
        planned_opinions(kc, 4, ["A", "B", "C"])

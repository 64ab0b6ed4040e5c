"""The options of a training run (rl/grpo.py ``parse_args``, shared by `mmedagent train` and
`python -m rl.grpo`): any field from the recipe or the command line, fields the trainer owns refused,
from_pretrained arguments reaching the model, resume on the frozen rows, recipes by name, max_steps
cutting the plan, a missing tracker, registering a finished run."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import TrainerCallback

from rl.datasets import synthetic_attending_rows
from rl.grpo import RUN_FILE, TrainError, parse_args, resume_spec, train
from rl.recipe import TRAINER_OWNED, recipe_path
from tests.recipes import TINY_RECIPE

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]

RECIPE = TINY_RECIPE + "save_steps: 1\n"  # a checkpoint every step, to resume from


class Crash(Exception):
    pass


class CrashAfterFirstCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise Crash(f"crashed after step {state.global_step}")


@pytest.fixture(scope="module")
def pool():
    return synthetic_attending_rows(60, seed=4, size=56)


def _pick(pool, per_level: int, skip: int = 0) -> list[dict]:
    return [
        r
        for lv in ("easy", "medium", "hard")
        for r in [x for x in pool if x["difficulty"] == lv][skip:][:per_level]
    ]


def _opts(tmp_path, tiny_model_dir, out: str, *extra: str):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    args = ["--role", "attending", "--out", str(tmp_path / out), "--synthetic", "6", "--recipe", str(recipe)]
    return parse_args([*args, "--model", str(tiny_model_dir), *extra])


def test_resume_continues_exactly_on_the_frozen_rows(tiny_model_dir, tmp_path, pool):
    rows = _pick(pool, 2)
    reference = train(_opts(tmp_path, tiny_model_dir, "ref"), rows).result
    assert [e["stage"] for e in reference.stage_log] == ["easy", "medium", "hard"]

    with pytest.raises(Crash):
        train(_opts(tmp_path, tiny_model_dir, "run"), rows, callbacks=[CrashAfterFirstCheckpoint()])
    assert not (tmp_path / "run" / "policy").exists()
    # the source grew and reordered meanwhile: the run continues on its own rows, in its own order
    grown = _pick(pool, 3, skip=2) + list(reversed(rows))
    (tmp_path / "recipe.yaml").write_text("edited: after the start\n")  # the run reads its own copy
    resumed = train(resume_spec(tmp_path / "run"), grown).result
    assert resumed.steps == 3
    assert [e["case_ids"] for e in resumed.stage_log] == [e["case_ids"] for e in reference.stage_log[1:]]

    with pytest.raises(TrainError, match="gone from its source"):
        (tmp_path / "run" / "policy").rename(tmp_path / "run" / "done")
        train(resume_spec(tmp_path / "run"), grown[:5])


def test_max_steps_cuts_the_plan_and_says_so(tiny_model_dir, tmp_path, pool, caplog):
    opts = _opts(tmp_path, tiny_model_dir, "run", "--max-steps", "2")
    with caplog.at_level(logging.INFO, logger="rl"):
        result = train(opts, _pick(pool, 2)).result
    assert [e["stage"] for e in result.stage_log] == ["easy", "medium"]
    assert result.cut == ["hard: 0 of 1 steps (not trained)"]
    assert "cuts the stage plan: hard: 0 of 1 steps (not trained)" in caplog.text
    assert "easy    steps 1-1 (1)" in caplog.text  # the stage plan, printed at start
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record["cut_by_max_steps"] == result.cut and record["world_size"] == 1


def test_recipes_by_name_and_a_missing_tracker(tmp_path, monkeypatch):
    assert recipe_path("tiny-attending").name == "tiny-attending.yaml"
    assert parse_args(["--recipe", "tiny-triage"]).script.role == "triage"
    with pytest.raises(TrainError, match="tiny-attending"):
        parse_args(["--recipe", "no-such-recipe"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    opts = parse_args(["--role", "triage", "--out", str(tmp_path), "--report-to", "wandb"])
    with pytest.raises(TrainError, match=r"^report_to wandb: the wandb package is not installed"):
        train(opts, [])


def test_any_field_from_the_recipe_or_the_command_line_which_wins(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "role: attending\nlearning_rate: 1.0e-4\nlora_r: 8\nsynthetic: 5\nformat_sft: {max_steps: 3}\n"
    )
    spec = parse_args(["--recipe", str(path), "--lora_r", "4", "--out", str(tmp_path / "o")])
    assert (spec.recipe.learning_rate, spec.model.lora_r, spec.script.synthetic) == (1e-4, 4, 5)
    assert spec.recipe.format_sft == {"max_steps": 3} and spec.out == tmp_path / "o"
    spec = parse_args(["--recipe", str(path), "--format_sft", '{"max_steps": 0}', "--model", "m"])
    assert spec.recipe.format_sft is None and spec.model.model_name_or_path == "m"


@pytest.mark.parametrize("field", sorted(TRAINER_OWNED))
def test_a_field_the_trainer_sets_is_refused_naming_its_source(tmp_path, field):
    value = {"save_strategy": "epoch", "shuffle_dataset": "true", "disable_tqdm": "true"}.get(field, "2")
    path = tmp_path / "r.yaml"
    path.write_text(f"{field}: {value}\n")
    for argv in (["--recipe", str(path)], [f"--{field}", value]):
        with pytest.raises(TrainError) as err:
            parse_args(argv)
        assert f"recipe sets {field}: the trainer takes it from {TRAINER_OWNED[field]}" in str(err.value)
        assert "\n" not in str(err.value)


def test_from_pretrained_arguments_reach_the_model(tiny_model_dir, tmp_path, pool):
    from rl.grpo import build_trainer, plan_stages

    def attention(*extra: str) -> str:
        spec = parse_args(
            ["--recipe", str(tmp_path_recipe(tmp_path)), "--model", str(tiny_model_dir), *extra]
        )
        plan = plan_stages(spec.recipe.replace(output_dir=str(tmp_path / "o")), "attending", _pick(pool, 1))
        trainer = build_trainer(plan.args, spec.model, "attending", plan.dataset, plan.stages)
        return trainer.model.config._attn_implementation

    assert attention() == "sdpa"  # transformers' default
    assert attention("--attn_implementation", "eager") == "eager"
    assert attention("--model_init_kwargs", '{"attn_implementation": "eager"}') == "eager"
    with pytest.raises(ValueError, match="attn_implementation is set twice"):
        attention("--attn_implementation", "eager", "--model_init_kwargs", '{"attn_implementation": "sdpa"}')


def test_clinician_verdicts_label_runs_latest_verdict_wins(settings, store):
    from rl.datasets import DatasetError, rows_from_store
    from tests.trajectories import make_runs

    runs = make_runs(settings, store, [None, None, 2, None])
    ids = [r.run_id for r in runs]
    case = {r.run_id: store.get_run(r.run_id) for r in runs}
    store.add_feedback(ids[0], correct=False, answer="C")
    store.add_feedback(ids[0], correct=True)  # latest: the run's own answer was right
    store.add_feedback(ids[1], correct=True)
    store.add_feedback(ids[1], correct=False, answer="D")  # latest: D
    store.add_feedback(ids[2], correct=False, answer="B")  # has a gold answer too
    store.add_feedback(ids[3], correct=False)  # wrong, no answer given: labels nothing

    def labels(source: str) -> dict[str, str]:
        rows = rows_from_store(store, "attending", reward_source=source)
        return {r["case_id"]: r["answer"] for r in rows}

    cid = [case[i].case_id for i in ids]
    assert labels("gold") == {cid[2]: case[ids[2]].gold_answer}
    assert labels("clinician") == {cid[0]: case[ids[0]].answer, cid[1]: "D", cid[2]: "B"}
    assert labels("both") == {cid[0]: case[ids[0]].answer, cid[1]: "D", cid[2]: case[ids[2]].gold_answer}
    with pytest.raises(DatasetError, match="attending only"):
        rows_from_store(store, "triage", reward_source="clinician")


def test_rows_from_the_store_come_in_case_order_whoever_stored_first(settings, store):
    """Concurrent writers store runs in any order; training reads them in case order, so the same
    stored runs and seed train the same way."""
    from rl.datasets import rows_from_store
    from tests.trajectories import make_runs

    later = make_runs(settings, store, [3, 3], seed=1)  # stored first: syn-1-…
    earlier = make_runs(settings, store, [3, 3], seed=0)
    stored = [r.run_id for r in later + earlier]
    assert [store.get_run(i).case_id for i in stored] == [
        "syn-1-00000",
        "syn-1-00001",
        "syn-0-00000",
        "syn-0-00001",
    ]
    for role in ("triage", "attending"):
        cases = [r["case_id"] for r in rows_from_store(store, role)]
        assert cases == ["syn-0-00000", "syn-0-00001", "syn-1-00000", "syn-1-00001"], role


def test_served_adapter_and_merged_checkpoint_match_the_trainers_model(
    tiny_model_dir, tmp_path, pool, monkeypatch
):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from typer.testing import CliRunner

    from app.backends.local import TransformersBackend
    from app.cli import app
    from graph.protocol import ChatRequest, Sampling
    from rl.datasets import row_images

    class KeepModel(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.model = model

    keep = KeepModel()
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(RECIPE.replace("use_peft: false", "use_peft: true").replace("1.0e-4", "0.5"))
    opts = parse_args(
        ["--role", "attending", "--out", str(tmp_path / "run"), "--synthetic", "6", "--recipe", str(recipe),
         "--model", str(tiny_model_dir), "--max-steps", "1"]
    )  # fmt: skip
    result = train(opts, _pick(pool, 2), callbacks=[keep]).result
    row = pool[0]
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=row_images(row), return_tensors="pt")

    def logits(model) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model(**inputs).logits

    trained = logits(keep.model)
    base = logits(AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype="float32"))
    assert (trained - base).abs().max() > 1e-4  # the adapter changed the model: the check can fail

    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MMEDAGENT_DB_URL", db_url)
    registered = CliRunner().invoke(app, ["policies", "register", str(tmp_path / "run")])
    assert registered.exit_code == 0, registered.output
    assert "registered attending policy version 1" in registered.output
    again = CliRunner().invoke(app, ["policies", "register", str(tmp_path / "run")])
    assert again.exit_code != 0 and "registered already: attending policy version 1" in again.output
    from data.store import TrajectoryStore

    store = TrajectoryStore(db_url)
    version = store.latest_policy("attending")
    store.close()
    assert (version.base_model, version.adapter_path) == (str(tiny_model_dir), str(result.policy_path))
    assert version.training_run["rows"] == 6 and version.training_run["data"] == "synthetic:6"
    merged = CliRunner().invoke(
        app, ["policies", "merge", str(version.id), "--out", str(tmp_path / "merged")]
    )
    assert merged.exit_code == 0, merged.output
    full = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", dtype="float32")
    torch.testing.assert_close(logits(full), trained, atol=1e-4, rtol=1e-4)

    sampling = Sampling(max_new_tokens=8, temperature=0.0)
    served = TransformersBackend(str(tiny_model_dir), adapter_path=str(result.policy_path))
    merged_backend = TransformersBackend(str(tmp_path / "merged"))
    request = ChatRequest(row["prompt"], row_images(row), sampling)
    assert served.generate([request])[0].text == merged_backend.generate([request])[0].text


def test_eval_rows_are_scored_during_training_by_difficulty(tiny_model_dir, tmp_path, pool):
    from app.backends.local import TransformersBackend
    from rl.evaluation import score_policy
    from rl.grpo import train_grpo

    spec = parse_args(
        ["--recipe", str(tmp_path_recipe(tmp_path)), "--model", str(tiny_model_dir), "--eval_steps", "2"]
    )
    recipe = spec.recipe
    held = _pick(pool, 2, skip=2)
    result = train_grpo(recipe, spec.model, "attending", _pick(pool, 2), tmp_path / "run", eval_rows=held)
    assert [e["step"] for e in result.eval] == [2, 3]  # every 2 steps, and at the end
    assert set(result.eval[-1]["accuracy"]) == {"all", "easy", "medium", "hard"}
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    logged = [
        (h["step"], h["eval_accuracy/hard"]) for h in record["log_history"] if "eval_accuracy/hard" in h
    ]
    assert logged == [(e["step"], e["accuracy"]["hard"]) for e in result.eval]
    # the same greedy scores as the served policy's, max_completion_length new tokens
    served = score_policy(
        TransformersBackend(str(result.policy_path)),
        held,
        "attending",
        max_new_tokens=recipe.max_completion_length,
    )
    assert served == result.eval[-1]["accuracy"]


def tmp_path_recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path

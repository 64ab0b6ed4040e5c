"""Export: stored steps -> parquet / hf / jsonl -> ``datasets.load_dataset`` -> TRL's GRPOTrainer."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from datasets import Image, List, load_dataset
from PIL import Image as PILImage
from typer.testing import CliRunner

from app.cli import app
from app.config import RoleSpec
from app.runtime import CaseRequest, Runtime
from data.export import ExportError, ExportFilter, count_rows, export, iter_batches, parse_since
from data.images import load_image
from data.schema import Step
from data.store import RunIn, TrajectoryStore
from data.synthetic import generate_cases
from tests.trajectories import make_runs

runner = CliRunner()


@pytest.fixture
def sqlite_store(tmp_path):
    s = TrajectoryStore(f"sqlite:///{tmp_path / 'export.db'}")
    yield s
    s.close()


@pytest.fixture
def runs(settings, sqlite_store):
    """Four runs (3/3, 1/3, 0/3 specialists right, no gold) and two clinician verdicts on the first."""
    made = make_runs(settings, sqlite_store, [3, 1, 0, None])
    sqlite_store.add_feedback(made[0].run_id, correct=True)
    sqlite_store.add_feedback(made[0].run_id, correct=False, answer="C", note="second look")
    return made


def _load_parquet(path, decode=True):
    ds = load_dataset("parquet", data_files=str(path), split="train")
    return ds if decode else ds.cast_column("images", List(Image(decode=False)))


def _without_nulls(messages):
    return [
        {"role": m["role"], "content": [{k: v for k, v in b.items() if v is not None} for b in m["content"]]}
        for m in messages
    ]


def _assert_row_is_db_content(row, store: TrajectoryStore) -> None:
    with store.session() as s:
        step = s.get(Step, row["step_id"])
        run = step.run
        assert row["run_id"] == run.id and row["role"] == step.role and row["seq"] == step.seq
        assert _without_nulls(row["prompt"]) == step.messages
        assert row["completion"] == [
            {"role": "assistant", "content": [{"type": "text", "text": step.completion}]}
        ]
        assert row["completion_ids"] == step.token_ids
        assert row["logprobs"] == step.logprobs  # float64 both ways: exact
        assert row["policy_version"] == step.policy_version_id
        assert row["step_specialty"] == step.specialty and row["model_id"] == step.model_id
        assert (row["question"], row["options"]) == (run.question, run.options)
        assert (row["answer"], row["specialty"]) == (run.gold_answer, run.gold_specialty)
    rewards = [r for r in store.rewards(row["run_id"]) if r.step_id == row["step_id"]]
    latest = {(r.kind, r.source): r for r in rewards}
    for kind, source in (("format", "gold"), ("accuracy", "gold"), ("clinician", "clinician")):
        want = latest.get((kind, source))
        assert row[f"reward_{kind}"] == (want.value if want else None)
    verdict = latest.get(("clinician", "clinician"))
    assert row["clinician_answer"] == (verdict.answer if verdict else None)
    level = store.difficulties([row["run_id"]]).get(row["run_id"])
    assert row["difficulty"] == (level.level if level else None)
    # images: the bytes the store holds, in the order of the prompt's image blocks
    assert row["image_sha256"] == step.image_refs
    for sha, img in zip(row["image_sha256"], row["images"], strict=True):
        assert hashlib.sha256(img["bytes"]).hexdigest() == sha
        assert store.image_bytes(sha) == img["bytes"]


@pytest.mark.slow
def test_parquet_round_trip_equals_db_content(settings, store, tiny_backend, tmp_path):
    made = make_runs(settings, store, [3, 1, 0, None])
    store.add_feedback(made[1].run_id, correct=False, answer="A", note="look again")
    # and one run from the real tiny model: real token ids and logprobs
    roles = ("triage", "specialist", "attending")
    short = settings.model_copy(update={r: RoleSpec(max_new_tokens=12) for r in roles})
    rt = Runtime(short, backends=dict.fromkeys(roles, tiny_backend), store=store)
    case = generate_cases(1, seed=5)[0]
    real = rt.ask(CaseRequest(case.question, [load_image(b) for b in case.images], list(case.options)))
    rt.close()
    assert real.status == "ok"
    for role, n in (("triage", 5), ("specialist", 15), ("attending", 5)):
        result = export(store, ExportFilter(role=role), "parquet", tmp_path / "out")
        assert result.rows == n and result.path == tmp_path / "out" / f"{role}.parquet"
        ds = _load_parquet(result.path, decode=False)
        assert len(ds) == n
        for row in ds:
            _assert_row_is_db_content(row, store)
    real_rows = [
        r for r in _load_parquet(tmp_path / "out" / "attending.parquet") if r["run_id"] == real.run_id
    ]
    assert real_rows[0]["logprobs"] and len(real_rows[0]["logprobs"]) == len(real_rows[0]["completion_ids"])
    # decoded, the images are what the models saw
    assert real_rows[0]["images"][0].size == load_image(case.images[0]).image.size


def test_attending_rows_carry_the_logged_opinions(runs, sqlite_store, tmp_path):
    export(sqlite_store, ExportFilter(role="attending"), "parquet", tmp_path)
    rows = {r["run_id"]: r for r in _load_parquet(tmp_path / "attending.parquet")}
    medium = rows[runs[1].run_id]
    assert [o["correct"] for o in medium["opinions"]] == [True, False, False]
    assert [o["specialty"] for o in medium["opinions"]] == ["Radiologist", "Oncologist", "Pathologist"]
    for o in medium["opinions"]:
        assert f"[{o['specialty']}] {o['completion']}" in medium["prompt"][-1]["content"][-1]["text"]
    assert medium["specialists_right"] == pytest.approx(1 / 3) and medium["difficulty"] == "medium"
    assert [o["correct"] for o in rows[runs[3].run_id]["opinions"]] == [None] * 3  # no gold: unknown
    # the latest clinician verdict is the exported one; both stay in the store
    first = rows[runs[0].run_id]
    assert (first["reward_clinician"], first["clinician_answer"], first["clinician_note"]) == (
        0.0,
        "C",
        "second look",
    )


def test_filters(runs, sqlite_store, tmp_path):
    old = datetime.now(UTC) - timedelta(days=2)
    triage_step = {
        "node": "triage", "role": "triage", "messages": [{"role": "user", "content": "q"}],
        "completion": "x", "parsed": {}, "parse_status": "failed", "model_id": "m",
    }  # fmt: skip
    sqlite_store.save_run(
        RunIn(
            id="old-error", thread_id="t", question="q", status="error", error="BackendError", created_at=old
        ),
        [triage_step],
        [],
    )
    cases = {
        ExportFilter(role="specialist"): 12,
        ExportFilter(role="specialist", with_gold=True): 9,
        ExportFilter(role="specialist", difficulty=["hard"]): 3,
        ExportFilter(role="specialist", difficulty=["easy", "medium"]): 6,
        ExportFilter(role="attending", difficulty=["easy"]): 1,
        ExportFilter(role="triage"): 5,
        ExportFilter(role="triage", status="ok"): 4,
        ExportFilter(role="triage", status="error"): 1,
        ExportFilter(role="triage", since=datetime.now(UTC) - timedelta(hours=1)): 4,
        ExportFilter(role="triage", since=old - timedelta(minutes=1)): 5,
        ExportFilter(role="triage", with_gold=True): 3,
    }
    for i, (flt, n) in enumerate(cases.items()):
        assert count_rows(sqlite_store, flt) == n, flt
        result = export(sqlite_store, flt, "parquet", tmp_path / str(i))
        assert result.rows == n, flt
        if flt.difficulty:
            assert set(_load_parquet(result.path)["difficulty"]) == set(flt.difficulty)


def test_hf_folder_loads_by_role_config(runs, sqlite_store, tmp_path, caplog):
    for role in ("triage", "attending"):
        export(sqlite_store, ExportFilter(role=role), "hf", tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "config_name: triage" in card and "config_name: attending" in card and "&id" not in card
    (shard,) = (tmp_path / "attending").iterdir()
    assert shard.name.startswith("train-00000-of-00001-") and shard.suffix == ".parquet"
    # The card is well-formed: loading it logs and warns nothing.
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        attending = load_dataset(str(tmp_path), "attending", split="train")
        triage = load_dataset(str(tmp_path), "triage", split="train")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [str(w.message) for w in warned if not issubclass(w.category, DeprecationWarning)] == []
    assert len(attending) == len(triage) == 4
    assert set(attending["role"]) == {"attending"} and attending[0]["images"][0].mode == "RGB"
    assert attending.features["images"] == List(Image())
    # re-export replaces the role's folder
    with pytest.raises(ExportError, match="already exists"):
        export(sqlite_store, ExportFilter(role="triage"), "hf", tmp_path)
    export(sqlite_store, ExportFilter(role="triage", difficulty=["hard"]), "hf", tmp_path, overwrite=True)
    assert len(load_dataset(str(tmp_path), "triage", split="train")) == 1


def test_jsonl_with_image_side_folder(runs, sqlite_store, tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path / "out")
    result = export(sqlite_store, ExportFilter(role="specialist"), "jsonl", Path("export"))
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        for sha, path in zip(row["image_sha256"], row["images"], strict=True):
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == sha
        datetime.fromisoformat(row["created_at"])
    assert len(list((tmp_path / "out" / "export" / "images").iterdir())) == 4  # one per distinct image
    # datasets opens the images from any working directory.
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("json", data_files=str(tmp_path / "out" / "export" / "specialist.jsonl"), split="train")
    ds = ds.cast_column("images", List(Image()))
    assert len(ds) == 12
    for row, decoded in zip(rows, ds["images"], strict=True):
        assert [img.tobytes() for img in decoded] == [PILImage.open(p).tobytes() for p in row["images"]]


def test_streams_in_batches_and_failure_leaves_nothing(settings, store, tmp_path):
    """Batches come from one streamed query (a server-side cursor on PostgreSQL)."""
    make_runs(settings, store, [3, 1, 0, None])
    sizes = [len(b) for b in iter_batches(store, ExportFilter(role="specialist"), batch_size=5)]
    assert sizes == [5, 5, 2]
    seen = []
    export(
        store,
        ExportFilter(role="specialist"),
        "parquet",
        tmp_path / "ok",
        batch_size=5,
        on_rows=seen.append,
    )
    assert seen == [5, 5, 2]
    # a step that names an image the store does not have: a clear error, no partial output
    step = {
        "node": "specialist", "role": "specialist", "messages": [], "image_refs": ["ab" * 32],
        "completion": "x", "parsed": {}, "parse_status": "ok", "model_id": "m",
    }  # fmt: skip
    store.save_run(RunIn(id="broken", thread_id="b", question="q", status="ok"), [step], [])
    for fmt in ("parquet", "hf", "jsonl"):
        out = tmp_path / fmt
        with pytest.raises(ExportError, match="referenced but not stored"):
            export(store, ExportFilter(role="specialist"), fmt, out, batch_size=5)
        assert [p.name for p in out.iterdir()] == (["images"] if fmt == "jsonl" else [])


def test_parse_since():
    now = datetime(2026, 1, 10, 12, tzinfo=UTC)
    assert parse_since("36h", now) == now - timedelta(hours=36)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    assert parse_since("2026-01-02T03:00:00+02:00") == datetime(2026, 1, 2, 1, tzinfo=UTC)
    with pytest.raises(ExportError, match="ISO date"):
        parse_since("last tuesday")


@pytest.mark.slow
def test_export_feeds_grpo_trainer_without_conversion(runs, sqlite_store, tiny_model_dir, tmp_path):
    """The exported parquet, as load_dataset returns it, trains one real GRPO step with rl/rewards.py."""
    from trl import GRPOConfig, GRPOTrainer

    from rl.rewards import REWARD_FUNCS

    export(sqlite_store, ExportFilter(role="attending", with_gold=True), "parquet", tmp_path)
    dataset = load_dataset("parquet", data_files=str(tmp_path / "attending.parquet"), split="train")
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        max_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
        shuffle_dataset=False,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=REWARD_FUNCS["attending"], args=args, train_dataset=dataset
    )
    trainer.train()
    assert trainer.state.global_step == 1
    logged = trainer.state.log_history[0]
    assert "rewards/answer_accuracy_reward/mean" in logged and "rewards/format_reward/mean" in logged


def test_cli_export(runs, sqlite_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEDAGENT_DB_URL", sqlite_store.url)
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    out = tmp_path / "out"
    args = ["export", "--role", "specialist", "--format", "parquet", "--out", str(out)]
    res = runner.invoke(
        app, [*args, "--difficulty", "hard", "--with-gold", "--status", "ok", "--since", "7d"]
    )
    assert res.exit_code == 0, res.output
    assert "exported 3 specialist rows" in res.output
    assert len(_load_parquet(out / "specialist.parquet")) == 3
    for bad, message in [
        (["--role", "nurse"], "role must be one of"),
        (["--format", "csv"], "format must be one of"),
        (["--difficulty", "impossible"], "difficulty must be"),
        (["--since", "soon"], "ISO date"),
        (["--status", "maybe"], "--status must be"),
        ([], "already exists"),
        (["--out", str(out / "specialist.parquet")], "is a file, not a folder"),
    ]:
        res = runner.invoke(app, [*args, *bad])
        assert res.exit_code == 2 and message in res.output, (bad, res.output)

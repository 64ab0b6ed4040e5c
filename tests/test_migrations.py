"""Alembic migrations on SQLite and PostgreSQL: empty -> head, 0001 with data -> head (data kept),
models == migrations, concurrent first starts, and the CLI refusing an un-migrated database."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect
from typer.testing import CliRunner

from app.cli import app
from data import migrate
from data.schema import Base
from data.store import ImageIn, RunIn, TrajectoryStore, make_engine

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), Base.metadata)


def test_empty_to_head_matches_the_models(db_url):
    engine = make_engine(db_url)
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert _diff(engine) == []
    engine.dispose()


def _fill_0001(engine) -> None:
    """One run at the first schema, written with plain SQL as the 0001 code wrote it."""
    meta = MetaData()
    meta.reflect(engine)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            meta.tables["images"].insert(),
            {"sha256": "a" * 64, "mime": "image/png", "width": 2, "height": 2, "size_bytes": 3,
             "data": b"png", "created_at": now},
        )  # fmt: skip
        conn.execute(
            meta.tables["runs"].insert(),
            {"id": "old-run", "thread_id": "t", "created_at": now, "finished_at": now, "status": "ok",
             "error": None, "source": "cli", "case_id": "c1", "question": "What?",
             "options": ["A) x", "B) y"],
             "gold_answer": "B", "gold_specialty": "Radiologist", "specialties": ["Radiologist"],
             "answer": "B", "answer_status": "ok", "wall_s": 1.5, "meta": {"k": "v"}},
        )  # fmt: skip
        conn.execute(
            meta.tables["run_images"].insert(), {"run_id": "old-run", "position": 0, "sha256": "a" * 64}
        )
        conn.execute(
            meta.tables["steps"].insert(),
            {"run_id": "old-run", "seq": 0, "node": "attending", "role": "attending", "specialty": None,
             "messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}]}],
             "image_refs": ["a" * 64], "completion": "<think>t</think><answer>B</answer>", "parsed": {},
             "parse_status": "ok", "token_ids": [1, 2], "logprobs": [-0.5, -0.25], "prompt_tokens": 4,
             "completion_tokens": 2, "latency_s": 0.1, "model_id": "old-model", "started_at": now},
        )  # fmt: skip


def test_upgrade_from_0001_keeps_the_data(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0001")
    _fill_0001(engine)
    with pytest.raises(migrate.DatabaseNotMigrated, match=r"at schema revision 0001.*mmedagent db upgrade"):
        TrajectoryStore(db_url)
    migrate.upgrade(engine)
    assert _diff(engine) == []
    store = TrajectoryStore(db_url)
    run = store.get_run("old-run")
    assert (run.question, run.options, run.gold_answer, run.meta, run.wall_s) == (
        "What?", ["A) x", "B) y"], "B", {"k": "v"}, 1.5,
    )  # fmt: skip
    assert run.created_at.replace(tzinfo=UTC) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert run.eval_id is None and [ri.sha256 for ri in run.images] == ["a" * 64]
    (step,) = run.steps
    assert (step.completion, step.token_ids, step.logprobs) == (
        "<think>t</think><answer>B</answer>",
        [1, 2],
        [-0.5, -0.25],
    )
    assert step.policy_version_id is None
    assert store.image_bytes("a" * 64) == b"png"
    # the upgraded database takes the new kinds of rows
    store.add_feedback("old-run", correct=True)
    assert [r.kind for r in store.rewards("old-run")] == ["clinician"]
    store.close()
    engine.dispose()


def test_downgrade_to_0001_and_back(db_url):
    store = TrajectoryStore(db_url)
    img = ImageIn("b" * 64, "image/png", 1, 1, b"x")
    store.save_run(
        RunIn(id="r", thread_id="r", question="q", status="ok", image_shas=[img.sha256]), [], [img]
    )
    store.close()
    engine = make_engine(db_url)
    migrate.downgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    assert "rewards" not in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert _diff(engine) == [] and TrajectoryStore(db_url).get_run("r").question == "q"
    engine.dispose()


@pytest.mark.slow
def test_concurrent_first_start_of_several_processes(db_url):
    """Four processes open the same brand-new database at once: one creates it, none fails."""
    code = "import sys; from data.store import TrajectoryStore; TrajectoryStore(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    engine = make_engine(db_url)
    assert migrate.current_revision(engine) == migrate.head_revision() and _diff(engine) == []
    engine.dispose()


def test_cli_refuses_an_unmigrated_database_until_db_upgrade(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(make_engine(url), "0001")
    monkeypatch.setenv("MMEDAGENT_DB_URL", url)
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    for args in (
        ["runs", "list"],
        ["feedback", "x", "--correct"],
        ["export", "--role", "triage", "--out", "o"],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "mmedagent db upgrade" in res.output, (args, res.output)
    res = runner.invoke(app, ["db", "current"])
    assert res.exit_code == 1 and "revision 0001" in res.output
    res = runner.invoke(app, ["db", "upgrade"])
    assert res.exit_code == 0 and migrate.head_revision() in res.output
    assert runner.invoke(app, ["db", "current"]).exit_code == 0
    assert runner.invoke(app, ["runs", "list"]).exit_code == 0


def test_upgrade_from_0002_adds_step_timing_and_run_mode(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0002")
    _fill_0001(engine)  # the columns 0002 added are nullable: the 0001 rows are valid 0002 rows
    migrate.upgrade(engine)
    assert _diff(engine) == []
    store = TrajectoryStore(db_url)
    run = store.get_run("old-run")
    (step,) = run.steps
    assert run.mode is None and (step.wait_s, step.batch_id, step.batch_size) == (None, None, None)
    assert step.latency_s == 0.1 and step.completion == "<think>t</think><answer>B</answer>"
    # the new columns take values, and a downgrade to 0002 drops them again
    store.save_run(
        RunIn(id="new", thread_id="new", question="q", status="ok", mode="single"),
        [{"node": "attending", "role": "attending", "messages": [], "completion": "x", "parse_status": "ok",
          "model_id": "m", "wait_s": 0.25, "batch_id": "b1", "batch_size": 3}],
        [],
    )  # fmt: skip
    new = store.get_run("new")
    assert new.mode == "single" and (new.steps[0].wait_s, new.steps[0].batch_id) == (0.25, "b1")
    store.close()
    migrate.downgrade(engine, "0002")
    assert "batch_id" not in {c["name"] for c in inspect(engine).get_columns("steps")}
    assert "mode" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()


def test_upgrade_from_0004_adds_run_leases(db_url):
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0004")
    _fill_0001(engine)
    migrate.upgrade(engine)
    assert _diff(engine) == []
    store = TrajectoryStore(db_url)
    old = store.get_run("old-run")
    assert (old.status, old.owner, old.lease_until) == ("ok", None, None)
    assert store.mark_interrupted() == []  # a finished run of before is left alone
    store.begin_run(
        RunIn(id="live", thread_id="live", question="q", status="ok"), [], owner="h:1:n", lease_s=60
    )
    assert store.get_run("live").status == "running"
    store.close()
    migrate.downgrade(engine, "0004")
    assert not {"owner", "lease_until"} & {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()

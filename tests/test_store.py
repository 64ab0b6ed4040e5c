"""Trajectory store: one transaction per run, images stored once, failed runs kept, migrations."""

from __future__ import annotations

import hashlib
import pickle
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from data import migrate
from data.schema import ImageBlob, Run, Step
from data.store import ImageIn, RunIn, TrajectoryStore, make_engine, run_to_dict


def _image(seed: bytes) -> ImageIn:
    data = b"\x89PNG fake " + seed
    return ImageIn(hashlib.sha256(data).hexdigest(), "image/png", 8, 8, data)


def _step(node: str, role: str, specialty: str | None = None) -> dict:
    return {
        "node": node,
        "role": role,
        "specialty": specialty,
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
        "image_refs": ["abc"],
        "completion": f"<think>t</think><answer>{node}</answer>",
        "parsed": {"answer": node},
        "parse_status": "ok",
        "token_ids": [1, 2, 3],
        "logprobs": [-0.1, -0.2, -0.3],
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "latency_s": 0.01,
        "model_id": "tiny",
        "started_at": 1_700_000_000.0,
    }


def test_save_and_read_back(store):
    img = _image(b"1")
    steps = [
        _step("triage", "triage"),
        _step("specialist", "specialist", "Radiologist"),
        _step("attending", "attending"),
    ]
    store.save_run(
        RunIn(id="r1", thread_id="r1", question="q?", status="ok", image_shas=[img.sha256]), steps, [img]
    )
    run = store.get_run("r1")
    d = run_to_dict(run)
    assert [s["node"] for s in d["steps"]] == ["triage", "specialist", "attending"]
    assert d["steps"][1]["specialty"] == "Radiologist"
    assert d["steps"][0]["token_ids"] == [1, 2, 3]
    assert d["steps"][0]["messages"] == steps[0]["messages"]
    assert d["images"] == [img.sha256]
    assert store.image_bytes(img.sha256) == img.data


def test_every_run_column_round_trips_without_a_field_list(store):
    """RunIn, save_run and run_to_dict follow the ``runs`` table: each column's value comes back."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    values = {
        "id": "all", "thread_id": "t", "created_at": when, "finished_at": when + timedelta(seconds=2),
        "status": "error", "error": "Boom", "source": "eval", "case_id": "c7", "question": "q?",
        "options": ["A", "B"], "gold_answer": "B", "gold_specialty": "Radiologist",
        "specialties": ["Radiologist"], "answer": "A", "answer_status": "ok", "wall_s": 1.5,
        "meta": {"kind": "closed"}, "eval_id": "ev", "mode": "single", "owner": "host:12:ab",
        "lease_until": when + timedelta(seconds=3),
    }  # fmt: skip
    assert set(values) == {c.key for c in Run.__table__.columns}  # a new column joins this test
    run = RunIn(**values)
    assert pickle.loads(pickle.dumps(run)) == run  # a run can cross to another process
    store.save_run(run, [_step("triage", "triage")], [])
    d = run_to_dict(store.get_run("all"))
    expected = {("run_id" if k == "id" else k): v for k, v in values.items()}
    expected |= {k: values[k].isoformat() for k in ("created_at", "finished_at", "lease_until")}
    assert set(d) == {*expected, "images", "steps"}
    for k in (
        "created_at",
        "finished_at",
        "lease_until",
    ):  # SQLite hands datetimes back without their UTC offset
        assert d[k].startswith(expected.pop(k).removesuffix("+00:00"))
    assert {k: d[k] for k in expected} == expected
    assert set(d["steps"][0]) == {c.key for c in Step.__table__.columns} - {"id", "run_id"}


def test_images_are_stored_once(store):
    img = _image(b"same")
    for i in range(3):
        store.save_run(
            RunIn(
                id=f"r{i}", thread_id=f"r{i}", question="q", status="ok", image_shas=[img.sha256, img.sha256]
            ),
            [],
            [img, img],
        )
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(ImageBlob)) == 1
        assert s.scalar(select(func.count()).select_from(Run)) == 3


def test_hash_only_mode_keeps_no_pixels(db_url):
    s = TrajectoryStore(db_url, store_pixels=False)
    img = _image(b"phi")
    s.save_run(RunIn(id="r", thread_id="r", question="q", status="ok", image_shas=[img.sha256]), [], [img])
    assert s.image_bytes(img.sha256) is None
    with s.session() as sess:
        assert sess.get(ImageBlob, img.sha256).size_bytes == len(img.data)


def test_failed_transaction_writes_nothing(store):
    img = _image(b"x")
    bad_step = _step("triage", "triage")
    bad_step["model_id"] = None  # NOT NULL: the whole run must roll back, image included
    with pytest.raises(Exception, match=r"(?i)not[ -]null"):
        store.save_run(
            RunIn(id="bad", thread_id="bad", question="q", status="ok", image_shas=[img.sha256]),
            [bad_step],
            [img],
        )
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 0
        assert s.scalar(select(func.count()).select_from(Step)) == 0
        assert s.scalar(select(func.count()).select_from(ImageBlob)) == 0


def test_error_run_keeps_finished_steps(store):
    store.save_run(
        RunIn(id="e", thread_id="e", question="q", status="error", error="BackendError: dead"),
        [_step("triage", "triage")],
        [],
    )
    run = store.get_run("e")
    assert run.status == "error" and run.error == "BackendError: dead"
    assert [s.node for s in run.steps] == ["triage"]
    assert [r.id for r in store.list_runs(status="error")] == ["e"]


def test_sqlite_is_wal_with_busy_timeout(tmp_path):
    store = TrajectoryStore(f"sqlite:///{tmp_path / 'wal.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    store.close()


def test_refuses_unmigrated_database(db_url):
    url = db_url
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE legacy (id INTEGER)"))
    with pytest.raises(migrate.DatabaseNotMigrated, match="mmedagent db upgrade"):
        TrajectoryStore(url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    TrajectoryStore(url).close()

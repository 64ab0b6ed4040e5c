"""Clinician feedback: verdicts are appended as reward rows (never overwritten), via API and CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import app
from data.store import TrajectoryStore
from tests.trajectories import make_runs

runner = CliRunner()


def _clinician(store, run_id):
    return [(r.value, r.answer, r.note) for r in store.rewards(run_id) if r.kind == "clinician"]


def test_feedback_appends_and_keeps_earlier_verdicts(settings, store):
    (run,) = make_runs(settings, store, [2])
    before = [(r.id, r.kind, r.value) for r in store.rewards(run.run_id)]
    first = store.add_feedback(run.run_id, correct=False, answer="C", note="missed it")
    second = store.add_feedback(run.run_id, correct=True, note="on second look, fine")
    assert second > first
    assert _clinician(store, run.run_id) == [(0.0, "C", "missed it"), (1.0, None, "on second look, fine")]
    rows = store.rewards(run.run_id)
    assert [(r.id, r.kind, r.value) for r in rows[: len(before)]] == before  # automatic rewards untouched
    verdicts = [r for r in rows if r.source == "clinician"]
    attending = next(st.id for st in store.get_run(run.run_id).steps if st.role == "attending")
    assert {r.step_id for r in verdicts} == {attending} and {r.role for r in verdicts} == {"attending"}
    with pytest.raises(KeyError, match="no run"):
        store.add_feedback("nope", correct=True)


def test_cli_feedback(settings, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    store = TrajectoryStore(url)
    (run,) = make_runs(settings, store, [1])
    monkeypatch.setenv("MMEDAGENT_DB_URL", url)
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    res = runner.invoke(
        app, ["feedback", run.run_id, "--wrong", "--answer", "C", "--note", "fracture missed"]
    )
    assert res.exit_code == 0, res.output
    assert "wrong" in res.output
    res = runner.invoke(app, ["feedback", run.run_id, "--correct"])
    assert res.exit_code == 0, res.output
    assert _clinician(store, run.run_id) == [(0.0, "C", "fracture missed"), (1.0, None, None)]
    res = runner.invoke(app, ["feedback", "no-such-run", "--correct"])
    assert res.exit_code == 2 and "no run 'no-such-run'" in res.output
    res = runner.invoke(app, ["feedback", run.run_id])
    assert res.exit_code == 2 and "--correct or --wrong" in res.output
    assert len(_clinician(store, run.run_id)) == 2  # the refused calls wrote nothing
    store.close()

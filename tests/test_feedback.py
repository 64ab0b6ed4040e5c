"""Clinician feedback: verdicts are appended as reward rows (never overwritten), the latest one
counts; the web page and the CLI share one function with one set of rules (app/feedback.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.feedback import FeedbackError, record_verdict
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
    # The run has options: a right answer must name one of them; a correct verdict takes none.
    res = runner.invoke(app, ["feedback", run.run_id, "--wrong", "--answer", "a zebra"])
    assert res.exit_code == 2 and "names none of the run's options" in res.output
    res = runner.invoke(app, ["feedback", run.run_id, "--correct", "--answer", "C"])
    assert res.exit_code == 2 and "takes no right answer" in res.output
    assert len(_clinician(store, run.run_id)) == 2  # the refused calls wrote nothing
    store.close()


def test_record_verdict_rules_and_the_latest_verdict_counts(settings, store):
    first, second = make_runs(settings, store, [2, 1])
    options = store.get_run(first.run_id).options
    assert options, "the synthetic cases are multiple choice"
    with pytest.raises(FeedbackError, match="no run"):
        record_verdict(store, "nope", correct=True)
    with pytest.raises(FeedbackError, match="takes no right answer"):
        record_verdict(store, first.run_id, correct=True, answer="B")
    with pytest.raises(FeedbackError, match="names none of the run's options"):
        record_verdict(store, first.run_id, correct=False, answer="something else entirely")
    assert _clinician(store, first.run_id) == []
    # The option's text or its letter both name it (graph/parse.py's matching).
    text = options[2].split(")", 1)[1].strip()
    record_verdict(store, first.run_id, correct=False, answer=text)
    record_verdict(store, first.run_id, correct=True, answer="  ")  # blank: no answer
    record_verdict(store, second.run_id, correct=False, answer="c)")
    assert _clinician(store, first.run_id) == [(0.0, text, None), (1.0, None, None)]  # history kept
    latest = store.latest_verdicts([first.run_id, second.run_id, "no-such-run"])
    assert {k: (v.value, v.answer) for k, v in latest.items()} == {
        first.run_id: (1.0, None),
        second.run_id: (0.0, "c)"),
    }
    assert store.latest_verdicts([]) == {}

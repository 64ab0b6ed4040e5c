"""What the Traces and Trajectories tabs read: run filters, counts, the run record, the export download.

Runs come from the real graph and store with scripted specialists (tests/trajectories.py), so each
run's difficulty is known.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from app.config import RoleSpec
from data.export import ExportFilter
from data.store import TrajectoryStore
from tests.trajectories import PANEL, make_runs
from ui.queries import RunFilter, find_runs, reward_histogram, step_counts
from ui.traces import graph_path, run_record
from ui.trajectories import export_download


@pytest.fixture
def db_settings(settings, db_url):
    """The test's settings on SQLite, then on a real PostgreSQL server (tests/conftest.py)."""
    return settings.model_copy(update={"db_url": db_url})


@pytest.fixture
def store(db_settings):
    s = TrajectoryStore(db_settings.database_url)
    yield s
    s.close()


@pytest.fixture
def runs(db_settings, store):
    settings = db_settings
    """easy, medium, hard, unlabelled on one policy; one more easy run whose specialists use another."""
    first = make_runs(settings, store, [3, 1, 0, None])
    other = settings.model_copy(update={"specialist": RoleSpec(model="org/another-specialist")})
    (moved,) = make_runs(other, store, [3], seed=1)
    return [*first, moved]


def ids(store: TrajectoryStore, **kw) -> set[str]:
    return {run.id for run, _ in find_runs(store, RunFilter(**kw))}


def test_run_filters_by_difficulty_policy_date_and_status(store, runs):
    easy, medium, hard, unlabelled, moved = (r.run_id for r in runs)
    everything = {easy, medium, hard, unlabelled, moved}
    assert ids(store) == everything
    assert ids(store, difficulty="easy") == {easy, moved}
    assert ids(store, difficulty="medium") == {medium}
    assert ids(store, difficulty="hard") == {hard}
    assert ids(store, difficulty="none") == {unlabelled}
    assert dict((r.id, d) for r, d in find_runs(store, RunFilter()))[unlabelled] == "none"

    specialist_policies = {
        st.policy_version_id for st in store.get_run(moved).steps if st.role == "specialist"
    }
    (moved_policy,) = specialist_policies
    assert ids(store, policy_id=moved_policy) == {moved}
    first_policy = next(st.policy_version_id for st in store.get_run(easy).steps if st.role == "specialist")
    assert ids(store, policy_id=first_policy) == everything - {moved}

    today = datetime.now(UTC).date()
    assert ids(store, since=today, until=today) == everything
    assert ids(store, since=today + timedelta(days=1)) == set()
    assert ids(store, until=today - timedelta(days=1)) == set()
    assert ids(store, status="ok") == everything and ids(store, status="error") == set()


def test_counts_by_role_policy_difficulty_and_reward_histogram(store, runs):
    rows = step_counts(store)
    # The two easy runs' specialists ran on different policy versions: one row each.
    easy = [(c["steps"], c["runs"]) for c in rows if c["role"] == "specialist" and c["difficulty"] == "easy"]
    assert easy == [(3, 1), (3, 1)]
    counts = {
        (c["role"], c["difficulty"]): (c["steps"], c["runs"]) for c in rows if c["difficulty"] != "easy"
    }
    assert counts[("specialist", "medium")] == (3, 1)
    assert counts[("specialist", "none")] == (3, 1)
    assert counts[("attending", "hard")] == (1, 1)
    assert sum(c["steps"] for c in rows if c["role"] == "triage") == 5
    hist = {(h["role"], h["kind"], h["value"]): h["count"] for h in reward_histogram(store)}
    # Specialists right: 3 + 1 + 0 + 3 of 12 labelled specialist steps.
    assert hist[("specialist", "accuracy", 1.0)] == 7 and hist[("specialist", "accuracy", 0.0)] == 5
    assert hist[("attending", "accuracy", 1.0)] == 4  # the scripted attending is always right


def test_run_record_has_every_step_rewards_and_no_server_paths(store, runs, tiny_model_dir):
    medium = runs[1].run_id
    store.add_feedback(medium, correct=False, answer="B")
    record = run_record(store, f"  {medium} ")
    assert record["run_id"] == medium and record["difficulty"] == "medium"
    assert [st["node"] for st in record["steps"]] == [
        "triage",
        "specialist",
        "specialist",
        "specialist",
        "attending",
    ]
    clinician = [r for r in record["rewards"] if r["source"] == "clinician"]
    assert clinician[0]["value"] == 0.0 and clinician[0]["answer"] == "B" and clinician[0]["step"] == 4
    text = json.dumps(record)
    assert str(tiny_model_dir) not in text  # base model paths are shown by their last segment only
    assert {p["base_model"] for p in record["policies"]} == {f"…/{tiny_model_dir.name}"}
    path = graph_path(record)
    m = re.fullmatch(r"triage → specialists \((.+)\) → attending", path)
    assert m and sorted(m.group(1).split(" ‖ ")) == sorted(PANEL)
    assert run_record(store, "no-such-run") is None


def test_export_download_is_one_file_per_click(store, runs, tmp_path):
    parquet, rows = export_download(store, ExportFilter(role="attending"), "parquet", tmp_path)
    assert parquet.suffix == ".parquet" and rows == 5
    assert len(pd.read_parquet(parquet)) == 5
    archive, rows = export_download(
        store, ExportFilter(role="specialist", difficulty=["easy"]), "jsonl", tmp_path
    )
    assert archive.suffix == ".zip" and rows == 6
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        lines = z.read(next(n for n in names if n.endswith("specialist.jsonl"))).splitlines()
    assert len(lines) == 6
    assert any("/images/" in n and n.endswith(".png") for n in names)
    assert not [p for p in tmp_path.glob("export-*/*") if p.is_dir()]  # only the download remains


def test_traces_groups_runs_by_case_shows_questions_and_explains_bad_dates(db_settings, store):
    from app.runtime import CaseRequest, Runtime
    from data.images import load_image
    from data.synthetic import make_case
    from tests.trajectories import scripted_panel
    from ui.traces import RUN_COLUMNS, FilterError, run_filter, run_rows

    case = make_case(0)
    questions = ["First question", "Follow-up question", "Another case"]
    runtime = Runtime(db_settings, backends=scripted_panel({q: ("A", 1) for q in questions}), store=store)
    try:
        image = [load_image(case.images[0])]
        first = runtime.ask(CaseRequest(question=questions[0], images=image, source="test"))
        other = runtime.ask(CaseRequest(question=questions[2], images=image, source="test"))
        follow = runtime.ask(
            CaseRequest(question=questions[1], images=image, source="test", thread_id=first.thread_id)
        )
    finally:
        runtime.close()
    rows = run_rows(store, run_filter("any", "any", "", "", "any"))
    col = {name: i for i, name in enumerate(RUN_COLUMNS)}
    # The newest case first; within a case its turns in order, side by side.
    assert [r[col["run"]] for r in rows] == [first.run_id, follow.run_id, other.run_id]
    assert [r[col["question"]] for r in rows] == questions
    assert [r[col["case"]] for r in rows] == [
        f"{first.thread_id[:8]} · 1/2",
        f"{first.thread_id[:8]} · 2/2",
        f"{other.thread_id[:8]} · 1/1",
    ]
    with pytest.raises(FilterError, match="'24/11/2026' is not a date; write it like 2026-11-24"):
        run_filter("any", "any", "24/11/2026", "", "any")
    with pytest.raises(FilterError, match="is before"):
        run_filter("any", "any", "2026-11-24", "2026-11-20", "any")


def test_policy_versions_show_as_policies_list_names_not_database_ids(store, runs):
    """A fresh install serves untrained checkpoints: "base (id)" as `policies list` says, never "v3"
    or "policy version 3"; a trained version is "vN"."""
    from app.policies import listed_name
    from data.run_view import diff_runs
    from ui.policy_names import name_run_policies
    from ui.timeline import timeline_figure
    from ui.traces import policy_choices
    from ui.trajectories import counts_table

    bases = {p.id: f"base ({p.id})" for p in store.list_policies()}
    assert [listed_name(p) for p in store.list_policies()] == list(bases.values())
    record = run_record(store, runs[0].run_id)
    assert {st["policy"] for st in record["steps"]} <= set(bases.values())
    assert {p["name"] for p in record["policies"]} == {st["policy"] for st in record["steps"]}
    hovers = [t for trace in timeline_figure(record).data for t in trace.hovertext]
    assert all(" · policy base (" in h for h in hovers) and not any("policy version" in h for h in hovers)
    assert {row[1] for row in counts_table(store)} == set(bases.values())
    moved = name_run_policies(store, run_record(store, runs[4].run_id))
    rows = {r.field: (r.a, r.b) for r in diff_runs(record, moved)}
    a, b = rows["policy · specialist"]
    assert a != b and a in bases.values() and b in bases.values()

    base = store.latest_policy("attending")
    trained = store.register_policy(
        "attending", base.base_model, "f" * 64, parent_id=base.id, training_run={"steps": 8}
    )
    labels = [label for label, _ in policy_choices(store)]
    assert f"attending v{trained.id} · {base.base_model.rsplit('/', 1)[-1]}" in labels
    assert not any(label.startswith("#") for label in labels)


def test_rewards_chart_counts_each_runs_latest_verdict_once(store, runs):
    """A verdict changed twice on one run, once on another: two clinician verdicts in the chart and
    the overview, by their latest values; the replaced ones stay stored."""
    from ui.trajectories import overview, reward_frame

    first, second = runs[0].run_id, runs[1].run_id
    store.add_feedback(first, correct=True)
    store.add_feedback(first, correct=False, answer="B")
    store.add_feedback(first, correct=True)  # the clinician's final word on the first run
    store.add_feedback(second, correct=False, answer="C")
    hist = {h["value"]: h["count"] for h in reward_histogram(store) if h["kind"] == "clinician"}
    assert hist == {1.0: 1, 0.0: 1}
    frame = reward_frame(store)
    assert frame[frame["reward"] == "attending · clinician"]["count"].sum() == 2
    assert "**2** clinician verdicts" in overview(store)
    assert len([r for r in store.rewards(first) if r.source == "clinician"]) == 3  # history kept

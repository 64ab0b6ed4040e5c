"""A stored run as developers read it, through the CLI and below it: `runs show` (text, --json,
--timeline), `runs diff`, `ask --json`'s policy versions, and the graph picture of each mode, on
runs of the real tiny model."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.config import RoleSpec, Settings
from app.run_graph import run_graph_svg
from app.runtime import CaseRequest, Runtime
from data.run_view import run_report, timeline
from data.schema import ROLES
from data.synthetic import make_case
from graph.context import GraphMode
from tests.scripted import ScriptedBackend

runner = CliRunner()
SMALL = {r: RoleSpec(max_new_tokens=12) for r in ROLES}
ANSWER_B = "<think>the finding</think><answer>B</answer>"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, patient_backend):
    """One case through the tiny model, then again with an attending that answers "B"."""
    settings = Settings(
        home=tmp_path_factory.mktemp("run-views") / "home", model=str(tiny_model_dir), **SMALL
    )
    case = make_case(0)
    rt = Runtime(settings, backends=dict.fromkeys(ROLES, patient_backend))
    a = rt.ask(CaseRequest.from_synthetic(case, limits=settings.image_limits()))
    scripted = ScriptedBackend(lambda _: ANSWER_B, model_id="attending-v2")
    rt_b = Runtime(
        settings, backends={"triage": patient_backend, "specialist": patient_backend, "attending": scripted}
    )
    b = rt_b.ask(CaseRequest.from_synthetic(case, limits=settings.image_limits()))
    rt_b.close()
    assert (a.status, b.status) == ("ok", "ok") and a.answer != "B" and b.answer == "B"
    yield rt, case, a, b
    rt.close()


@pytest.fixture
def cli_env(two_runs, tiny_model_dir, monkeypatch):
    """The CLI on the store of ``two_runs``."""
    monkeypatch.setenv("MMEDAGENT_HOME", str(two_runs[0].settings.home))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(tiny_model_dir))


def test_timeline_puts_the_parallel_specialists_in_one_batch(two_runs):
    rt, _, a, _ = two_runs
    bars = timeline(run_report(rt.store, a.run_id))
    assert [b.label.split(" · ")[0] for b in bars] == ["triage", *["specialist"] * 3, "attending"]
    triage, *specialists, attending = bars
    assert len({b.batch for b in specialists}) == 1 and specialists[0].batch not in (
        triage.batch,
        attending.batch,
    )
    assert all(b.batch_size == 3 for b in specialists)
    # the specialists overlap in time, after triage and before the attending
    assert max(b.start_s + b.wait_s for b in specialists) < min(b.end_s for b in specialists)
    assert triage.end_s <= min(b.start_s for b in specialists) + 1e-3
    assert attending.start_s >= max(b.end_s for b in specialists) - 1e-3
    stored = rt.store.get_run(a.run_id).steps
    assert [(b.prompt_tokens, b.completion_tokens) for b in bars] == [
        (s.prompt_tokens, s.completion_tokens) for s in stored
    ]
    assert all(b.wait_s >= 0 and b.model_s > 0 for b in bars)


def test_runs_show_timeline_through_the_cli(two_runs, cli_env):
    _, _, a, _ = two_runs
    res = runner.invoke(app, ["runs", "show", a.run_id, "--timeline"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"timeline of run {a.run_id}" in res.output
    rows = [line for line in res.output.splitlines() if re.search(r"│ \d │", line)]
    assert len(rows) == 5 and sum("batch 2 (3)" in r for r in rows) == 3
    assert "specialist · Dermatologist" in res.output or "specialist · " in res.output
    res = runner.invoke(app, ["runs", "show", a.run_id, "--timeline", "--json"])
    bars = json.loads(res.output)["timeline"]
    assert len(bars) == 5 and [b["batch"] for b in bars[1:4]] == ["batch 2"] * 3
    assert all(b["end_s"] == pytest.approx(b["start_s"] + b["wait_s"] + b["model_s"]) for b in bars)


def test_runs_show_tells_the_whole_run(two_runs, cli_env):
    rt, case, a, _ = two_runs
    rt.store.add_feedback(a.run_id, correct=False, answer=case.answer)
    res = runner.invoke(app, ["runs", "show", a.run_id, "--json"])
    assert res.exit_code == 0, res.output
    run = json.loads(res.output)
    assert run["gold_answer"] == case.answer and run["mode"] == "multi"
    assert [s["policy_version_id"] for s in run["steps"]] == [rt.policy_ids[s["role"]] for s in run["steps"]]
    assert {p["id"] for p in run["policies"]} == set(rt.policy_ids.values())
    kinds = {(r["step"], r["kind"]) for r in run["rewards"]}
    assert {(i, k) for i in range(5) for k in ("format", "accuracy")} <= kinds
    assert (4, "clinician") in kinds  # the verdict, on the attending step
    text = runner.invoke(app, ["runs", "show", a.run_id], env={"COLUMNS": "200"}).output
    assert f"gold answer: {case.answer}" in text
    assert text.count(f"policy version={rt.policy_ids['specialist']} ") == 3
    assert "clinician=0 (clinician)" in text and text.count("rewards: format=") == 5


def test_runs_diff_marks_the_changed_answer(two_runs, cli_env):
    _, _, a, b = two_runs
    res = runner.invoke(app, ["runs", "diff", a.run_id, b.run_id], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    (answer,) = [line for line in res.output.splitlines() if "│ answer " in line]
    assert "≠" in answer and "B" in answer
    (question,) = [line for line in res.output.splitlines() if "│ question " in line]
    assert "≠" not in question
    rows = {
        r["field"]: r
        for r in json.loads(runner.invoke(app, ["runs", "diff", a.run_id, b.run_id, "--json"]).output)["rows"]
    }
    assert rows["answer"]["changed"] and rows["answer"]["b"] == "B"
    assert not rows["specialists"]["changed"] and not rows["case"]["changed"]
    res = runner.invoke(app, ["runs", "diff", a.run_id, "nope"])
    assert res.exit_code == 2 and "no run 'nope'" in res.output


def test_ask_json_names_the_policy_version_of_each_role(tmp_path, cli_env):
    from PIL import Image

    img = tmp_path / "scan.png"
    Image.new("RGB", (56, 56), (200, 40, 40)).save(img)
    res = runner.invoke(app, ["ask", "--image", str(img), "--question", "What is it?", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{") :])
    from data.store import TrajectoryStore

    store = TrajectoryStore(Settings().database_url)
    latest = {role: store.latest_policy(role).id for role in ROLES}
    store.close()
    assert result["policy_versions"] == latest


def _classes(svg: str) -> dict[str, str]:
    return {
        m.group(1).replace("&#45;", "-"): m.group(2).split()[-1]
        for m in re.finditer(r'<g id="graph&#45;([^"]+)" class="node ([^"]+)"', svg)
    }


def test_graph_picture_marks_the_path_and_the_failed_node(two_runs, make_runtime, tiny_backend):
    rt, case, a, _ = two_runs
    report = run_report(rt.store, a.run_id)
    classes = _classes(run_graph_svg(report))
    consulted = report["specialties"]
    assert set(classes) == {"start", "triage", "attending", "end"} | {f"specialist-{i}" for i in range(3)}
    parsed = {st["specialty"]: st["parse_status"] for st in report["steps"] if st["specialty"]}
    for i, specialty in enumerate(consulted):
        assert classes[f"specialist-{i}"] == ("failed" if parsed[specialty] == "failed" else "ran")
    (triage,) = [st["parse_status"] for st in report["steps"] if st["node"] == "triage"]
    assert classes["triage"] == ("failed" if triage == "failed" else "ran") and classes["end"] == "ran"
    # a run whose attending's backend is down: the attending is red, the end never reached
    down = ScriptedBackend(lambda _: "", fail=True)
    rt_down = make_runtime(backends={"triage": tiny_backend, "specialist": tiny_backend, "attending": down})
    failed = rt_down.ask(CaseRequest.from_synthetic(case, limits=rt.settings.image_limits()))
    assert failed.status == "error"
    classes = _classes(run_graph_svg(run_report(rt_down.store, failed.run_id)))
    assert (classes["attending"], classes["end"]) == ("failed", "skipped")
    # triage's backend down: triage red, nothing after it reached
    rt_triage = make_runtime(backends={"triage": down, "specialist": tiny_backend, "attending": tiny_backend})
    failed = rt_triage.ask(CaseRequest.from_synthetic(case, limits=rt.settings.image_limits()))
    classes = _classes(run_graph_svg(run_report(rt_triage.store, failed.run_id)))
    assert classes == {"start": "ran", "triage": "failed", "specialist": "skipped", "attending": "skipped",
                       "end": "skipped"}  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "nodes"),
    [
        (GraphMode("single"), {"start", "attending", "end"}),
        (GraphMode("static", specialists=("Radiologist",)), {"start", "panel", "attending", "end"}),
        (GraphMode("vote", votes=2), {"start", "vote", "end"}),
    ],
)
def test_graph_picture_of_each_baseline_mode(make_runtime, mode, nodes):
    rt = make_runtime(mode=mode, **SMALL)
    res = rt.ask(CaseRequest.from_synthetic(make_case(1), limits=rt.settings.image_limits()))
    report = run_report(rt.store, res.run_id)
    assert report["mode"] == mode.kind
    classes = _classes(run_graph_svg(report))
    drawn = {n for n in classes if not n.startswith("specialist-")}
    assert drawn == nodes and classes["end"] == "ran"
    if mode.kind == "static":
        assert sum(n.startswith("specialist-") for n in classes) == 3
    if mode.kind == "vote":
        assert "vote ×2" in run_graph_svg(report)

"""Scoring end to end: a real OpenAI-compatible server on loopback answers benchmark folders (SLAKE
and VQA-RAD layouts, numeric answers) through the app's OpenAI backend, and the report scores it.

A server that always says the gold answer, in the forms models write (a letter, the text, ``4cm``
for ``4 cm``, ``Two`` for ``2``, ``是的`` for ``是``), must score 100% closed accuracy and 1.0 open
recall; one that says a near miss (``T2`` for ``T1``, ``12`` for ``2``) must score 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.config import RoleSpec, Settings
from app.evaluation.report import ScorerMismatch, compare_reports
from app.evaluation.runner import EvalSpec, evaluate
from app.evaluation.stored import read_report, rescore, write_report
from app.runtime import Runtime
from data.answers import SCORER_VERSION
from tests.gold_server import SLAKE, VQA_RAD, GoldServer, write_slake, write_vqa_rad

LAYOUTS = {"slake": (write_slake, SLAKE), "vqa-rad": (write_vqa_rad, VQA_RAD)}


def _eval(tmp_path: Path, benchmark: str, *, near_miss: bool) -> tuple[dict, Runtime, GoldServer]:
    write, _ = LAYOUTS[benchmark]
    root = write(tmp_path / benchmark)
    spec = EvalSpec(benchmark=benchmark, mode="single", path=root, language="all")
    with GoldServer(near_miss=near_miss) as server:
        role = RoleSpec(backend="openai", base_url=server.base_url, model="gold-server", max_new_tokens=64)
        settings = Settings(home=tmp_path / "home", triage=role, specialist=role, attending=role)
        runtime = Runtime(settings, mode=spec.graph_mode())
        try:
            report = evaluate(runtime, spec, spec.load_cases())
        except BaseException:
            runtime.close()
            raise
    return report, runtime, server


@pytest.mark.parametrize("benchmark", list(LAYOUTS))
def test_gold_answers_in_any_form_score_full_marks(tmp_path: Path, benchmark: str):
    report, runtime, server = _eval(tmp_path, benchmark, near_miss=False)
    runtime.close()
    cases = LAYOUTS[benchmark][1]
    closed = sum(c.answer_type == "CLOSED" for c in cases)
    assert server.requests == len(cases) and report["cases"]["errors"] == 0
    assert report["accuracy"] == {**report["accuracy"], "n": closed, "correct": closed, "accuracy": 1.0}
    assert report["open"]["n"] == len(cases) - closed and report["open"]["recall"] == 1.0
    assert report["scorer_version"] == SCORER_VERSION


@pytest.mark.parametrize("benchmark", list(LAYOUTS))
def test_near_misses_score_nothing(tmp_path: Path, benchmark: str):
    report, runtime, _ = _eval(tmp_path, benchmark, near_miss=True)
    runtime.close()
    assert report["accuracy"]["n"] > 0 and report["accuracy"]["correct"] == 0
    assert report["open"]["exact"] == 0.0
    by_gold = {c["case_id"]: c for c in report["per_case"]}
    t1 = next(c for c in LAYOUTS[benchmark][1] if c.gold == "T1")
    assert by_gold[f"{benchmark}-{t1.qid}"]["answer"] == "T2"
    assert by_gold[f"{benchmark}-{t1.qid}"]["correct"] is False
    for case in LAYOUTS[benchmark][1]:
        if case.answer_type == "OPEN" and str(case.gold).isdigit():  # "12" for "2": no shared token
            assert by_gold[f"{benchmark}-{case.qid}"]["recall"] == 0.0


def test_rescore_rebuilds_a_report_from_the_stored_runs(tmp_path: Path):
    """A report scored by an older scorer is rebuilt from the same runs, without asking the server."""
    report, runtime, server = _eval(tmp_path, "vqa-rad", near_miss=False)
    out = tmp_path / "report"
    # What an older scorer wrote: no version, other verdicts.
    old = json.loads(json.dumps(report))
    del old["scorer_version"], old["case_ids"]
    for case in old["per_case"]:
        if "correct" in case:
            case["correct"] = False
    old["accuracy"] = {**old["accuracy"], "correct": 0, "accuracy": 0.0}
    write_report(old, out)
    with pytest.raises(ScorerMismatch, match=r"scorer v1 .* v2.*rescore"):
        compare_reports(read_report(out / "report.json"), report)
    requests = server.requests
    try:
        new, previous = rescore(runtime.store, report["eval_id"], out)
        bare, none = rescore(runtime.store, report["eval_id"], tmp_path / "no-report-yet")
    finally:
        runtime.close()
    assert none is None and bare["accuracy"] == report["accuracy"] and bare["open"] == report["open"]
    assert bare["benchmark"] == "vqa-rad" and bare["mode"] == "unknown"  # only the runs to go by
    assert server.requests == requests  # nothing was asked again
    assert previous is not None and previous["accuracy"]["correct"] == 0
    assert new["accuracy"] == report["accuracy"] and new["per_case"] == report["per_case"]
    assert new["scorer_version"] == SCORER_VERSION and new["config"] == report["config"]
    assert read_report(out / "report.json")["accuracy"]["accuracy"] == 1.0
    assert read_report(out / "report.scorer-v1.json")["accuracy"]["accuracy"] == 0.0  # kept, not lost
    cmp = compare_reports(read_report(out / "report.scorer-v1.json"), new, force=True)
    assert cmp["scorer_versions"] == [1, SCORER_VERSION]
    assert compare_reports(new, report)["paired"]["delta"] == 0.0


def test_cli_rescore_and_compare_refuses_mixed_scorers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_vqa_rad(tmp_path / "vqa-rad")
    runner = CliRunner()
    with GoldServer() as server:
        monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("MMEDAGENT_MODEL", "gold-server")
        for role in ("TRIAGE", "SPECIALIST", "ATTENDING"):
            monkeypatch.setenv(f"MMEDAGENT_{role}__BACKEND", "openai")
            monkeypatch.setenv(f"MMEDAGENT_{role}__BASE_URL", server.base_url)
        first = runner.invoke(
            app, ["eval", "--benchmark", "vqa-rad", "--path", str(root), "--mode", "single"]
        )
    assert first.exit_code == 0, first.output
    (folder,) = (tmp_path / "home" / "evals").iterdir()
    report = read_report(folder / "report.json")
    old = {k: v for k, v in report.items() if k != "scorer_version"}  # as an older scorer wrote it
    old["accuracy"] = {**old["accuracy"], "correct": 0, "accuracy": 0.0}
    write_report(old, folder)

    rescored = runner.invoke(app, ["eval", "rescore", report["eval_id"]])  # the server is gone
    assert rescored.exit_code == 0, rescored.output
    assert f"scorer v1 -> v{SCORER_VERSION}; closed accuracy 0.0 -> 100.0 %" in rescored.output
    assert read_report(folder / "report.json")["accuracy"]["accuracy"] == 1.0

    args = ["eval", "compare", str(folder / "report.scorer-v1.json"), str(folder / "report.json")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "scorer v1" in refused.output and "rescore" in refused.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0 and "forced: A scored by scorer v1" in forced.output

    missing = runner.invoke(app, ["eval", "rescore", "no-such-eval"])
    assert missing.exit_code == 2 and "no stored runs for eval 'no-such-eval'" in missing.output

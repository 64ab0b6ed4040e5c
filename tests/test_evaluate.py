"""The evaluation harness: scoring, statistics, the four modes, resuming, the report and the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from app.cli import app
from app.config import RoleSpec
from app.evaluation.report import EvalError, bootstrap_ci, compare_reports, report_markdown
from app.evaluation.runner import EvalSpec, evaluate, parse_mode
from app.evaluation.stored import read_report, write_report
from data.answers import is_correct as closed_correct
from data.answers import token_f1, token_recall
from data.benchmarks import YES_NO, BenchmarkCase, CaseImage, load_benchmark
from data.schema import Run
from graph.context import GraphMode
from graph.prompts import format_question
from tests.scripted import ScriptedBackend, request_text

OPTIONS = ("A) Normal", "B) Nodule", "C) Mass", "D) Fracture")

# --- scoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["B", "b", "b)", "(B)", "Answer: B.", "The answer is B", "B) Nodule", "Nodule", "nodule.", " NODULE "],
)
def test_closed_answers_naming_the_gold_option(answer):
    assert closed_correct(answer, "B", OPTIONS)
    assert closed_correct(answer, "Nodule", OPTIONS)  # gold given as option text


@pytest.mark.parametrize("answer", ["C", "Mass", "", None, "I do not know", "Nodule or mass", "E"])
def test_closed_answers_that_are_wrong_or_ambiguous(answer):
    assert not closed_correct(answer, "B", OPTIONS)


@pytest.mark.parametrize(
    ("answer", "gold", "right"),
    [
        ("Yes", "A", True),
        ("yes.", "A", True),
        ("YES", "A", True),
        ("A", "A", True),
        ("Yes, there is a pneumothorax", "A", True),
        ("No", "A", False),
        ("No.", "B", True),
        ("no, it is normal", "B", True),
        ("b)", "B", True),
        ("Yes", "B", False),
        ("maybe", "B", False),
    ],
)
def test_yes_no_variants(answer, gold, right):
    assert closed_correct(answer, gold, YES_NO) is right


def test_closed_free_form_is_exact_after_normalising():
    assert closed_correct("Right.", "right", ())
    assert not closed_correct("left", "right", ())
    assert not closed_correct("the right side", "right", ())


def test_open_question_scores():
    assert token_f1("Left Lung", "left lung") == 1.0
    assert token_f1("the left lung", "left lung") == 1.0  # articles do not count
    assert token_f1("upper left lung", "left lung") == pytest.approx(0.8)
    assert token_recall("the upper left lung", "left lung") == 1.0
    assert token_recall("lung", "left lung") == 0.5
    assert token_f1("", "left lung") == 0.0 and token_f1("heart", "left lung") == 0.0


# --- statistics ---------------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean():
    """95% CIs of samples from a known distribution contain its mean about 95% of the time."""
    rng = np.random.default_rng(123)
    trials, n, p = 200, 150, 0.7
    covered = 0
    for t in range(trials):
        sample = (rng.random(n) < p).astype(float)
        lo, hi = bootstrap_ci(sample, seed=t)
        assert lo <= sample.mean() <= hi
        covered += lo <= p <= hi
    assert 0.88 <= covered / trials <= 0.99
    # seeded: the same data gives the same interval; more data, a narrower one
    data = [1, 0, 1, 1, 0, 1, 1, 1, 0, 1]
    assert bootstrap_ci(data) == bootstrap_ci(data)
    lo10, hi10 = bootstrap_ci(data)
    lo100, hi100 = bootstrap_ci(data * 10)
    assert hi100 - lo100 < hi10 - lo10
    assert bootstrap_ci([]) is None


# --- modes --------------------------------------------------------------------------------------


def test_parse_mode():
    assert parse_mode("multi") == GraphMode("multi")
    assert parse_mode("single") == GraphMode("single")
    assert parse_mode("vote-5") == GraphMode("vote", votes=5)
    assert parse_mode("static", ["Radiologist"]) == GraphMode("static", specialists=("Radiologist",))
    for bad in ("vote-0", "vote", "vote-x", "triage", ""):
        with pytest.raises(EvalError, match="unknown mode"):
            parse_mode(bad)
    with pytest.raises(EvalError, match="unknown specialties"):
        parse_mode("static", ["Cardiologist"])
    with pytest.raises(EvalError, match="only applies to --mode static"):
        parse_mode("multi", ["Radiologist"])


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), colour).save(buf, format="PNG")
    return buf.getvalue()


def _cases(n: int = 4) -> list[BenchmarkCase]:
    """Closed cases with distinct questions (so a scripted model can tell them apart); gold B."""
    specialties = ["Radiologist", "Pathologist", "Dermatologist", "Radiologist", "Surgeon", "Oncologist"]
    return [
        BenchmarkCase(
            case_id=f"case-{i}",
            benchmark="fixture",
            question=f"Question number {i}: what is shown?",
            images=(CaseImage(f"img{i}.png", data=_png((40 * i, 100, 100))),),
            options=OPTIONS,
            answer="B",
            answer_text="Nodule",
            closed=True,
            specialty=specialties[i % len(specialties)],
            subset="even" if i % 2 == 0 else "odd",
        )
        for i in range(n)
    ]


def _case_index(req) -> int:
    text = request_text(req)
    return next(i for i in range(10) if f"Question number {i}:" in text)


def _answer(letter: str) -> str:
    return f"<think>looked carefully</think><answer>{letter}</answer>"


def _specialist_name(req) -> str:
    return req.messages[0]["content"][0]["text"].split("experienced ")[1].split(".")[0]


def _spec(mode: str, **kw) -> EvalSpec:
    return EvalSpec(benchmark="fixture", mode=mode, **kw)


def _run(make_runtime, backends, mode: str, cases, **kw):
    spec = _spec(mode)
    rt = make_runtime(backends=backends, mode=spec.graph_mode())
    return rt, evaluate(rt, spec, cases, **kw)


def test_multi_mode_report(make_runtime):
    """Known answers give known accuracy, difficulty buckets and triage accuracy."""
    cases = _cases(4)
    gold_specialty = {i: c.specialty for i, c in enumerate(cases)}
    # case 0: all specialists right (easy); 1: only the Radiologist (medium); 2 and 3: none (hard)
    right_specialists = {0: "all", 1: "Radiologist", 2: None, 3: None}

    def specialist(req):
        i, who = _case_index(req), _specialist_name(req)
        right = right_specialists[i] == "all" or right_specialists[i] == who
        return _answer("B" if right else "C")

    backends = {
        # triage picks the gold specialty for cases 0 and 1 only
        "triage": ScriptedBackend(
            lambda r: _answer(gold_specialty[_case_index(r)] if _case_index(r) < 2 else "Ophthalmologist")
        ),
        "specialist": ScriptedBackend(specialist),
        # the attending is right on cases 0 and 2; on 3 it answers garbage (a format failure)
        "attending": ScriptedBackend(
            lambda r: {0: _answer("B"), 1: _answer("D"), 2: "Answer: Nodule", 3: "%%%"}[_case_index(r)]
        ),
    }
    rt, report = _run(make_runtime, backends, "multi", cases)
    assert report["cases"] == {
        "total": 4,
        "run": 4,
        "closed": 4,
        "open": 0,
        "skipped": 0,
        "missing": 0,
        "errors": 0,
    }
    assert report["accuracy"]["correct"] == 2 and report["accuracy"]["accuracy"] == 0.5
    lo, hi = report["accuracy"]["ci95"]
    assert lo <= 0.5 <= hi
    assert {k: (v["n"], v["correct"]) for k, v in report["by_difficulty"].items()} == {
        "easy": (1, 1),
        "medium": (1, 0),
        "hard": (2, 1),
    }
    assert report["by_difficulty"] and list(report["by_difficulty"]) == ["easy", "medium", "hard"]
    assert report["triage"]["n"] == 4 and report["triage"]["top1"] == 0.5
    assert report["by_specialty"]["Radiologist"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert report["by_subset"]["even"]["correct"] == 2
    assert report["format"] == {"n": 4, "ok": 2, "recovered": 1, "failed": 1, "failure_rate": 0.25}
    assert report["cost"]["per_case"]["model_calls"] == 5.0
    assert report["cost"]["total"]["prompt_tokens"] == 4 * 5 * 5  # ScriptedBackend: 5 prompt tokens a call
    runs = rt.store.list_runs(eval_id=report["eval_id"], limit=None)
    assert (
        len(runs) == 4
        and {r.source for r in runs} == {"eval"}
        and {r.case_id for r in runs} == {c.case_id for c in cases}
    )
    assert report["eval_id"].startswith("fixture-multi-")
    md = report_markdown(report)
    assert "| closed accuracy % | 50.0  (2/4) |" in md and "## Closed accuracy by difficulty" in md


def test_open_questions_are_scored_apart_from_the_accuracy(make_runtime):
    closed = _cases(2)
    open_case = BenchmarkCase(
        case_id="open-0",
        benchmark="fixture",
        question="Question number 5: where is the lesion?",
        images=closed[0].images,
        options=(),
        answer="left lung",
        answer_text="left lung",
        closed=False,
        specialty="Radiologist",
    )
    answers = {0: _answer("B"), 1: _answer("C"), 5: _answer("the upper left lung")}
    backend = ScriptedBackend(lambda r: answers[_case_index(r)])
    _, report = _run(
        make_runtime,
        dict.fromkeys(("triage", "specialist", "attending"), backend),
        "single",
        [*closed, open_case],
    )
    assert report["accuracy"]["n"] == 2 and report["accuracy"]["correct"] == 1  # the open case is not in it
    assert report["open"] == {"n": 1, "exact": 0.0, "token_f1": pytest.approx(0.8), "recall": 1.0}
    assert report["cases"]["closed"] == 2 and report["cases"]["open"] == 1
    assert "open: exact / token F1 / recall %" in report_markdown(report)


def test_static_mode_consults_the_fixed_panel_without_triage(make_runtime):
    triage = ScriptedBackend(lambda r: _answer("Radiologist"))
    backends = {
        "triage": triage,
        "specialist": ScriptedBackend(lambda r: _answer("B")),
        "attending": ScriptedBackend(lambda r: _answer("B")),
    }
    spec = _spec("static", specialists=("Dermatologist",))
    rt = make_runtime(backends=backends, mode=spec.graph_mode())
    report = evaluate(rt, spec, _cases(2))
    assert report["accuracy"]["accuracy"] == 1.0 and report["triage"] is None
    assert triage.calls == []
    for run in rt.store.list_runs(eval_id=report["eval_id"], limit=None):
        full = rt.store.get_run(run.id)
        assert full.specialties == ["Dermatologist", "Pathologist", "Radiologist"]
        assert [s.node for s in full.steps].count("specialist") == 3 and full.steps[0].node != "triage"
    assert set(report["by_difficulty"]) == {"easy"}


def test_single_mode_is_the_attending_alone(make_runtime):
    attending = ScriptedBackend(lambda r: _answer("B" if _case_index(r) == 0 else "A"))
    backends = {
        "triage": ScriptedBackend(lambda r: ""),
        "specialist": ScriptedBackend(lambda r: ""),
        "attending": attending,
    }
    _, report = _run(make_runtime, backends, "single", _cases(3))
    assert report["accuracy"]["correct"] == 1 and report["cost"]["per_case"]["model_calls"] == 1.0
    assert report["by_difficulty"] == {} and report["triage"] is None
    assert backends["triage"].calls == [] and backends["specialist"].calls == []
    prompt = request_text(attending.calls[0][0])
    assert "No specialist opinions are available." in prompt
    assert format_question(_cases(1)[0].question, OPTIONS) in prompt


def test_vote_mode_takes_the_majority_of_samples(make_runtime, settings):
    scripts = {0: ["A", "B", "B"], 1: ["C", "C", "B"], 2: ["D", "garbage", "A"]}  # majority B, C; tie -> D
    seen: dict[int, int] = {}

    def attending(req):
        i = _case_index(req)
        k = seen.get(i, 0)
        seen[i] = k + 1
        letter = scripts[i][k]
        return "no answer here" if letter == "garbage" else _answer(letter)

    backend = ScriptedBackend(attending)
    spec = _spec("vote-3", vote_temperature=0.7)
    roles = dict.fromkeys(("triage", "specialist", "attending"), backend)
    rt = make_runtime(roles, spec.graph_mode(), attending=spec.settings_for(settings).attending)
    report = evaluate(rt, spec, _cases(3))
    answers = {c["case_id"]: c["answer"] for c in report["per_case"]}
    assert answers == {"case-0": "B", "case-1": "C", "case-2": "D"}
    assert report["accuracy"]["correct"] == 1 and report["cost"]["per_case"]["model_calls"] == 3.0
    assert all(r.sampling.temperature == 0.7 for call in backend.calls for r in call)
    run = rt.store.get_run(next(c["run_id"] for c in report["per_case"] if c["case_id"] == "case-2"))
    assert [(s.node, s.role) for s in run.steps] == [("vote", "attending")] * 3
    assert [s.parsed["option"] for s in run.steps] == ["D", None, "A"]


def test_vote_needs_a_positive_temperature(settings):
    with pytest.raises(EvalError, match="temperature > 0"):
        _spec("vote-3", vote_temperature=0.0).settings_for(settings)


# --- robustness: bad input, concurrency, resuming -----------------------------------------------


def test_bad_image_is_skipped_with_its_reason_and_nothing_stored(make_runtime):
    cases = _cases(3)
    broken = BenchmarkCase(
        **{**cases[1].__dict__, "images": (CaseImage("broken.png", data=b"not an image"),)}
    )
    cases[1] = broken
    backends = dict.fromkeys(("triage", "specialist", "attending"), ScriptedBackend(lambda r: _answer("B")))
    rt, report = _run(make_runtime, backends, "single", cases)
    assert report["cases"]["skipped"] == 1 and report["cases"]["run"] == 2
    assert report["skipped"][0]["case_id"] == "case-1" and "broken.png" in report["skipped"][0]["reason"]
    assert report["accuracy"] == {**report["accuracy"], "n": 2, "correct": 2}
    assert {r.case_id for r in rt.store.list_runs(eval_id=report["eval_id"], limit=None)} == {
        "case-0",
        "case-2",
    }


def test_failed_runs_count_as_errors_and_are_retried(make_runtime):
    failing = ScriptedBackend(lambda r: _answer("B"), fail=True)
    backends = dict.fromkeys(("triage", "specialist", "attending"), failing)
    rt, report = _run(make_runtime, backends, "single", _cases(2))
    assert report["cases"]["errors"] == 2 and report["accuracy"]["correct"] == 0
    assert "connection refused" in report["errors"][0]["error"]
    failing.fail = False  # the backend is back: rerunning retries the failed cases
    report = evaluate(rt, _spec("single"), _cases(2))
    assert report["cases"]["errors"] == 0 and report["accuracy"]["correct"] == 2


def test_workers_run_cases_concurrently_each_once(make_runtime):
    backends = {
        "triage": ScriptedBackend(lambda r: _answer("Radiologist")),
        "specialist": ScriptedBackend(lambda r: _answer("B")),
        "attending": ScriptedBackend(lambda r: _answer("B" if _case_index(r) % 2 else "C")),
    }
    rt, report = _run(make_runtime, backends, "multi", _cases(6), workers=3)
    assert report["cases"]["run"] == 6 and report["accuracy"]["correct"] == 3
    with rt.store.session() as s:
        counts = s.execute(
            select(Run.case_id, func.count()).where(Run.eval_id == report["eval_id"]).group_by(Run.case_id)
        ).all()
    assert sorted(counts) == [(f"case-{i}", 1) for i in range(6)]


def _stable(report: dict) -> dict:
    """A report without what legitimately differs between two runs of the same eval."""
    volatile = {"eval_id", "created_at", "run_id", "wall_s", "model_s"}

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in volatile}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(report)


@pytest.mark.slow
def test_resumed_eval_reports_what_an_uninterrupted_one_does(make_runtime):
    """Real tiny model: interrupt an eval after two cases, rerun it, compare with a full run."""
    rt = make_runtime(mode=GraphMode("single"), attending=RoleSpec(max_new_tokens=12))
    spec = _spec("single")
    cases = load_benchmark("synthetic", n=5, seed=7)
    full = evaluate(rt, spec, cases, eval_id="full")

    seen = []

    def interrupt_after_two(outcome):
        seen.append(outcome)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(rt, spec, cases, eval_id="resumed", on_case=interrupt_after_two)
    stored = len(rt.store.list_runs(eval_id="resumed", limit=None))
    assert 2 <= stored < 5  # the cases in flight finished and were stored; the rest were not run
    outcomes = []
    resumed = evaluate(rt, spec, cases, eval_id="resumed", on_case=outcomes.append)
    assert [o.status for o in outcomes].count("reused") == stored
    assert len(rt.store.list_runs(eval_id="resumed", limit=None)) == 5  # nothing ran twice
    assert _stable(resumed) == _stable(full)
    assert resumed["cases"]["run"] == 5 and resumed["format"]["n"] == 5


# --- reports on disk and comparing --------------------------------------------------------------


def test_compare_gives_deltas_and_breaks_a_baseline_down_by_panel_difficulty(make_runtime, tmp_path):
    cases = _cases(4)
    right = {0: "all", 1: "Radiologist", 2: None, 3: None}
    multi_backends = {
        "triage": ScriptedBackend(lambda r: _answer("Radiologist")),
        "specialist": ScriptedBackend(
            lambda r: _answer("B" if right[_case_index(r)] in ("all", _specialist_name(r)) else "C")
        ),
        "attending": ScriptedBackend(lambda r: _answer("B" if _case_index(r) < 3 else "A")),
    }
    _, multi = _run(make_runtime, multi_backends, "multi", cases)
    single = ScriptedBackend(lambda r: _answer("B" if _case_index(r) == 0 else "A"))
    single_backends = dict.fromkeys(("triage", "specialist", "attending"), single)
    _, single = _run(make_runtime, single_backends, "single", cases)
    a_path, _ = write_report(single, tmp_path / "a")
    b_path, md_path = write_report(multi, tmp_path / "b")
    assert md_path.read_text().startswith("# fixture · multi")
    cmp = compare_reports(read_report(a_path), read_report(b_path))
    rows = {r["metric"]: r for r in cmp["rows"]}
    assert rows["closed accuracy"]["a"] == 0.25 and rows["closed accuracy"]["b"] == 0.75
    assert rows["closed accuracy"]["delta"] == pytest.approx(0.5)
    assert rows["model calls / case"]["delta"] == pytest.approx(4.0)
    # the single baseline has no specialists; its cases are bucketed by the multi run's panel
    assert rows["accuracy · easy"]["a"] == 1.0 and rows["accuracy · hard"]["a"] == 0.0
    assert rows["accuracy · hard"]["b"] == 0.5
    assert cmp["paired"]["n"] == 4 and cmp["paired"]["delta"] == pytest.approx(0.5)
    with pytest.raises(EvalError, match="not an evaluation report"):
        (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
        read_report(tmp_path / "x.json")


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, tiny_model_dir, monkeypatch):
    values = {
        "MMEDAGENT_HOME": str(tmp_path / "home"),
        "MMEDAGENT_MODEL": str(tiny_model_dir),
        "MMEDAGENT_ATTENDING__MAX_NEW_TOKENS": "12",
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return tmp_path


@pytest.mark.slow
def test_cli_eval_resume_and_compare(cli_env: Path):
    runner = CliRunner()
    args = ["eval", "--benchmark", "synthetic", "--n", "3", "--mode", "single", "--seed", "2"]
    first = runner.invoke(app, [*args, "--out", str(cli_env / "single")])
    assert first.exit_code == 0, first.output
    assert "closed accuracy %" in first.output and "3 / 3" in first.output
    report = json.loads((cli_env / "single" / "report.json").read_text())
    assert (cli_env / "single" / "report.md").is_file() and report["cases"]["run"] == 3
    # the same command again resumes: nothing new runs, the same report comes out
    again = runner.invoke(app, [*args, "--out", str(cli_env / "again")])
    assert again.exit_code == 0, again.output
    assert _stable(json.loads((cli_env / "again" / "report.json").read_text())) == _stable(report)
    from data.store import TrajectoryStore

    store = TrajectoryStore(f"sqlite:///{cli_env / 'home' / 'mmedagent.db'}")
    assert len(store.list_runs(eval_id=report["eval_id"], limit=None)) == 3
    store.close()
    cmp = runner.invoke(
        app,
        ["eval", "compare", str(cli_env / "single" / "report.json"), str(cli_env / "again" / "report.json")],
    )
    assert cmp.exit_code == 0, cmp.output
    assert "closed accuracy %" in cmp.output and "+0.0" in cmp.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval"], "--benchmark is required"),
        (["eval", "--benchmark", "nope", "--path", "."], "unknown benchmark"),
        (["eval", "--benchmark", "slake"], "needs --path"),
        (["eval", "--benchmark", "synthetic", "--mode", "vote-0"], "unknown mode"),
        (["eval", "compare", "missing-a.json", "missing-b.json"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_a_reason(cli_env, args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (cli_env / "home" / "mmedagent.db").exists()  # nothing was written

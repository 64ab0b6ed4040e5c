"""The opened run's timeline, graph picture and comparison in the Traces tab, in a real headless
Chromium, on runs of the real tiny model. Screenshots go to artifacts/ui/ (gitignored)."""

from __future__ import annotations

import pytest

from app.config import RoleSpec, Settings
from app.runtime import CaseRequest, Runtime
from data.schema import ROLES
from data.synthetic import make_case
from tests.scripted import ScriptedBackend
from tests.ui_server import ARTIFACTS, chromium, serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, patient_backend):
    """A multi run of the tiny model, and the same case again with an attending that answers "B"
    (a "new policy"): (runtime, run A id, run B id)."""
    settings = Settings(
        home=tmp_path_factory.mktemp("ui-run-views") / "home",
        model=str(tiny_model_dir),
        triage=RoleSpec(max_new_tokens=16),
        specialist=RoleSpec(max_new_tokens=16),
        attending=RoleSpec(max_new_tokens=16),
    )
    case = make_case(0)
    runtime = Runtime(settings, backends=dict.fromkeys(ROLES, patient_backend))
    a = runtime.ask(CaseRequest.from_synthetic(case, limits=settings.image_limits()))
    scripted = ScriptedBackend(
        lambda _: "<think>the finding</think><answer>B</answer>", model_id="attending-v2"
    )
    other = Runtime(
        settings, backends={"triage": patient_backend, "specialist": patient_backend, "attending": scripted}
    )
    b = other.ask(CaseRequest.from_synthetic(case, limits=settings.image_limits()))
    other.close()
    assert (a.status, b.status) == ("ok", "ok") and a.answer != "B" and b.answer == "B"
    yield runtime, a.run_id, b.run_id
    runtime.close()


@pytest.fixture(scope="module")
def page(runs):
    runtime, run_a, _ = runs
    with chromium() as browser, serving(runtime) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.get_by_role("tab", name="Traces").click()
        page.fill("#trace-run-id textarea", run_a)
        page.click("#trace-open")
        page.locator("#trace-summary").get_by_text("Graph path").wait_for()
        yield page


def test_timeline_shows_five_calls_with_the_specialists_in_one_batch(page, runs):
    page.locator("#trace-timeline .js-plotly-plot").wait_for()
    traces = page.evaluate(
        "() => document.querySelector('#trace-timeline .js-plotly-plot').data.map("
        "t => ({name: t.name, y: t.y, x: t.x, base: t.base, hover: t.hovertext}))"
    )
    model = [t for t in traces if t["name"] != "wait"]
    assert sum(len(t["y"]) for t in model) == 5  # triage, three specialists, attending
    (batch,) = [t for t in model if "calls in one generate" in t["name"]]
    assert len(batch["y"]) == 3 and all("specialist" in y for y in batch["y"])
    spans = [(base, base + x) for base, x in zip(batch["base"], batch["x"], strict=True)]
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the three overlap in time
    # hovering a bar tells its tokens in/out, as stored
    runtime, run_a, _ = runs
    stored = {f"{st.seq}. " + st.node + (f" · {st.specialty}" if st.specialty else ""): st
              for st in runtime.store.get_run(run_a).steps}  # fmt: skip
    for t in model:
        for label, hover in zip(t["y"], t["hover"], strict=True):
            st = stored[label]
            assert f"tokens in {st.prompt_tokens} · out {st.completion_tokens}" in hover
    # drawn: five coloured model bars (plus the grey waits) and the batch named in the legend
    assert page.locator("#trace-timeline .barlayer .trace").count() == len(traces)
    assert "3 calls in one generate" in page.locator("#trace-timeline .legend").text_content()
    page.locator("#trace-timeline").screenshot(path=str(ARTIFACTS / "traces-timeline.png"))


def test_graph_picture_shows_the_path_taken(page, runs):
    runtime, run_a, _ = runs
    graph = page.locator("#trace-graph svg")
    graph.wait_for()
    consulted = runtime.store.get_run(run_a).specialties
    for i, specialty in enumerate(consulted):
        assert specialty in page.locator(f"#graph-specialist-{i}").text_content()
    for node in ("triage", "attending", "start", "end"):
        assert page.locator(f"#graph-{node}").count() == 1
    assert page.locator("#trace-graph g.node").count() == 4 + len(consulted)
    graph.screenshot(path=str(ARTIFACTS / "traces-graph.png"))


def test_comparing_two_runs_marks_the_changed_answer(page, runs):
    _, run_a, run_b = runs
    page.locator("#trace-compare").get_by_text("Compare with another run").click()
    assert page.locator("#compare-a textarea").input_value() == run_a
    page.fill("#compare-b textarea", run_b)
    page.click("#compare-go")
    answer = page.locator('#run-diff tr[data-field="answer"]')
    answer.wait_for()
    assert answer.get_attribute("class") == "changed" and "B" in answer.inner_text()
    assert page.locator('#run-diff tr[data-field="question"]').get_attribute("class") == "same"
    page.locator("#trace-compare").screenshot(path=str(ARTIFACTS / "traces-diff.png"))

"""What is shown is what was asked, in a real headless Chromium (issue 32).

Hostile text in a question, its options, a clinician's right answer and the models' output (which
may echo them) is shown literally in Chat, Traces and Compare, and inserts no element; the run
JSON downloads it verbatim. Also the chat's small behaviours: the status line while the first
question runs or waits, a refused right answer's warning cleared by the next question, raw output
that wraps, and a huge question refused before it is echoed. The models are scripted (the real
graph, store and app around them) so that their output can be hostile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.config import UISettings
from app.feedback import record_verdict
from app.runtime import Runtime
from data.synthetic import make_case
from tests.scripted import ScriptedBackend, request_text
from tests.test_ui_browser import STEP_TIMEOUT_MS, _GatedBackend, attach, open_tab, send, short_runtime
from tests.ui_server import ARTIFACTS, chromium, serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BOLD, IMG, SCRIPT = "<b>bold</b>", "<img src=x onerror=alert(1)>", "<script>alert(1)</script>"
HOSTILE = f"{BOLD} {IMG} {SCRIPT}"
QUESTION = f"Is it {HOSTILE} **not bold** | a $$x^2$$?"
OPTIONS = [f"A) {HOSTILE}", "B) Normal"]
FOLLOW_UP = "And the follow-up?"  # the attending garbles its answer to it (see :func:`asked`)
GARBLED = "no tags at all " + "x" * 400 + f" {HOSTILE}"  # nothing can be parsed from it
# Elements that hostile text would insert if it were rendered (the page has no others of these).
INSERTED = "b, img[src='x'], img[onerror], script:not([src]), .katex"


class Script:
    """What the models say: each role echoes the hostile text; the attending may garble its output."""

    garbled = False

    def __call__(self, req) -> str:
        text = request_text(req)
        if "You are the triage doctor" in text:
            return f"<think>{HOSTILE}</think><answer>Radiologist, Pathologist, Surgeon</answer>"
        if "You are the attending physician" in text:
            return GARBLED if self.garbled else f"<think>{HOSTILE}</think><answer>A) {HOSTILE}</answer>"
        return f"<think>{HOSTILE}</think><answer>{HOSTILE}</answer>"


@dataclass
class Clinic:
    runtime: Runtime
    url: str
    script: Script
    gated: _GatedBackend
    image: Path


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui-shown-as-asked")
    script = Script()
    gated = _GatedBackend(ScriptedBackend(script))
    runtime = short_runtime(home / "home", gated, ui=UISettings(concurrency=1))
    image = home / "chest.png"
    image.write_bytes(make_case(0).images[0])
    try:
        with serving(runtime) as url:
            yield Clinic(runtime, url, script, gated, image)
    finally:
        gated.gate.set()
        runtime.close()


@pytest.fixture(scope="module")
def browser(clinic):
    with chromium() as browser:
        yield browser


def new_page(browser, clinic: Clinic, dialogs: list[str]):
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(clinic.url)
    page.wait_for_selector("#case-input textarea")
    return page


@pytest.fixture(scope="module")
def dialogs() -> list[str]:
    """Every alert() any page of this module opened: hostile text that ran would land here."""
    return []


@pytest.fixture(scope="module")
def page(browser, clinic, dialogs):
    page = new_page(browser, clinic, dialogs)
    yield page
    page.close()


@pytest.fixture(scope="module")
def asked(page, clinic):
    """The hostile question, then a follow-up the attending garbles, asked through the browser.

    Returns the question's run id; the follow-up is the store's run whose question is FOLLOW_UP.
    """
    send(page, QUESTION, [clinic.image], OPTIONS)
    page.locator("#verdict-1").wait_for()
    (run,) = [r for r in clinic.runtime.store.list_runs() if r.question == QUESTION]
    clinic.script.garbled = True
    try:
        send(page, FOLLOW_UP, [])
        page.locator("#verdict-2").wait_for()
    finally:
        clinic.script.garbled = False
    return run.id


def next_verdict(page):
    """The verdict row the next answered question of the page's case will add."""
    return page.locator(f"#verdict-{page.locator('.verdict-row').count() + 1}")


def shows_literally(locator, *texts: str) -> None:
    """Each text is visible as typed, and no element that rendering it would insert is there."""
    for text in texts:
        expect(locator.first).to_contain_text(text)
    assert locator.locator(INSERTED).count() == 0, locator.inner_html()[:2000]


def test_the_status_line_says_the_first_question_runs_then_waits(browser, clinic, dialogs):
    """One case slot: the first question holds it (the line says it runs), a second user's waits."""
    first, second = new_page(browser, clinic, dialogs), new_page(browser, clinic, dialogs)
    clinic.gated.entered.clear()
    clinic.gated.gate.clear()
    try:
        send(first, "First question?", [clinic.image])
        assert clinic.gated.entered.wait(timeout=STEP_TIMEOUT_MS / 1000)
        expect(first.locator("#case-status")).to_contain_text("Case running: your question is being answered")
        send(second, "Second question?", [clinic.image])
        second.locator("#case-chat").get_by_text("next in line").wait_for()
        expect(second.locator("#case-status")).to_contain_text("Case queued")
        expect(second.locator("#case-status")).to_contain_text("number 1 in line")
        assert "New case" not in first.locator("#case-status").inner_text()
    finally:
        clinic.gated.gate.set()
    for p in (first, second):
        p.locator("#verdict-1").wait_for()
        expect(p.locator("#case-status")).to_contain_text("follow-up questions continue this case")
        p.close()


def test_chat_shows_the_question_options_and_model_output_as_text(page, asked, dialogs):
    open_tab(page, "Chat")
    chat = page.locator("#case-chat")
    bubble = chat.locator(".message.user, [data-testid=user]").first
    shows_literally(bubble, QUESTION, *OPTIONS)
    for step in ("Triage →", "Specialist · ", "Attending physician · reasoning"):
        chat.get_by_text(step).first.click()  # open the steps: their reasoning echoes the question
    shows_literally(chat, f"Why: {HOSTILE}", f"Opinion: {HOSTILE}", f"Answer: A) {HOSTILE}")
    shows_literally(page.locator("#verdict-1"), f"Answer 1: A) {HOSTILE}")
    assert page.evaluate("document.querySelectorAll(\"img[src='x'], img[onerror]\").length") == 0
    assert dialogs == []
    page.screenshot(path=str(ARTIFACTS / "chat-hostile.png"), full_page=True)


def test_a_refused_right_answer_warning_clears_with_the_next_question(page, asked):
    open_tab(page, "Chat")
    row = page.locator("#verdict-1")
    refused = f"Z) {BOLD} {IMG}"  # names no option: the whole of option A is not in it
    row.locator(".verdict-answer textarea").fill(refused)
    row.locator(".verdict-wrong").click()
    note = page.locator("#fb-status")
    expect(note).to_contain_text("names none of the run's options")
    shows_literally(note, refused, *OPTIONS)
    row.locator(".verdict-answer textarea").fill(OPTIONS[0])  # a right answer that is hostile text
    row.locator(".verdict-wrong").click()
    expect(note).to_contain_text("Recorded wrong")
    shows_literally(note, f"right answer: {OPTIONS[0]}")
    shows_literally(page.locator("#verdict-1"), f"right answer: {OPTIONS[0]}")
    row.locator(".verdict-answer textarea").fill("Z) nonsense")
    row.locator(".verdict-wrong").click()
    expect(note).to_contain_text("names none of the run's options")
    answered = next_verdict(page)
    send(page, "And the next question?", [])
    answered.wait_for()
    expect(note).to_have_text("")


def test_raw_output_wraps_and_is_shown_as_text(page, asked):
    open_tab(page, "Chat")
    # The follow-up's (the case's second question) attending step: only garbled output is shown raw.
    page.locator("#case-chat").get_by_text("Attending physician · reasoning").nth(1).click()
    raw = page.locator("#case-chat pre").last
    expect(raw).to_contain_text("x" * 400)
    shows_literally(raw, HOSTILE)
    width = raw.evaluate("(el) => [el.scrollWidth, el.clientWidth]")
    assert width[0] <= width[1] + 1, f"the raw output block scrolls sideways: {width}"


def test_a_huge_question_is_refused_before_it_is_shown_and_kept_in_the_box(page, asked, clinic):
    open_tab(page, "Chat")
    runs = len(clinic.runtime.store.list_runs())
    huge = "y" * 200_000
    chat = page.locator("#case-chat")
    attach(page, [clinic.image])
    page.fill("#case-options textarea", "A) yes\nB) no")
    page.fill("#case-input textarea", huge)
    page.press("#case-input textarea", "Enter")
    expect(chat).to_contain_text("The question is 200,000 characters long; the limit is 8,000")
    assert "y" * 1000 not in chat.inner_text()  # not echoed, not even in part
    assert len(clinic.runtime.store.list_runs()) == runs
    # What was typed and attached is back in the input, to shorten and send.
    expect(page.locator("#case-input textarea")).to_have_value(huge)
    expect(page.locator("#case-options textarea")).to_have_value("A) yes\nB) no")
    expect(page.locator("#case-input .thumbnail-item")).to_have_count(1)
    answered = next_verdict(page)
    page.fill("#case-input textarea", "Shorter now?")
    page.press("#case-input textarea", "Enter")
    answered.wait_for()
    assert len(clinic.runtime.store.list_runs()) == runs + 1


def test_traces_show_the_run_as_text_and_download_it_verbatim(page, asked, clinic, tmp_path, dialogs):
    record_verdict(clinic.runtime.store, asked, correct=False, answer=OPTIONS[0])  # a hostile right answer
    open_tab(page, "Traces")
    page.fill("#trace-run-id textarea", asked)
    page.click("#trace-open")
    summary = page.locator("#trace-summary")
    summary.get_by_text("Graph path").wait_for()
    shows_literally(summary, f"Question: {QUESTION}", f"Answer: A) {HOSTILE}", OPTIONS[0])
    shows_literally(summary.locator("tr", has_text="clinician"), OPTIONS[0])  # the right answer given
    page.click("#traces-search")
    table = page.locator("#runs-table")
    expect(table).to_contain_text(QUESTION[:40])
    shows_literally(table, QUESTION[:40])
    page.get_by_text("Run as JSON").click()
    with page.expect_download() as download:
        page.click("#trace-download")
    saved = tmp_path / "run.json"
    download.value.save_as(saved)
    run = json.loads(saved.read_text())
    assert (run["question"], run["options"], run["answer"]) == (QUESTION, OPTIONS, f"A) {HOSTILE}")
    assert dialogs == []
    page.screenshot(path=str(ARTIFACTS / "traces-hostile.png"), full_page=True)


def test_compare_shows_the_case_id_and_the_question_as_text(page, asked, clinic, dialogs):
    follow_up = next(r for r in clinic.runtime.store.list_runs() if r.question == FOLLOW_UP)
    open_tab(page, "Traces")
    page.locator("#trace-compare").get_by_text("Compare with another run").click()
    page.fill("#compare-a textarea", asked)
    page.fill("#compare-b textarea", follow_up.id)
    page.click("#compare-go")
    case = page.locator('#run-diff tr[data-field="case"]')
    case.wait_for()
    assert case.get_attribute("class") == "same"  # two questions of one case
    assert case.inner_text().count(asked) == 2 and "—" not in case.inner_text()
    question = page.locator('#run-diff tr[data-field="question"]')
    shows_literally(question, QUESTION)
    shows_literally(page.locator("#run-diff"), HOSTILE)
    page.fill("#compare-b textarea", HOSTILE)  # a run id nobody has: the error toast quotes it
    page.click("#compare-go")
    shows_literally(page.locator("[data-testid=toast-body]"), f"no run '{HOSTILE}'")
    assert dialogs == []

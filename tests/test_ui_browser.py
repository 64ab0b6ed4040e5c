"""The app in a real headless Chromium (Debian's, driven by playwright), on the real tiny model.

A clinician asks about a synthetic image, gives and changes a verdict, reloads the page and finds
the case again; a follow-up locks the verdict buttons; a developer opens the run in Traces (and
its case back in the chat) and mistypes a date; a trainer exports the latest verdict from
Trajectories; a bad file is refused; a DICOM named ``IM0001`` is answered and leaves no copy of
its header anywhere. Screenshots of each tab, wide and at 400 px, go to artifacts/ui/
(gitignored) for a human to look at.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from gradio.utils import get_upload_folder
from playwright.sync_api import expect

from app.config import RoleSpec, Settings, UISettings
from app.runtime import Runtime
from data.schema import ROLES
from data.synthetic import make_case
from tests.test_images import dicom_bytes
from tests.ui_server import ARTIFACTS, chromium, serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP_TIMEOUT_MS = 60_000


class _GatedBackend:
    """The tiny backend behind a gate: a test that closes it holds the next call until it opens it again."""

    def __init__(self, backend, *, open_: bool = True):
        self._backend, self.entered, self.gate = backend, threading.Event(), threading.Event()
        if open_:
            self.gate.set()

    @property
    def model_id(self) -> str:
        return self._backend.model_id

    def generate(self, requests):
        self.entered.set()
        self.gate.wait(timeout=STEP_TIMEOUT_MS / 1000)
        return self._backend.generate(requests)


def short_runtime(home: Path, backend, *, model: str = "tiny", **settings) -> Runtime:
    """A runtime whose every role is ``backend``, with short completions (24 / 24 / 32 tokens)."""
    settings = Settings(
        home=home,
        model=model,
        triage=RoleSpec(max_new_tokens=24),
        specialist=RoleSpec(max_new_tokens=24),
        attending=RoleSpec(max_new_tokens=32),
        **settings,
    )
    return Runtime(settings, backends=dict.fromkeys(ROLES, backend))


@pytest.fixture(scope="module")
def app_runtime(tmp_path_factory, tiny_model_dir, tiny_backend):
    home = tmp_path_factory.mktemp("ui-browser") / "home"
    runtime = short_runtime(home, _GatedBackend(tiny_backend), model=str(tiny_model_dir))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def app_url(app_runtime):
    with serving(app_runtime) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    with chromium() as browser:
        context = browser.new_context(
            viewport={"width": 1280, "height": 1000},
            accept_downloads=True,
            permissions=["clipboard-read", "clipboard-write"],
        )
        page = context.new_page()
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(app_url)
        page.wait_for_selector("#case-input textarea")
        yield page


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def attach(page, files: list[Path]) -> None:
    """Attach files as a user does: the upload button, then the file chooser it opens."""
    with page.expect_file_chooser() as chooser:
        page.click("#case-input button[data-testid=upload-button]")
    chooser.value.set_files([str(f) for f in files])
    page.locator("#case-input .thumbnail-item").nth(len(files) - 1).wait_for()


def send(page, question: str, files: list[Path], options: list[str] = ()) -> None:
    if files:
        attach(page, files)
    page.fill("#case-options textarea", "\n".join(options))
    page.fill("#case-input textarea", question)
    page.press("#case-input textarea", "Enter")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


@pytest.fixture(scope="module")
def asked(page, app_runtime, tmp_path_factory):
    """A clinician's case, asked through the browser: (case, run id)."""
    case = make_case(0)
    image = tmp_path_factory.mktemp("upload") / "chest.png"
    image.write_bytes(case.images[0])
    send(page, case.question, [image], list(case.options))
    chat = page.locator("#case-chat")
    chat.get_by_text("Answer:").wait_for()
    (run,) = app_runtime.store.list_runs()
    return case, run.id


def clinician_rows(store, run_id: str) -> list[tuple[float, str | None]]:
    return [(r.value, r.answer) for r in store.rewards(run_id) if r.source == "clinician"]


def test_chat_shows_each_agent_step_and_the_answer(page, asked, app_runtime):
    case, run_id = asked
    chat = page.locator("#case-chat")
    # Each step is a collapsible message titled by its agent.
    assert chat.get_by_text("Triage →").count() == 1
    assert chat.get_by_text("Specialist · ").count() == 3
    assert chat.get_by_text("Attending physician · reasoning").count() == 1
    assert chat.get_by_text(case.question).count() == 1
    expect(page.locator("#case-status")).to_contain_text(run_id)  # set when the run has ended
    # The options travel with the question in its bubble; the box is empty for the next question.
    bubble = chat.locator(".message.user, [data-testid=user]").first.inner_text()
    assert case.question in bubble and all(o in bubble for o in case.options)
    assert page.locator("#case-options textarea").input_value() == ""
    # The answer names the attending's model and policy version: the untrained checkpoint is "base"
    # (trained versions: tests/test_ui_sample_case.py), never its database id as a version number.
    attending = next(st for st in app_runtime.store.get_run(run_id).steps if st.role == "attending")
    credit = chat.get_by_text("attending: ").inner_text()
    assert app_runtime.store.get_policy(attending.policy_version_id).training_run == {}
    assert "policy base (untrained)" in credit and Path(attending.model_id).name in credit
    assert "policy v" not in credit
    # A specialist step opens to show its opinion.
    chat.get_by_text("Specialist · ").first.click()
    chat.get_by_text("Opinion:").first.wait_for()
    # No server path is rendered in the chat (uploads are referenced by Gradio URLs only).
    assert "/tmp/" not in chat.inner_text()
    assert "Research software" in page.locator("#disclaimer").inner_text()
    page.wait_for_timeout(500)  # let the opening step finish its slide-in before the screenshot
    shot(page, "chat")


def test_copy_button_copies_the_answer_alone(page, asked, app_runtime):
    _, run_id = asked
    page.evaluate("navigator.clipboard.writeText('not copied yet')")
    page.click("#verdict-1 .copy-answer")
    page.wait_for_function(
        "navigator.clipboard.readText().then((t) => t !== 'not copied yet')", timeout=10_000
    )
    assert page.evaluate("navigator.clipboard.readText()") == (app_runtime.store.get_run(run_id).answer or "")


def test_verdicts_correct_stores_no_correction_and_the_latest_counts(page, asked, app_runtime):
    case, run_id = asked
    store = app_runtime.store
    row = page.locator("#verdict-1")
    row.locator(".verdict-answer textarea").fill(case.answer)
    row.locator(".verdict-wrong").click()
    page.locator("#fb-status").get_by_text("Recorded wrong").wait_for()
    assert clinician_rows(store, run_id) == [(0.0, case.answer)]
    expect(page.locator("#verdict-1")).to_contain_text("marked wrong")
    # Text left in the right-answer box is not a correction when the answer is marked correct.
    page.locator("#verdict-1 .verdict-answer textarea").fill("B")
    page.locator("#verdict-1 .verdict-correct").click()
    page.locator("#fb-status").get_by_text("Recorded correct").wait_for()
    assert clinician_rows(store, run_id) == [(0.0, case.answer), (1.0, None)]  # history kept
    latest = store.latest_verdicts([run_id])[run_id]
    assert (latest.value, latest.answer) == (1.0, None)
    expect(page.locator("#verdict-1")).to_contain_text("marked correct")


def test_a_reload_reopens_the_case_with_its_verdict(page, asked):
    case, run_id = asked
    assert f"case={run_id}" in page.url  # the first run's id names the case (its thread)
    page.reload()
    page.locator("#verdict-1").wait_for()
    chat = page.locator("#case-chat")
    chat.get_by_text(case.question).wait_for()
    assert chat.get_by_text("Answer:").count() == 1 and run_id in chat.inner_text()
    assert chat.locator("img").count() >= 1  # the case's image, from the store
    expect(page.locator("#verdict-1")).to_contain_text("marked correct")
    expect(page.locator("#case-status")).to_contain_text(run_id)  # set when the run has ended
    # This browser remembers the case in its recent cases.
    expect(page.locator("#recent-cases")).to_be_visible()


def test_recent_cases_reopen_a_case_after_new_case(page, asked):
    case, run_id = asked
    page.click("#new-case")
    page.locator("#case-status").get_by_text("New case").wait_for()
    page.wait_for_function("() => !window.location.search.includes('case=')")
    page.click("#recent-cases input")
    page.locator("#recent-cases li", has_text=case.question[:40]).first.click()
    expect(page.locator("#case-status")).to_contain_text(run_id)
    expect(page.locator("#verdict-1")).to_contain_text("marked correct")
    page.wait_for_function("(id) => window.location.search.includes('case=' + id)", arg=run_id)


def test_traces_tab_opens_the_run_with_every_step(page, asked, app_runtime):
    case, run_id = asked
    page.click("#open-trace")
    summary = page.locator("#trace-summary")
    summary.get_by_text("Graph path").wait_for()
    text = summary.inner_text()
    assert run_id in text and case.question in text
    assert "triage → specialists (" in text and "→ attending" in text
    assert "clinician" in text  # the verdicts just given, in the rewards table
    steps = page.locator(".trace-step")
    steps.nth(4).wait_for()
    assert steps.count() == 5
    steps.first.click()  # triage: its exact prompt, raw completion and parsed result
    first = steps.first
    first.get_by_text("Exact prompt").wait_for()
    stored = app_runtime.store.get_run(run_id).steps[0]
    assert first.locator("textarea").input_value() == stored.completion
    assert "You are the triage doctor" in first.inner_text()  # the system prompt, verbatim
    assert "Dermatologist" in first.inner_text() or "consulted" in first.inner_text()
    shot(page, "traces")
    # The run list shows the question, and filters by date: today's runs include it, tomorrow's do not.
    today = datetime.now(UTC).date()
    row = page.locator("#runs-table [data-testid^='cell-']", has_text=run_id)
    expect(row).to_have_count(1)
    expect(page.locator("#runs-table")).to_contain_text(case.question[:40])
    page.fill("#traces-from textarea", (today + timedelta(days=1)).isoformat())
    page.click("#traces-search")
    expect(row).to_have_count(0)
    page.fill("#traces-from textarea", today.isoformat())
    page.click("#traces-search")
    expect(row).to_have_count(1)


def test_a_bad_date_in_traces_gets_an_inline_message_and_keeps_the_table(page, asked):
    _, run_id = asked
    page.fill("#traces-from textarea", "24/11/2026")
    page.click("#traces-search")
    message = page.locator("#traces-error")
    expect(message).to_contain_text("not a date")
    assert "24/11/2026" in message.inner_text() and "2026-11-24" in message.inner_text()
    expect(page.locator("#runs-table [data-testid^='cell-']", has_text=run_id)).to_have_count(1)
    assert page.get_by_text("Error", exact=True).count() == 0  # no error toast
    page.fill("#traces-from textarea", "")
    page.click("#traces-search")
    expect(message).to_have_text("")


def test_traces_opens_a_runs_case_in_the_chat(page, asked):
    case, run_id = asked
    page.fill("#trace-run-id textarea", run_id)
    page.click("#trace-open-case")
    expect(page.locator("#case-status")).to_contain_text(run_id)
    expect(page.locator("#case-chat")).to_contain_text(case.question)
    page.locator("#verdict-1").wait_for()


def test_trajectories_tab_counts_and_exports_the_latest_verdict(page, asked, tmp_path):
    import pandas as pd

    open_tab(page, "Trajectories")
    page.locator("#traj-summary").get_by_text("stored steps").wait_for()
    assert "**5**" not in page.locator("#traj-summary").inner_text()  # markdown rendered, not raw
    assert page.locator("#traj-summary strong").first.inner_text() == "5"  # triage + 3 + attending
    counts = page.locator("#traj-counts").inner_text()
    assert "attending" in counts and "specialist" in counts and "triage" in counts
    page.locator("#traj-rewards canvas, #traj-rewards svg").first.wait_for()
    # A mistyped Since is explained on the page, in its words (not the CLI's flag).
    page.fill("#export-since textarea", "xyz")
    page.click("#export-run")
    note = page.locator("#export-status")
    expect(note).to_contain_text("neither a date")
    assert "--since" not in note.inner_text()
    page.fill("#export-since textarea", "")
    page.click("#export-run")
    page.locator("#export-status").get_by_text("Exported").wait_for()
    with page.expect_download() as download:
        page.locator("#export-file a").first.click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".parquet"
    frame = pd.read_parquet(saved)
    _, run_id = asked
    assert frame["run_id"].tolist() == [run_id] and frame["role"].tolist() == ["attending"]
    # Wrong (with a right answer), then Correct: the export carries the latest verdict only.
    assert frame["reward_clinician"].tolist() == [1.0]
    assert frame["clinician_answer"].isna().tolist() == [True]
    shot(page, "trajectories")


def test_verdict_buttons_are_locked_while_a_follow_up_runs(page, asked, app_runtime):
    _, run_id = asked
    open_tab(page, "Chat")
    before = clinician_rows(app_runtime.store, run_id)
    gated = app_runtime.backends["attending"]
    gated.gate.clear()  # the follow-up is held in its first model call until the clicks are done
    try:
        send(page, "Is it benign?", [])
        wrong = page.locator("#verdict-1 .verdict-wrong")
        expect(wrong).to_be_disabled()
        expect(page.locator("#verdict-1 .verdict-correct")).to_be_disabled()
        wrong.click(force=True)  # a click on the locked button records nothing
    finally:
        gated.gate.set()
    page.locator("#verdict-2").wait_for()
    expect(wrong).to_be_enabled()
    assert clinician_rows(app_runtime.store, run_id) == before
    (follow,) = [r for r in app_runtime.store.list_runs() if r.id != run_id]
    assert clinician_rows(app_runtime.store, follow.id) == []


def test_bad_file_shows_an_error_in_the_chat_and_writes_no_run(page, app_url, asked, app_runtime, tmp_path):
    open_tab(page, "Chat")
    page.click("#new-case")
    page.locator("#case-status").get_by_text("New case").wait_for()
    fake = tmp_path / "scan.png"
    fake.write_text(json.dumps({"note": "a text file renamed .png"}))
    before = len(app_runtime.store.list_runs())
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url) as uploaded:
        send(page, "What is the finding?", [fake])
    message = page.locator("#case-chat").get_by_text("Could not read an image")
    message.wait_for()
    assert "scan.png" in message.inner_text() and "not a recognised image" in message.inner_text()
    assert len(app_runtime.store.list_runs()) == before
    # A refused file leaves the upload cache too.
    (cache_path,) = uploaded.value.json()
    assert not Path(cache_path).exists()
    assert httpx.get(f"{app_url}/gradio_api/file={cache_path}").status_code == 404
    shot(page, "chat-bad-file")


# The viewer's picture once loaded: its fitted zoom and that zoom x 1.25, in percent as the label rounds.
FITTED_ZOOM_JS = """async () => {
  const img = document.querySelector("#viewer img.viewer-image");
  if (!img.complete) await new Promise((done) => img.addEventListener("load", done, { once: true }));
  const fitted = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  return [Math.round(fitted * 100), Math.round(fitted * 125)];
}"""


def _files_containing(folder: Path, needles: list[bytes]) -> list[Path]:
    found = []
    for path in folder.rglob("*"):
        try:
            if path.is_file() and path.stat().st_size < 256 * 1024 * 1024:
                data = path.read_bytes()
                if any(n in data for n in needles):
                    found.append(path)
        except OSError:  # a file another process removed meanwhile
            continue
    return found


def test_dicom_named_im0001_is_answered_and_leaves_no_header_anywhere(page, app_url, app_runtime, tmp_path):
    """After an error and New case, a DICOM without extension (as PACS exports name them) is
    answered; its header (patient name and ID) is then in no file of Gradio's upload folder, the
    app's home (database included) or the chat's previews, and its upload URL answers 404."""
    page.click("#new-case")
    page.locator("#case-status").get_by_text("New case").wait_for()
    patient = f"Roe^Ridley{uuid.uuid4().hex[:10]}"
    mrn = f"MRN-{uuid.uuid4().hex[:12]}"
    raw = dicom_bytes(np.tile(np.linspace(0, 2000, 64), (64, 1)), window=(1000, 2000), intercept=-1024)
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.PatientName, ds.PatientID = patient, mrn
    scan = tmp_path / "IM0001"
    ds.save_as(scan, enforce_file_format=True)
    needles = [patient.encode(), mrn.encode()]
    assert all(n in scan.read_bytes() for n in needles)
    before = {r.id for r in app_runtime.store.list_runs()}
    # Attached, then New case instead of sending: the upload leaves the cache at once.
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url) as unsent:
        attach(page, [scan])
    page.click("#new-case")
    expect(page.locator("#case-input .thumbnail-item")).to_have_count(0)
    page.wait_for_function(
        "(p) => fetch('/gradio_api/file=' + p).then((r) => r.status === 404)", arg=unsent.value.json()[0]
    )
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url) as uploaded:
        attach(page, [scan])
    (cache_path,) = uploaded.value.json()
    send(page, "Any fracture?", [])
    page.locator("#verdict-1").wait_for()
    (run,) = [r for r in app_runtime.store.list_runs() if r.id not in before]
    assert run.status == "ok"
    chat = page.locator("#case-chat").inner_text()
    assert "Answer:" in chat and "IM0001" not in page.locator("#case-status").inner_text()
    # Nothing of the upload is left: not the file, not its header bytes anywhere.
    assert not Path(cache_path).exists()
    assert httpx.get(f"{app_url}/gradio_api/file={cache_path}").status_code == 404
    previews = list(Path(tempfile.gettempdir()).glob("mmedagent-ui-*"))
    for folder in [Path(get_upload_folder()), app_runtime.settings.home, *previews]:
        assert _files_containing(folder, needles) == [], folder
    database = app_runtime.settings.database_url.removeprefix("sqlite:///")
    assert not any(n in Path(database).read_bytes() for n in needles)
    # The viewer shows it with window/level presets (view only) and zooms; the label is the real
    # zoom (the 64-pixel image fitted to the stage is well over 100%), and a preset keeps it.
    preset = page.locator("#viewer-preset")
    expect(preset).to_be_visible()
    zoom = page.locator("#viewer .viewer-zoom")
    fitted, zoomed = page.evaluate(FITTED_ZOOM_JS)
    assert fitted > 200, fitted
    expect(zoom).to_have_text(f"{fitted}%")
    page.click("#viewer button[data-zoom=in]")
    expect(zoom).to_have_text(f"{zoomed}%")
    preset.get_by_text("lung").click()
    expect(page.locator("#viewer")).to_contain_text("lung (L -600, W 1500)")
    expect(zoom).to_have_text(f"{zoomed}%")
    expect(page.locator("#viewer img.viewer-image")).to_have_attribute("style", re.compile(r"scale\(1\.25\)"))
    shot(page, "chat-dicom")


@pytest.mark.parametrize("tab", ["Chat", "Traces", "Trajectories"])
def test_each_tab_at_400_px_wide(page, asked, tab):
    """Controls stack at phone width: nothing runs off the right edge of the page."""
    page.set_viewport_size({"width": 400, "height": 900})
    try:
        open_tab(page, tab)
        page.wait_for_timeout(800)
        width = page.evaluate("document.documentElement.scrollWidth")
        shot(page, f"{tab.lower()}-400px")
        assert width <= 400, f"{tab} is {width} px wide at a 400 px viewport"
    finally:
        page.set_viewport_size({"width": 1280, "height": 1000})


def test_a_waiting_user_sees_their_question_image_and_place(page, tiny_backend, tmp_path):
    """Two clinicians, one case slot: the second sees their own question, image and place in line."""
    gated = _GatedBackend(tiny_backend, open_=False)
    runtime = short_runtime(tmp_path / "home", gated, ui=UISettings(concurrency=1))
    images = []
    for i in (0, 3):
        images.append(tmp_path / f"case{i}.png")
        images[-1].write_bytes(make_case(i).images[0])
    try:
        with serving(runtime) as url:
            first, second = (page.context.browser.new_page() for _ in range(2))
            for p in (first, second):
                p.set_default_timeout(STEP_TIMEOUT_MS)
                p.goto(url)
                p.wait_for_selector("#case-input textarea")
            send(first, "First clinician's question?", [images[0]])
            assert gated.entered.wait(timeout=STEP_TIMEOUT_MS / 1000)  # the first case holds the slot
            send(second, "Second clinician's question?", [images[1]])
            chat = second.locator("#case-chat")
            chat.get_by_text("next in line").wait_for()
            assert "Second clinician's question?" in chat.inner_text()
            assert chat.locator("img").count() >= 1  # their image, while they wait
            shot(second, "chat-waiting")
            gated.gate.set()
            chat.get_by_text("Answer:").wait_for()
            assert chat.get_by_text("in line").count() == 0
            first.locator("#case-chat").get_by_text("Answer:").wait_for()
            for p in (first, second):
                p.close()
    finally:
        gated.gate.set()
        runtime.close()
    assert len(runtime.store.list_runs()) == 2


def test_a_verdict_click_still_in_flight_when_the_rows_re_render_is_recorded(page, tiny_backend, tmp_path):
    """✓ on answer 2, then ✓ on answer 1 at once: the second verdict re-renders the rows first.

    The network holds the first click until that re-render is on screen. Each render replaces the
    rows' handlers; the click must still reach its own (it was once lost, with nothing shown).
    """
    runtime = short_runtime(tmp_path / "home", tiny_backend)
    image = tmp_path / "case.png"
    image.write_bytes(make_case(1).images[0])
    held: list = []
    hold = False

    def hold_one(route) -> None:
        if hold and not held:
            held.append(route)
        else:
            route.continue_()

    try:
        with serving(runtime) as url:
            clinician = page.context.browser.new_page()
            clinician.set_default_timeout(STEP_TIMEOUT_MS)
            clinician.goto(url)
            clinician.wait_for_selector("#case-input textarea")
            for n in (1, 2):
                send(clinician, f"Question {n}?", [image] if n == 1 else [])
                expect(clinician.locator(f"#verdict-{n} .verdict-correct")).to_be_enabled()
            clinician.route("**/queue/join*", hold_one)
            hold = True
            clinician.locator("#verdict-2 .verdict-correct").click()
            for _ in range(200):  # the page's events (the route among them) run while it waits
                if held:
                    break
                clinician.wait_for_timeout(50)
            assert len(held) == 1
            clinician.locator("#verdict-1 .verdict-correct").click()
            expect(clinician.locator("#verdict-1")).to_contain_text("marked correct")  # re-rendered
            held[0].continue_()
            expect(clinician.locator("#verdict-2")).to_contain_text("marked correct")
            clinician.close()
        run_ids = [r.id for r in runtime.store.list_runs()]
        verdicts = runtime.store.latest_verdicts(run_ids)
        assert {run_id: verdicts[run_id].value for run_id in run_ids} == dict.fromkeys(run_ids, 1.0)
        assert len(run_ids) == 2
    finally:
        runtime.close()

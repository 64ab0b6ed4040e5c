"""The app in a real headless Chromium (Debian's, driven by playwright), on the real tiny model.

A clinician asks about a synthetic image and marks the answer wrong; a developer opens the run in
Traces; a trainer exports it from Trajectories; a bad file is refused in the chat. Screenshots
of each tab go to artifacts/ui/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from app.config import RoleSpec, Settings
from app.runtime import Runtime
from data.synthetic import make_case
from tests.ui_server import serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
STEP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app_runtime(tmp_path_factory, tiny_model_dir, tiny_backend):
    settings = Settings(
        home=tmp_path_factory.mktemp("ui-browser") / "home",
        model=str(tiny_model_dir),
        triage=RoleSpec(max_new_tokens=24),
        specialist=RoleSpec(max_new_tokens=24),
        attending=RoleSpec(max_new_tokens=32),
    )
    runtime = Runtime(settings, backends=dict.fromkeys(("triage", "specialist", "attending"), tiny_backend))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def app_url(app_runtime):
    with serving(app_runtime) as url:
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (scripts/system-deps.sh installs it as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(app_url)
        page.wait_for_selector("#case-input textarea")
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def send(page, question: str, files: list[Path], options: list[str] = ()) -> None:
    if files:
        page.set_input_files("#case-input input[type=file]", [str(f) for f in files])
        page.locator("#case-input .thumbnail-item").nth(len(files) - 1).wait_for()
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


def test_chat_shows_each_agent_step_and_the_answer(page, asked):
    case, run_id = asked
    chat = page.locator("#case-chat")
    # Each step is a collapsible message titled by its agent.
    assert chat.get_by_text("Triage →").count() == 1
    assert chat.get_by_text("Specialist · ").count() == 3
    assert chat.get_by_text("Attending physician · reasoning").count() == 1
    assert chat.get_by_text(case.question).count() == 1
    assert run_id in page.locator("#case-status").inner_text()
    # A specialist step opens to show its opinion.
    chat.get_by_text("Specialist · ").first.click()
    chat.get_by_text("Opinion:").first.wait_for()
    # No server path is rendered in the chat (uploads are referenced by Gradio URLs only).
    assert "/tmp/" not in chat.inner_text()
    assert "Research software" in page.locator("#disclaimer").inner_text()
    page.wait_for_timeout(500)  # let the opening step finish its slide-in before the screenshot
    shot(page, "chat")


def test_wrong_button_stores_a_clinician_reward_row(page, asked, app_runtime):
    case, run_id = asked
    page.fill("#fb-answer textarea", case.answer)
    page.click("#fb-wrong")
    page.locator("#fb-status").get_by_text("Recorded").wait_for()
    rows = [r for r in app_runtime.store.rewards(run_id) if r.source == "clinician"]
    assert [(r.value, r.answer) for r in rows] == [(0.0, case.answer)]
    assert page.locator("#fb-answer textarea").input_value() == ""


def test_traces_tab_opens_the_run_with_every_step(page, asked, app_runtime):
    case, run_id = asked
    page.click("#open-trace")
    summary = page.locator("#trace-summary")
    summary.get_by_text("Graph path").wait_for()
    text = summary.inner_text()
    assert run_id in text and case.question in text
    assert "triage → specialists (" in text and "→ attending" in text
    assert "clinician" in text  # the verdict just given, in the rewards table
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
    # The run list filters by date: today's runs include it, tomorrow's do not.
    today = datetime.now(UTC).date()
    row = page.locator("#runs-table [data-testid^='cell-']", has_text=run_id)
    expect(row).to_have_count(1)
    page.fill("#traces-from textarea", (today + timedelta(days=1)).isoformat())
    page.click("#traces-search")
    expect(row).to_have_count(0)
    page.fill("#traces-from textarea", today.isoformat())
    page.click("#traces-search")
    expect(row).to_have_count(1)


def test_trajectories_tab_counts_and_exports(page, asked, tmp_path):
    import pandas as pd

    open_tab(page, "Trajectories")
    page.locator("#traj-summary").get_by_text("stored steps").wait_for()
    assert "**5**" not in page.locator("#traj-summary").inner_text()  # markdown rendered, not raw
    assert page.locator("#traj-summary strong").first.inner_text() == "5"  # triage + 3 + attending
    counts = page.locator("#traj-counts").inner_text()
    assert "attending" in counts and "specialist" in counts and "triage" in counts
    page.locator("#traj-rewards canvas, #traj-rewards svg").first.wait_for()
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
    # The clinician's verdict from the chat tab travels with the exported row.
    assert frame["reward_clinician"].tolist() == [0.0]
    shot(page, "trajectories")


def test_bad_file_shows_an_error_in_the_chat_and_writes_no_run(page, asked, app_runtime, tmp_path):
    open_tab(page, "Chat")
    page.click("#new-case")
    page.locator("#case-status").get_by_text("New case").wait_for()
    fake = tmp_path / "scan.png"
    fake.write_text(json.dumps({"note": "a text file renamed .png"}))
    before = len(app_runtime.store.list_runs())
    send(page, "What is the finding?", [fake])
    message = page.locator("#case-chat").get_by_text("Could not read an image")
    message.wait_for()
    assert "scan.png" in message.inner_text() and "not a recognised image" in message.inner_text()
    assert len(app_runtime.store.list_runs()) == before
    shot(page, "chat-bad-file")

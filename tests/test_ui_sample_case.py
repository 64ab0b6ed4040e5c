""" "Try a sample case" (issue 31): a first visitor runs a synthetic-clinic case without an image of
their own, in the real Chromium on the real tiny model; the answer names the policy version that
served it: ``base`` on a fresh install, the trained version's ``vN`` once one serves.

Screenshots: artifacts/ui/sample-case-loaded.png and sample-case-answered.png (gitignored).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client

from app.policies import resolve_policy
from data.store import TrajectoryStore
from data.synthetic import make_case
from tests.test_ui_browser import STEP_TIMEOUT_MS, short_runtime, shot
from tests.test_ui_client import FAST, ask, run_id_of, texts
from tests.ui_server import chromium, serving
from ui.chat import SAMPLE_SEED
from ui.uploads import take_uploads


def staged(case_id: str) -> list[Path]:
    """The copies of a sample's image in Gradio's upload cache."""
    return list(Path(get_upload_folder()).rglob(f"{case_id}.png"))


@pytest.fixture
def page(tmp_path, tiny_model_dir, tiny_backend):
    """A fresh install's chat (untrained checkpoint) in Chromium, and its runtime."""
    runtime = short_runtime(tmp_path / "home", tiny_backend, model=str(tiny_model_dir))
    try:
        with serving(runtime) as url, chromium() as chrome:
            page = chrome.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url)
            page.wait_for_selector("#case-input textarea")
            yield page, runtime
    finally:
        runtime.close()


@pytest.mark.browser
@pytest.mark.slow
def test_sample_case_loads_asks_and_names_the_base_policy(page):
    page, runtime = page
    first, second = make_case(0, seed=SAMPLE_SEED), make_case(1, seed=SAMPLE_SEED)
    assert first.question != second.question or first.options != second.options

    page.click("#sample-case")
    page.locator("#case-input .thumbnail-item").first.wait_for()
    # Image, question and options are in the inputs, nothing is sent yet.
    assert page.locator("#case-input textarea").input_value() == first.question
    assert page.locator("#case-options textarea").input_value() == "\n".join(first.options)
    status = page.locator("#case-status").inner_text()
    assert "Sample case" in status and first.case_id in status and "synthetic" in status
    chat = page.locator("#case-chat")
    assert chat.get_by_text("Answer:").count() == 0 and chat.get_by_text("Right answer").count() == 0
    assert runtime.store.list_runs() == []
    assert len(staged(first.case_id)) == 1  # attached as an upload is: in the upload cache
    shot(page, "sample-case-loaded")

    page.press("#case-input textarea", "Enter")
    chat.get_by_text("Right answer:").wait_for()
    (run,) = runtime.store.list_runs()
    assert run.question == first.question and list(run.options) == list(first.options)
    assert run.source == "ui" and run.status == "ok"
    # Sent unchanged, it is asked with its gold answer: rewards, and the right answer after the answer.
    assert run.gold_answer == first.answer and run.gold_specialty == first.specialty
    assert run.case_id == first.case_id
    gold_option = next(o for o in first.options if o.startswith(f"{first.answer})"))
    assert f"Right answer: {gold_option} (" in chat.inner_text()
    # The answer names the untrained checkpoint as `policies list` has it: no id as a version number.
    credit = chat.get_by_text("attending: ").inner_text()
    assert "policy base (untrained)" in credit and "policy v" not in credit
    assert staged(first.case_id) == []  # read and deleted from the upload cache, like any upload
    page.wait_for_timeout(300)  # let the last message settle before the screenshot
    shot(page, "sample-case-answered")

    # A second click: a fresh case holding the next sample.
    page.click("#sample-case")
    expect_value = "\n".join(second.options)
    page.wait_for_function(
        "v => document.querySelector('#case-options textarea').value === v", arg=expect_value
    )
    assert page.locator("#case-input textarea").input_value() == second.question
    assert second.case_id in page.locator("#case-status").inner_text()
    assert chat.get_by_text("Answer:").count() == 0
    # New case drops the unsent sample's image from the upload cache.
    page.click("#new-case")
    page.locator("#case-input .thumbnail-item").wait_for(state="detached")
    page.wait_for_function("() => document.querySelector('#case-options textarea').value === ''")
    assert staged(second.case_id) == []
    assert len(runtime.store.list_runs()) == 1


def test_answer_names_the_trained_policy_versions(settings, make_runtime, tmp_path):
    """With trained versions serving the attending and the triage, the answer names both, and the
    stored steps ran on them; an edited sample is asked without its gold answer."""
    store = TrajectoryStore(settings.database_url)
    trained = {}
    for role in ("triage", "attending"):
        base = resolve_policy(store, role, settings.model, None)
        trained[role] = store.register_policy(
            role,
            settings.model,
            f"{role}-trained".ljust(64, "0"),
            parent_id=base.id,
            training_run={"trainer": "grpo", "steps": 2, "data": "db"},
        )
    store.close()
    roles = {r: FAST[r].model_copy(update={"policy": str(trained[r].id)}) for r in ("triage", "attending")}
    runtime = make_runtime(**{**FAST, **roles})
    assert runtime.policy_ids["attending"] == trained["attending"].id
    case = make_case(0, seed=SAMPLE_SEED)
    image = tmp_path / "sample.png"
    image.write_bytes(case.images[0])
    with serving(runtime) as url:
        client = Client(url, verbose=False)
        client.predict(None, api_name="/sample_case")
        chat, _, status, *_ = ask(client, case.question, [image], "\n".join(case.options)).result(timeout=120)
        client.predict(None, api_name="/sample_case")
        edited, _, status2, *_ = ask(client, "Edited: what is it?", [image], "\n".join(case.options)).result(
            timeout=120
        )
    credit = next(t for t in texts(chat) if "attending: " in t)
    assert f"policy v{trained['attending'].id}" in credit
    assert f"triage: policy v{trained['triage'].id}" in credit
    run = runtime.store.get_run(run_id_of(status))
    assert {st.role: st.policy_version_id for st in run.steps} == {
        "triage": trained["triage"].id,
        "specialist": runtime.policy_ids["specialist"],
        "attending": trained["attending"].id,
    }
    assert run.gold_answer == case.answer and any(t.startswith("**Right answer:**") for t in texts(chat))
    # The API's caller never sent the staged images back (it uploaded its own copy): drop them.
    take_uploads([str(p) for c in (case, make_case(1, seed=SAMPLE_SEED)) for p in staged(c.case_id)])
    # The second click loaded case 1; the question sent was not it: no gold, no right answer shown.
    other = runtime.store.get_run(run_id_of(status2))
    assert other.gold_answer is None and other.case_id is None
    assert not any(t.startswith("**Right answer:**") for t in texts(edited))

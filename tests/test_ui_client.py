"""The Gradio app over its HTTP API (gradio_client), on the real tiny model and a real SQLite store:
separate sessions, bad files, feedback rows, failed runs, login and upload caps."""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError
from PIL import Image

from app.config import RoleSpec, UISettings
from app.runtime import Runtime
from data.images import sha256_bytes
from data.synthetic import make_case
from tests.scripted import ScriptedBackend
from tests.test_images import dicom_bytes
from tests.trajectories import make_runs, scripted_panel
from tests.ui_server import free_port, serving

FAST = {
    "triage": RoleSpec(max_new_tokens=12),
    "specialist": RoleSpec(max_new_tokens=12),
    "attending": RoleSpec(max_new_tokens=16),
}
RUN_ID = re.compile(r"last run `([0-9a-f]{32})`")


def texts(chat: list[dict]) -> list[str]:
    """The text blocks of a chat transcript, one string per message."""
    return [" ".join(b.get("text", "") for b in m["content"] if b.get("type") == "text") for m in chat]


def titles(chat: list[dict]) -> list[str]:
    return [(m.get("metadata") or {}).get("title") or "" for m in chat]


def ask(client: Client, question: str, files: list[Path] = (), options: str = ""):
    return client.submit(
        {"text": question, "files": [handle_file(str(f)) for f in files]}, options, api_name="/ask"
    )


def run_id_of(status: str) -> str:
    m = RUN_ID.search(status)
    assert m, f"no run id in status line: {status!r}"
    return m.group(1)


@pytest.fixture
def runtime(make_runtime):
    return make_runtime(**FAST)


@pytest.mark.slow
def test_two_concurrent_clients_get_their_own_answers_runs_and_threads(runtime, tmp_path):
    cases = [make_case(0), make_case(3)]
    assert cases[0].specialty != cases[1].specialty
    paths = []
    for i, case in enumerate(cases):
        paths.append(tmp_path / f"case{i}.png")
        paths[-1].write_bytes(case.images[0])
    with serving(runtime) as url:
        clients = [Client(url, verbose=False), Client(url, verbose=False)]
        jobs = [
            ask(c, case.question, [p], "\n".join(case.options))
            for c, case, p in zip(clients, cases, paths, strict=True)
        ]
        first = [job.result(timeout=120) for job in jobs]
        streamed = [job.outputs() for job in jobs]
        # Follow-ups without images, sent at once: each must continue its own client's case.
        follow = [ask(c, f"Follow-up {i}: is it benign?") for i, c in enumerate(clients)]
        second = [job.result(timeout=120) for job in follow]

    store = runtime.store
    run_ids = [run_id_of(out[2]) for out in first]
    follow_ids = [run_id_of(out[2]) for out in second]
    assert len({*run_ids, *follow_ids}) == 4
    for i, case in enumerate(cases):
        chat = first[i][0]
        assert case.question in texts(chat)[0]
        assert sum(t.startswith("Specialist · ") for t in titles(chat)) == 3
        assert any(t.startswith("**Answer:**") for t in texts(chat))
        assert run_ids[i] in " ".join(texts(chat))
        run = store.get_run(run_ids[i])
        assert run.question == case.question and run.source == "ui" and run.status == "ok"
        assert [ri.sha256 for ri in run.images] == [sha256_bytes(case.images[0])]
        later = store.get_run(follow_ids[i])
        assert later.question == f"Follow-up {i}: is it benign?"
        assert later.thread_id == run.thread_id
        assert [ri.sha256 for ri in later.images] == [ri.sha256 for ri in run.images]
        # The follow-up's prompts carry the earlier question of the same case.
        assert case.question in str(later.steps[0].messages)
        # Steps streamed: an intermediate update showed a step still pending.
        pending = [
            m for out in streamed[i] for m in out[0] if (m.get("metadata") or {}).get("status") == "pending"
        ]
        assert pending
    thread_a, thread_b = (store.get_run(r).thread_id for r in run_ids)
    assert thread_a != thread_b


def test_bad_file_gets_a_chat_message_and_writes_no_run(runtime, tmp_path):
    fake = tmp_path / "xray.png"
    fake.write_text("patient notes, not an image")
    good = tmp_path / "ok.png"
    good.write_bytes(make_case(1).images[0])
    with serving(runtime) as url:
        client = Client(url, verbose=False)
        chat, _, status, *_ = ask(client, "What is the finding?", [fake]).result(timeout=60)
        # A bad file among good ones rejects the whole message: nothing half-run.
        chat2, *_ = ask(client, "What is the finding?", [good, fake]).result(timeout=60)
        chat3, *_ = ask(client, "And without any image?").result(timeout=60)
    last = texts(chat)[-1]
    assert "Could not read an image" in last and "xray.png" in last and "not a recognised image" in last
    assert "/tmp" not in last and str(tmp_path) not in " ".join(texts(chat2))
    assert "xray.png" in texts(chat2)[-1]
    assert "needs at least one image" in texts(chat3)[-1]
    assert "last run" not in status
    assert runtime.store.list_runs() == []


@pytest.mark.slow
def test_failed_model_call_is_reported_in_chat_and_stored(make_runtime, tiny_backend, tmp_path):
    broken = ScriptedBackend(lambda r: "", fail=True)
    runtime = make_runtime(
        backends={"triage": tiny_backend, "specialist": tiny_backend, "attending": broken}, **FAST
    )
    image = tmp_path / "case.png"
    image.write_bytes(make_case(0).images[0])
    with serving(runtime) as url:
        chat, _, _, *_ = ask(Client(url, verbose=False), "What is it?", [image]).result(timeout=120)
    (run,) = runtime.store.list_runs()
    assert run.status == "error" and "connection refused" in run.error
    assert [st.role for st in runtime.store.get_run(run.id).steps].count("specialist") == 3
    message = " ".join(texts(chat))
    assert "The run failed" in message and run.id in message
    # No step is left spinning after a failure.
    assert all((m.get("metadata") or {}).get("status") != "pending" for m in chat)


def test_dicom_upload_runs_a_case_without_storing_patient_data(runtime, tmp_path):
    pixels = np.tile(np.linspace(0, 4000, 56), (56, 1))
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(dicom_bytes(pixels, window=(2000, 4000)))
    with serving(runtime) as url:
        chat, _, status, *_ = ask(Client(url, verbose=False), "Any fracture?", [scan]).result(timeout=120)
    run = runtime.store.get_run(run_id_of(status))
    stored = runtime.store.image_bytes(run.images[0].sha256)
    assert Image.open(io.BytesIO(stored)).format == "PNG"
    assert b"Doe^Jane" not in stored and b"MRN-4815162342" not in stored
    assert any(t.startswith("**Answer:**") for t in texts(chat))


def test_upload_caps_refuse_big_files_and_huge_images(make_runtime, tmp_path):
    runtime = make_runtime(max_image_bytes=20_000, max_source_pixels=100 * 100, **FAST)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20_000
    wide = tmp_path / "wide.png"
    Image.new("RGB", (400, 300), (10, 10, 10)).save(wide)
    assert wide.stat().st_size < 20_000
    with serving(runtime) as url:
        client = Client(url, verbose=False)
        with pytest.raises(ValueError, match="exceeds the maximum file size of 20000 bytes"):
            ask(client, "What is it?", [big]).result(timeout=60)
        # The server refuses it too, not only the polite client.
        with big.open("rb") as f:
            raw = httpx.post(f"{url}/gradio_api/upload", files={"files": ("big.png", f, "image/png")})
        assert raw.status_code == 413
        chat, _, _, *_ = ask(client, "What is it?", [wide]).result(timeout=60)
    assert "pixel cap" in texts(chat)[-1] and "wide.png" in texts(chat)[-1]
    assert runtime.store.list_runs() == []


def test_login_is_required_when_configured(make_runtime):
    from pydantic import SecretStr

    ui = UISettings(username="clinic", password=SecretStr("s3cret-pass"))
    runtime = make_runtime(ui=ui, **FAST)
    with serving(runtime) as url:
        with pytest.raises(AuthenticationError, match="Please login"):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("clinic", "wrong"), verbose=False)
        assert httpx.get(f"{url}/gradio_api/info").status_code in (401, 403)
        client = Client(url, auth=("clinic", "s3cret-pass"), verbose=False)
        assert "/ask" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]


@pytest.mark.slow
def test_concurrent_first_questions_finish_even_when_one_is_bad(runtime, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    good = tmp_path / "good.png"
    good.write_bytes(make_case(5).images[0])
    with serving(runtime) as url, ThreadPoolExecutor(2) as pool:
        bad_client, good_client = Client(url, verbose=False), Client(url, verbose=False)
        bad = pool.submit(lambda: ask(bad_client, "Q?", [fake]).result(timeout=120))
        ok = pool.submit(lambda: ask(good_client, "Q?", [good]).result(timeout=120))
        bad_chat, ok_out = bad.result()[0], ok.result()
    assert "Could not read an image" in texts(bad_chat)[-1]
    (run,) = runtime.store.list_runs()
    assert run.id == run_id_of(ok_out[2])


@pytest.mark.slow
def test_a_waiting_user_sees_their_question_image_and_place_in_line(make_runtime, tmp_path):
    runtime = make_runtime(ui=UISettings(concurrency=1), **FAST)
    cases = [make_case(0), make_case(3)]
    paths = []
    for i, case in enumerate(cases):
        paths.append(tmp_path / f"case{i}.png")
        paths[-1].write_bytes(case.images[0])
    with serving(runtime) as url:
        clients = [Client(url, verbose=False), Client(url, verbose=False)]
        jobs = [
            ask(c, f"Q{i}: {case.question}", [p])
            for i, (c, case, p) in enumerate(zip(clients, cases, paths, strict=True))
        ]
        finals = [job.result(timeout=240) for job in jobs]
        streamed = [job.outputs() for job in jobs]
    waited = []
    for i, outputs in enumerate(streamed):
        waiting = [texts(chat) for chat, *_ in outputs if any("in line" in t for t in texts(chat))]
        if waiting:
            # While waiting: the question and the image preview are on screen, with the place.
            chat = next(chat for chat, *_ in outputs if any("in line" in t for t in texts(chat)))
            assert waiting[0][0].startswith(f"Q{i}: ") and chat[1]["content"][0]["type"] == "file"
            assert any("**next in line**" in t for said in waiting for t in said)
            waited.append(i)
    assert len(waited) == 1  # one slot: exactly one of the two askers waited for the other
    for out in finals:
        assert not any("in line" in t for t in texts(out[0]))  # the place gives way to the steps
        assert any(t.startswith("**Answer:**") for t in texts(out[0]))
    assert len(runtime.store.list_runs()) == 2


def test_the_server_refuses_a_verdict_while_the_case_runs_and_one_on_another_case(settings, store, tmp_path):
    """Behind the locked buttons: the verdict handler itself checks the session."""
    from ui.chat import ChatController, ChatSession

    first, other = make_runs(settings, store, [2, 1])
    runtime = Runtime(settings, backends=scripted_panel({}), store=store)
    try:
        controller = ChatController(runtime, settings.ui, tmp_path / "previews")
        session = ChatSession(thread_id=first.thread_id, run_ids=[first.run_id], running=True)
        _, note = controller.verdict(first.run_id, False, "C", session)
        assert "being answered" in note
        _, note = controller.verdict(other.run_id, True, None, ChatSession(run_ids=[first.run_id]))
        assert "not part of the case" in note
        assert store.latest_verdicts([first.run_id, other.run_id]) == {}
        session.running = False
        rows, note = controller.verdict(first.run_id, False, "C", session)
        assert "Recorded **wrong** (right answer: C)" in note
        assert rows["busy"] is False and rows["answers"] == controller.answers(session)
        (answer,) = rows["answers"]
        assert (answer["run_id"], answer["verdict"], answer["right_answer"]) == (first.run_id, False, "C")
    finally:
        runtime.close()


def test_the_files_the_app_serves_are_removed_when_it_shuts_down(runtime, tmp_path):
    """Image previews, run downloads and exports hold patient data: gone with the server, and
    so are the copies Gradio served from its cache."""
    from gradio.utils import get_upload_folder

    from ui.app import build_app, launch

    demo = build_app(runtime)
    folder = demo.served_files
    image = tmp_path / "case.png"  # unseeded pixels: no file of another test or run matches its preview
    Image.fromarray(np.random.default_rng().integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    url = launch(demo, runtime.settings, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=False)  # a browser keeps no copy either
        ask(client, "What is shown?", [image]).result()
        (run,) = runtime.store.list_runs()
        client.predict(run.id, api_name="/open_run")
        client.predict("attending", "jsonl", "ok", "", [], False, api_name="/export")
        written = [p for p in folder.rglob("*") if p.is_file()]
        assert {p.relative_to(folder).parts[0] for p in written} == {"previews", "runs", "exports", "gradio"}
        (preview,) = [p.read_bytes() for p in written if p.parent.name == "previews"]
        cache = Path(get_upload_folder())
        assert cache == folder / "gradio"  # Gradio's cache is in the app's folder (ui/served.py)
        assert any(p.read_bytes() == preview for p in cache.rglob("*.png"))  # Gradio served a copy
    finally:
        demo.close()
    assert not folder.exists()
    assert not any(p.read_bytes() == preview for p in cache.rglob("*.png"))

"""Nothing the app served outlives its server (issue 32), whatever stops it: Ctrl-C, SIGTERM, a
normal exit, or SIGKILL and a restart; and a served file goes only to the browser it was made for.

The real ``mmedagent ui`` on the tiny model, each run in its own TMPDIR, so that the served-files
root listed is this test's alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from data.leases import process_start
from data.synthetic import make_case
from tests.test_ui_client import FAST, ask, run_id_of
from tests.ui_server import chromium, free_port, serving
from ui.file_access import ServedToTheirClient
from ui.served import APP, MARKER, stop_on_signals

SCRIPT = """
import sys
from app.commands.common import load_settings, open_runtime
from ui.app import build_app, launch
runtime = open_runtime(load_settings())
url = launch(build_app(runtime), runtime.settings, port=int(sys.argv[1]), block=False, quiet=True)
print("mmedagent UI on", url, flush=True)
sys.stdin.readline()
runtime.close()
"""  # served, then returns without closing the server: only the exit itself removes the files


def _env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "MMEDAGENT_HOME": str(tmp_path / "home"),
        "MMEDAGENT_MODEL": str(tiny_model_dir),
        "HF_HUB_OFFLINE": "1",
        "MMEDAGENT_TRIAGE__MAX_NEW_TOKENS": "12",
        "MMEDAGENT_SPECIALIST__MAX_NEW_TOKENS": "12",
        "MMEDAGENT_ATTENDING__MAX_NEW_TOKENS": "16",
    }


def _root(tmp_path: Path) -> Path:
    return tmp_path / "tmp" / f"{APP}-{os.getuid()}"


def listing(root: Path) -> list[str]:
    """Every path under ``root``, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _start(env: dict[str, str], *, script: bool = False) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if script:
        cmd = [sys.executable, "-c", SCRIPT, str(port)]
    else:
        cmd = [str(Path(sys.executable).with_name("mmedagent")), "ui", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    while "mmedagent UI on" not in (line := proc.stdout.readline()):
        assert line, "the server exited without serving"
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url, timeout=2)
            return proc, url
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    raise AssertionError("the server never answered")


def _serve_files(url: str, image: Path) -> tuple[Client, list[str]]:
    """Make the server write a preview, a run JSON and a parquet export; returns the client and
    the served paths it was given (the run JSON's first)."""
    client = Client(url, verbose=False, download_files=False)
    chat, _, status, *_ = ask(client, "What is shown?", [image]).result(timeout=180)
    *_, run_json = client.predict(run_id_of(status), api_name="/open_run")
    _, export = client.predict("attending", "parquet", "ok", "", [], False, api_name="/export")
    served = [_path(run_json), _path(export), *re.findall(r"'(/[^']+\.png)'", repr(chat))]
    assert served[0].endswith(".json") and served[1].endswith(".parquet") and len(served) > 2, served
    return client, served


def _path(value: str | dict) -> str:
    """A served file's path, from a file value or an update carrying one."""
    return value if isinstance(value, str) else _path(value.get("path") or value["value"])


def _process_folder(root: Path, pid: int) -> Path:
    (folder,) = root.glob(f"{pid}-*")
    return folder


def _assert_serving(root: Path, pid: int, image: Path) -> Path:
    folder = _process_folder(root, pid)
    names = [Path(p).name for p in listing(folder)]
    assert MARKER in names and any(n.endswith(".parquet") for n in names)
    assert any(n.startswith("run-") and n.endswith(".json") for n in names)
    assert any(n.endswith(".png") for n in names)  # the upload's preview
    assert image.name not in names  # the upload itself: deleted once the chat read it
    return folder


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "case.png"
    path.write_bytes(make_case(0).images[0])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_remove_every_served_file(tmp_path, tiny_model_dir, image, sig):
    env, root = _env(tmp_path, tiny_model_dir), _root(tmp_path)
    proc, url = _start(env)
    try:
        _serve_files(url, image)
        _assert_serving(root, proc.pid, image)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert listing(root) == []
    assert "Traceback" not in out


def test_a_signal_the_process_was_started_ignoring_stays_ignored():
    """Under ``nohup mmedagent ui &`` SIGHUP is ignored: closing the terminal must not stop it."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop_on_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        stop_on_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.getsignal(signal.SIGTERM)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.slow
def test_a_normal_exit_removes_every_served_file(tmp_path, tiny_model_dir, image):
    env, root = _env(tmp_path, tiny_model_dir), _root(tmp_path)
    proc, url = _start(env, script=True)
    try:
        _serve_files(url, image)
        _assert_serving(root, proc.pid, image)
        out, _ = proc.communicate("\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert listing(root) == []


@pytest.mark.slow
def test_after_sigkill_the_next_start_removes_what_the_killed_server_left_and_only_that(
    tmp_path, tiny_model_dir, image
):
    env, root = _env(tmp_path, tiny_model_dir), _root(tmp_path)
    killed, url = _start(env)
    try:
        client, (run_json, *_) = _serve_files(url, image)
        left = _assert_serving(root, killed.pid, image)
    finally:
        killed.kill()
        killed.wait(timeout=30)
    assert Path(run_json).is_file() and left in Path(run_json).parents  # SIGKILL: nothing ran
    # What is not a dead process's folder of this app stays: no marker, a live owner, not ours.
    (root / "no-marker").mkdir()
    (root / "no-marker" / "keep.txt").write_text("x")
    live = {"app": APP, "pid": os.getpid(), "started": process_start(os.getpid())}
    (root / "live-owner").mkdir()
    (root / "live-owner" / MARKER).write_text(json.dumps(live))
    (root / "other-app").mkdir()
    (root / "other-app" / MARKER).write_text(json.dumps({**live, "app": "other", "pid": killed.pid}))
    (tmp_path / "tmp" / "beside.txt").write_text("x")
    later, url = _start(env)
    try:
        assert not left.exists()
        fresh = _process_folder(root, later.pid)
        assert sorted(p.name for p in root.iterdir()) == sorted(
            ["no-marker", "live-owner", "other-app", fresh.name]
        )
        assert (tmp_path / "tmp" / "beside.txt").exists()
        # The later server serves nothing of the earlier one, to the same client either.
        assert httpx.get(f"{url}/gradio_api/file={run_json}", cookies=client.cookies).status_code == 404
        later.send_signal(signal.SIGTERM)
        later.communicate(timeout=60)
    finally:
        later.kill()
    assert sorted(p.name for p in root.iterdir()) == ["live-owner", "no-marker", "other-app"]


def test_a_served_file_goes_only_to_the_client_it_was_made_for(make_runtime, image):
    runtime = make_runtime(**FAST)
    with serving(runtime) as url:
        owner, served = _serve_files(url, image)  # run JSON, parquet export, preview(s)
        other = Client(url, verbose=False, download_files=False)
        assert owner.cookies and other.cookies and owner.cookies != other.cookies
        for path in served:  # by each of gradio's file routes, and through a link to the path
            for file in (
                f"{url}/gradio_api/file={path}",
                f"{url}/gradio_api/file/{path}",
                f"{url}/gradio_api/file=/proc/self/root{path}",
            ):
                assert httpx.get(file, cookies=owner.cookies).status_code == 200, file
                assert httpx.get(file, cookies=other.cookies).status_code == 404, file
                assert httpx.get(file).status_code == 404, file
        # Served paths are content-addressed: the same case's preview, the same run's JSON. A
        # second client given them shares them; the first keeps them.
        run_json, _, *previews = served
        chat, *_ = ask(other, "What is shown?", [image]).result(timeout=180)
        *_, same_run = other.predict(Path(run_json).stem.removeprefix("run-"), api_name="/open_run")
        assert _path(same_run) == run_json and set(previews) <= set(
            re.findall(r"'(/[^']+\.png)'", repr(chat))
        )
        for path in (run_json, *previews):
            for client in (owner, other):
                file = f"{url}/gradio_api/file={path}"
                assert httpx.get(file, cookies=client.cookies).status_code == 200, path


def test_only_paths_of_existing_files_are_noted_and_a_removed_file_is_forgotten(tmp_path):
    """A client cannot grow the owners' table with made-up paths in its questions, nor claim a
    file before it is made; an entry goes when its file does."""
    folder = tmp_path / "served"
    folder.mkdir()

    async def echo(request: Request) -> JSONResponse:  # as the chat echoes a question
        return JSONResponse({"text": request.query_params["q"]})

    async def file(request: Request) -> FileResponse:
        return FileResponse(request.path_params["path"])

    app = Starlette(routes=[Route("/echo", echo), Route("/gradio_api/file={path:path}", file)])
    made_up, removed = folder / "later.png", folder / "removed.png"
    removed.write_bytes(b"x")
    with TestClient(ServedToTheirClient(app, folder)) as client:
        for path in (made_up, removed):
            assert client.get("/echo", params={"q": str(path)}).status_code == 200
        made_up.write_bytes(b"x")
        assert client.get(f"/gradio_api/file={made_up}").status_code == 404  # not a file when named
        assert client.get(f"/gradio_api/file={removed}").status_code == 200
        removed.unlink()
        assert client.get(f"/gradio_api/file={removed}").status_code == 404
        removed.write_bytes(b"x")
        assert client.get(f"/gradio_api/file={removed}").status_code == 404  # forgotten with its file


PREVIEW_SHOWN = "() => [...document.querySelectorAll('#case-chat img')].some((i) => i.naturalWidth > 0)"


@pytest.mark.slow
def test_in_the_browser_a_preview_shows_for_its_user_and_is_not_found_for_another(make_runtime, image):
    runtime = make_runtime(**FAST)
    with serving(runtime) as url, chromium() as browser:
        mine, theirs = (browser.new_context().new_page() for _ in range(2))
        for page in (mine, theirs):
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#case-input textarea")
        with mine.expect_file_chooser() as chooser:
            mine.click("#case-input button[data-testid=upload-button]")
        chooser.value.set_files([str(image)])
        mine.locator("#case-input .thumbnail-item").wait_for()
        mine.fill("#case-input textarea", "What is shown?")
        mine.press("#case-input textarea", "Enter")
        mine.locator("#case-chat").get_by_text("Answer:").wait_for()
        mine.wait_for_function(PREVIEW_SHOWN)  # the preview loaded, in the page that asked
        sources = mine.eval_on_selector_all("#case-chat img", "(imgs) => imgs.map((i) => i.src)")
        previews = [src for src in sources if "/file=" in src]
        assert previews
        for src in previews:
            assert mine.request.get(src).status == 200
            assert theirs.request.get(src).status == 404  # another browser: another user

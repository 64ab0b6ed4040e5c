"""No case vanishes (issue 32): a run is recorded when it starts and finished when it ends; one whose
process dies is left ``interrupted``, with its steps so far, its images and its LangGraph thread.

The store part on SQLite and PostgreSQL; the runtime with real stores and scripted models; and the
CLI for real: ``mmedagent ask`` killed with SIGKILL during the attending step (a real
OpenAI-compatible server on loopback holds that request), then ``runs list`` and a follow-up.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy.exc import OperationalError

from app.runtime import CaseRequest, RunNotFinished
from data.images import load_image
from data.leases import HOST_CHARS, owner_gone, process_alive, process_owner, process_start
from data.store import ImageIn, RewardIn, RunIn, TrajectoryStore
from tests.loopback import LoopbackServer, QuietHandler
from tests.scripted import ScriptedBackend, request_text

ROOT = Path(__file__).resolve().parents[1]
ANSWER = "<think>looked</think><answer>B</answer>"
ATTENDING = "You are the attending physician"


def _step(node: str) -> dict:
    return {"node": node, "role": node, "messages": [], "completion": ANSWER, "parse_status": "ok",
            "model_id": "m", "started_at": time.time()}  # fmt: skip


def _dead_owner() -> str:
    """The lease name of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()[:HOST_CHARS]}:{proc.pid}:dead"


def test_owner_gone_only_for_an_exited_process_of_this_host():
    assert owner_gone(_dead_owner())
    assert not owner_gone(process_owner())  # this process
    assert not owner_gone(f"another-host:{os.getpid() + 1_000_000}:x")  # its lease decides
    assert not owner_gone(None) and not owner_gone("garbage")


def test_run_recorded_at_start_finished_at_end(store):
    img = ImageIn("c" * 64, "image/png", 1, 1, b"px")
    run = RunIn(id="r", thread_id="t", question="q?", status="ok", image_shas=[img.sha256])
    store.begin_run(run, [img], owner="h:1:a", lease_s=60)
    store.add_step("r", 0, _step("triage"))
    row = store.get_run("r")
    assert (row.status, row.owner, row.finished_at) == ("running", "h:1:a", None)
    assert row.lease_until is not None and [s.node for s in row.steps] == ["triage"]
    assert [i.sha256 for i in row.images] == [img.sha256] and store.image_bytes(img.sha256) == b"px"
    assert [r.id for r in store.list_runs(status="running")] == ["r"]

    done = RunIn(id="r", thread_id="t", question="q?", status="ok", answer="B", image_shas=[img.sha256])
    steps = [_step("triage"), _step("attending")]  # the first was stored already, the second not
    store.finish_run(done, steps, [RewardIn(step=1, role="attending", kind="format", value=1.0)])
    row = store.get_run("r")
    assert (row.status, row.answer, row.owner, row.lease_until) == ("ok", "B", "h:1:a", None)
    assert row.finished_at is not None and [s.node for s in row.steps] == ["triage", "attending"]
    (reward,) = store.rewards("r")
    assert reward.step_id == row.steps[1].id


def test_interrupted_when_its_process_is_gone_or_its_lease_lapsed(store):
    def begin(run_id: str, owner: str, lease_s: float) -> None:
        store.begin_run(RunIn(id=run_id, thread_id=f"t-{run_id}", question="q", status="ok"), [],
                        owner=owner, lease_s=lease_s)  # fmt: skip

    begin("dead", _dead_owner(), 60)  # this host, its process exited: marked at once
    begin("alive", process_owner(), 60)  # this very process
    begin("far", "other-host:7:x", 60)  # another host within its lease
    begin("lapsed", "other-host:8:y", 0.2)  # another host that stopped renewing
    store.add_step("dead", 0, _step("triage"))
    time.sleep(0.5)
    assert sorted(store.mark_interrupted()) == ["dead", "lapsed"]
    assert store.mark_interrupted() == []  # marked once
    dead = store.get_run("dead")
    assert dead.status == "interrupted" and dead.finished_at is not None and dead.lease_until is None
    assert "stopped before it finished" in dead.error and dead.owner in dead.error
    assert [s.node for s in dead.steps] == ["triage"] and dead.thread_id == "t-dead"
    assert {r.id for r in store.list_runs(status="interrupted")} == {"dead", "lapsed"}
    assert {r.id for r in store.list_runs(status="running")} == {"alive", "far"}

    # a renewed lease holds; one not renewed lapses and whoever looks marks it
    begin("renewed", "other-host:9:z", 0.3)
    begin("forgotten", "other-host:10:w", 0.3)
    begin("given-up", "other-host:9:z", 0.3)  # same owner, but not among the runs it renews
    for _ in range(3):
        time.sleep(0.15)
        assert store.renew_runs("other-host:9:z", ["renewed", "forgotten"], 0.3) == 1
    assert store.renew_runs("other-host:9:z", [], 0.3) == 0
    assert sorted(store.mark_interrupted()) == ["forgotten", "given-up"]


def test_finish_run_refuses_a_run_never_begun(store):
    with pytest.raises(LookupError, match="never begun"):
        store.finish_run(RunIn(id="nobody", thread_id="t", question="q", status="ok"), [])
    assert store.get_run("nobody") is None


def _reused_pid_owner() -> str:
    """The lease name of an earlier process that had this process's pid (as pid 1 is, in a container
    restarted): this pid, an earlier start time."""
    start = process_start(os.getpid())
    if start is None:
        pytest.skip("no /proc: process start times are unknown here")
    return f"{socket.gethostname()[:HOST_CHARS]}:{os.getpid()}:{int(start) - 1}:old"


def test_owner_gone_when_its_pid_now_names_another_process():
    start = process_start(os.getpid())
    assert not owner_gone(process_owner()) and process_owner().split(":")[2] == start
    assert owner_gone(_reused_pid_owner())
    assert not owner_gone(f"{socket.gethostname()[:HOST_CHARS]}:{os.getpid()}:x")  # no start: pid only
    assert process_alive(os.getpid(), start) and process_alive(os.getpid(), None)
    assert not process_alive(os.getpid(), str(int(start) - 1))
    dead = int(_dead_owner().split(":")[1])
    assert not process_alive(dead, None) and not process_alive(dead, start)
    assert len(process_owner()) <= 128  # the owner columns' width


@pytest.fixture
def scripted_runtime(make_runtime):
    """A runtime on scripted models whose attending raises ``box["raise"]`` (when set)."""
    box: dict[str, BaseException | None] = {"raise": None}

    def attending(req):
        if box["raise"] is not None:
            raise box["raise"]
        return ANSWER

    backend = ScriptedBackend(lambda r: attending(r) if ATTENDING in request_text(r) else ANSWER)
    rt = make_runtime(backends=dict.fromkeys(("triage", "specialist", "attending"), backend), n_specialists=1)
    return rt, box


def _request(rt, **kw) -> CaseRequest:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 40, 40)).save(buf, "PNG")
    image = load_image(buf.getvalue(), limits=rt.settings.image_limits())
    return CaseRequest(question="What is seen?", images=[image], options=["A) x", "B) y"], **kw)


def test_runtime_records_the_owner_and_a_stopped_run_is_kept(scripted_runtime):
    rt, box = scripted_runtime
    ok = rt.ask(_request(rt))
    row = rt.store.get_run(ok.run_id)
    assert (row.status, row.owner, row.lease_until) == ("ok", rt.owner, None)
    assert rt.owner.split(":")[1] == str(os.getpid())
    assert [s.node for s in row.steps] == ["triage", "specialist", "attending"]

    box["raise"] = KeyboardInterrupt()  # Ctrl-C during the attending step
    with pytest.raises(KeyboardInterrupt):
        rt.ask(_request(rt))
    (stopped,) = rt.store.list_runs(status="interrupted")
    stopped = rt.store.get_run(stopped.id)
    assert [s.node for s in stopped.steps] == ["triage", "specialist"]
    assert "was stopped" in stopped.error and stopped.answer is None

    box["raise"] = None  # its case goes on: a follow-up on the interrupted run's thread
    follow = rt.ask(_request(rt, thread_id=stopped.thread_id))
    assert follow.status == "ok" and follow.thread_id == stopped.thread_id


def test_a_run_whose_end_cannot_be_stored_is_marked_and_its_lease_not_renewed(scripted_runtime, monkeypatch):
    rt, _ = scripted_runtime
    dropped = OperationalError("UPDATE runs", {}, Exception("server closed the connection unexpectedly"))

    def drop(*_a, **_k):
        raise dropped

    monkeypatch.setattr(rt.store, "finish_run", drop)  # the database goes away as the run ends
    with pytest.raises(RunNotFinished) as caught:
        rt.ask(_request(rt))
    row = rt.store.get_run(caught.value.run_id)
    assert row.status == "interrupted" and [s.node for s in row.steps] == [
        "triage",
        "specialist",
        "attending",
    ]

    # and when even marking it fails, it stays running but its lease is no longer renewed: it lapses
    marking = rt.store.mark_interrupted
    monkeypatch.setattr(
        rt.store, "mark_interrupted", lambda run_ids=None, **kw: drop() if run_ids else marking(**kw)
    )
    with pytest.raises(RunNotFinished) as caught:
        rt.ask(_request(rt))
    before = rt.store.get_run(caught.value.run_id)
    assert before.status == "running" and rt._in_flight == set()
    time.sleep(0.05)
    rt._keep_leases()  # what the lease keeper does every 20 s
    assert rt.store.get_run(caught.value.run_id).lease_until == before.lease_until


def test_the_chat_neither_calls_a_running_run_finished_nor_judges_an_unfinished_one(
    scripted_runtime, tmp_path
):
    from ui.chat import ChatController, ChatSession, Transcript

    rt, box = scripted_runtime
    transcript = Transcript(str)  # a reopened run that another process still answers
    transcript.on_event({"event": "run_finished", "run_id": "r1", "status": "running", "error": None})
    (message,) = transcript.messages
    assert "still being answered by another process" in message["content"] and "`r1`" in message["content"]

    box["raise"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        rt.ask(_request(rt))
    (stopped,) = rt.store.list_runs(status="interrupted")
    controller = ChatController(rt, rt.settings.ui, tmp_path / "previews")
    _, note = controller.verdict(stopped.id, True, None, ChatSession(run_ids=[stopped.id]))
    assert (
        "was interrupted: it has no answer to judge" in note and rt.store.latest_verdicts([stopped.id]) == {}
    )


def test_a_new_runtime_marks_runs_of_dead_processes(scripted_runtime, make_runtime):
    rt, _ = scripted_runtime
    rt.store.begin_run(RunIn(id="orphan", thread_id="orphan", question="q", status="ok"), [],
                       owner=_dead_owner(), lease_s=600)  # fmt: skip
    rt.store.begin_run(RunIn(id="pid-reused", thread_id="pid-reused", question="q", status="ok"), [],
                       owner=_reused_pid_owner(), lease_s=600)  # fmt: skip
    assert rt.store.get_run("orphan").status == rt.store.get_run("pid-reused").status == "running"
    make_runtime(backends=rt.backends)  # the app's next start, its pid reused or not
    assert rt.store.get_run("orphan").status == rt.store.get_run("pid-reused").status == "interrupted"


class AttendingHolds(LoopbackServer):
    """``/v1/chat/completions``: answers at once, but holds each attending request until ``release``."""

    def __init__(self) -> None:
        self.attending, self.release = threading.Event(), threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_json()
                if ATTENDING in json.dumps(body["messages"]):
                    server.attending.set()
                    server.release.wait(120)
                self.send_completion(body.get("model"), ANSWER, 3)

        super().__init__(Handler)


def _running_steps(store: TrajectoryStore) -> int:
    running = store.list_runs(status="running")
    return len(store.get_run(running[0].id).steps) if running else 0


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.mark.slow
def test_cli_killed_during_the_attending_step_leaves_an_interrupted_run(tmp_path):
    home, image = tmp_path / "home", tmp_path / "case.png"
    Image.new("RGB", (32, 32), (90, 40, 40)).save(image)
    db_url = f"sqlite:///{home / 'store.db'}"
    with AttendingHolds() as server:
        env = {
            **os.environ, "MMEDAGENT_HOME": str(home), "MMEDAGENT_DB_URL": db_url,
            "MMEDAGENT_MODEL": "held-server", "MMEDAGENT_N_SPECIALISTS": "1", "COLUMNS": "200",
            **{f"MMEDAGENT_{r}__BACKEND": "openai" for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
            **{f"MMEDAGENT_{r}__BASE_URL": server.base_url for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
        }  # fmt: skip
        args = ["ask", "-q", "What is seen?", "-i", str(image), "-o", "A) x", "-o", "B) y"]
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        assert server.attending.wait(120), proc.communicate(timeout=10)[0] if proc.poll() is not None else ""
        store = TrajectoryStore(db_url)
        try:
            deadline = time.monotonic() + 60
            while _running_steps(store) < 2:  # triage and specialist stored, attending held
                assert time.monotonic() < deadline and proc.poll() is None, "no running run with 2 steps"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            (run,) = store.list_runs(limit=None)
            assert (run.status, run.owner.split(":")[1]) == ("running", str(proc.pid))  # as it died

            listed = _cli(env, "runs", "list")
            assert listed.returncode == 0, listed.stderr
            row = next(line for line in listed.stdout.splitlines() if run.id in line)
            assert "interrupted" in row, listed.stdout
            shown = json.loads(_cli(env, "runs", "show", run.id, "--json").stdout)
            assert shown["status"] == "interrupted" and str(proc.pid) in shown["error"]
            assert [s["node"] for s in shown["steps"]] == ["triage", "specialist"]
            with sqlite3.connect(home / "checkpoints.sqlite") as db:  # the orphan thread is the run's
                threads = {t for (t,) in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}
            assert threads == {run.thread_id}

            server.release.set()  # the case goes on: a follow-up with its stored images
            follow = _cli(env, "ask", "--case", run.thread_id, "-q", "And now?", "--json")
            assert follow.returncode == 0, follow.stderr
            assert json.loads(follow.stdout)["thread_id"] == run.thread_id
            statuses = {r.id: r.status for r in store.list_runs(limit=None)}
            assert statuses[run.id] == "interrupted" and sorted(statuses.values()) == ["interrupted", "ok"]
        finally:
            store.close()


def _serve_ui(env: dict, port: int) -> subprocess.Popen:
    """``mmedagent ui`` as its own process; returns once it answers HTTP."""
    import httpx

    exe = Path(sys.executable).with_name("mmedagent")
    proc = subprocess.Popen([str(exe), "ui", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    line = ""
    while "mmedagent UI on" not in line:
        line = proc.stdout.readline()
        assert line, "mmedagent ui exited without serving"
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("mmedagent ui did not answer")


@pytest.mark.slow
def test_ui_killed_during_the_attending_step_reopens_the_case_interrupted(tmp_path):
    from playwright.sync_api import expect

    from tests.test_ui_browser import STEP_TIMEOUT_MS, send, shot
    from tests.ui_server import chromium, free_port

    home, image = tmp_path / "home", tmp_path / "case.png"
    Image.new("RGB", (32, 32), (90, 40, 40)).save(image)
    db_url = f"sqlite:///{home / 'store.db'}"
    with AttendingHolds() as server, chromium() as browser:
        env = {
            **os.environ, "MMEDAGENT_HOME": str(home), "MMEDAGENT_DB_URL": db_url,
            "MMEDAGENT_MODEL": "held-server", "MMEDAGENT_N_SPECIALISTS": "1", "HF_HUB_OFFLINE": "1",
            **{f"MMEDAGENT_{r}__BACKEND": "openai" for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
            **{f"MMEDAGENT_{r}__BASE_URL": server.base_url for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
        }  # fmt: skip
        port = free_port()
        first = _serve_ui(env, port)
        second = None
        store = TrajectoryStore(db_url)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#case-input textarea")
            send(page, "What is seen on the left?", [image], ["A) x", "B) y"])
            assert server.attending.wait(120), "the attending step never started"
            deadline = time.monotonic() + 60
            while _running_steps(store) < 2:
                assert time.monotonic() < deadline and first.poll() is None, "no running run with 2 steps"
                time.sleep(0.05)
            first.kill()  # SIGKILL, mid-case
            assert first.wait(timeout=30) == -signal.SIGKILL
            (run,) = store.list_runs(limit=None)
            assert run.status == "running"

            port = free_port()
            second = _serve_ui(env, port)  # the next start marks it
            assert store.get_run(run.id).status == "interrupted"
            page.goto(f"http://127.0.0.1:{port}/?case={run.thread_id}")
            chat = page.locator("#case-chat")
            chat.get_by_text("The run was interrupted").wait_for()
            text = chat.inner_text()
            assert (
                "What is seen on the left?" in text
                and run.id in text
                and "stopped before it finished" in text
            )
            assert (
                chat.get_by_text("Triage →").count() == 1 and chat.get_by_text("Specialist · ").count() == 1
            )
            assert chat.get_by_text("Answer:").count() == 0
            verdict = page.locator("#verdict-1")  # no answer to judge: no verdict buttons
            expect(verdict).to_contain_text("no verdict: the run was interrupted")
            assert verdict.locator(".verdict-correct, .verdict-wrong").count() == 0
            assert chat.locator("img").count() >= 1  # its image, from the store
            shot(page, "interrupted-case")
            page.click("#open-trace")
            summary = page.locator("#trace-summary")
            summary.get_by_text("Graph path").wait_for()
            assert run.id in summary.inner_text() and "✗ interrupted" in summary.inner_text()
            expect(page.locator("#runs-table")).to_contain_text("interrupted")
        finally:
            server.release.set()
            store.close()
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)


def test_runs_list_filters_by_each_status_and_refuses_another(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMEDAGENT_DB_URL", db_url)
    store = TrajectoryStore(db_url)
    store.begin_run(RunIn(id="gone-run", thread_id="g", question="q", status="ok"), [],
                    owner=_dead_owner(), lease_s=60)  # fmt: skip
    store.close()
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list", "--status", "interrupted"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "gone-run" in listed.output and "interrupted" in listed.output
    assert "gone-run" not in runner.invoke(app, ["runs", "list", "--status", "running"]).output
    bad = runner.invoke(app, ["runs", "list", "--status", "lost"])
    assert bad.exit_code == 2 and "running, interrupted" in bad.output


def _read_only(url: str) -> str:
    """``url`` opened read-only: SQLite's ``mode=ro``, a PostgreSQL session that refuses writes."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return f"{url}&options=-c%20default_transaction_read_only%3Don"


def test_runs_list_and_show_read_a_read_only_database(db_url, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    store = TrajectoryStore(db_url)
    store.begin_run(RunIn(id="gone-run", thread_id="g", question="q", status="ok"), [],
                    owner=_dead_owner(), lease_s=60)  # fmt: skip
    store.close()
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMEDAGENT_DB_URL", _read_only(db_url))
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.stdout.splitlines() if "gone-run" in line)
    assert "running" in row  # as stored: nothing could mark it
    assert listed.stderr.count("not marked interrupted") == 1 and "Traceback" not in listed.output
    shown = runner.invoke(app, ["runs", "show", "gone-run", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["status"] == "running" and "not marked interrupted" in shown.stderr


def test_export_offers_finished_runs_only(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app
    from data.schema import FINISHED_STATUSES, RUN_STATUSES

    assert set(FINISHED_STATUSES) < set(RUN_STATUSES)
    monkeypatch.setenv("MMEDAGENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MMEDAGENT_DB_URL", f"sqlite:///{tmp_path / 'store.db'}")
    args = ["export", "--role", "attending", "--out", str(tmp_path / "out"), "--status"]
    bad = CliRunner().invoke(app, [*args, "interrupted"])
    assert bad.exit_code == 2 and f"must be one of {', '.join(FINISHED_STATUSES)}" in bad.output

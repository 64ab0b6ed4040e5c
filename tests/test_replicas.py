"""App replicas sharing cases through PostgreSQL (issue 30): conversation state in the database.

A case is asked by one real ``mmedagent ask`` process; its follow-up is asked by a second process
with another ``home`` (another host, as far as files go): the second sees the first's turn in its
prompts because LangGraph's checkpoints live in the shared PostgreSQL database, not in a file. The
case's link (``?case=``) reopens it in a third process serving the UI, in a real Chromium, and a
follow-up asked there sees every earlier turn. Checkpoint tables follow ``mmedagent db upgrade``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.checkpoints import checkpoint_head, checkpoint_revision, libpq_url, open_checkpointer
from app.cli import app
from data.migrate import DatabaseNotMigrated
from data.store import TrajectoryStore
from data.synthetic import make_case
from graph.prompts import format_history

ROOT = Path(__file__).resolve().parents[1]
FOLLOW_UP = "Is it malignant?"


def _ask(home: Path, db_url: str, model: Path, *args: str) -> dict:
    """``mmedagent ask … --json`` as a process of its own, with short completions."""
    env = {
        **os.environ,
        "MMEDAGENT_HOME": str(home),
        "MMEDAGENT_DB_URL": db_url,
        "MMEDAGENT_MODEL": str(model),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **{f"MMEDAGENT_{r}__MAX_NEW_TOKENS": "24" for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
    }
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "ask", "--json", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def _attending_prompt(store: TrajectoryStore, run_id: str) -> str:
    run = store.get_run(run_id)
    assert run is not None and run.thread_id
    (step,) = [s for s in run.steps if s.role == "attending"]
    return json.dumps(step.messages, ensure_ascii=False)


def _checkpoint_threads(db_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(libpq_url(db_url)) as conn:
        return {t for (t,) in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


@pytest.fixture(scope="module")
def shared_db(postgres_server):
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(scope="module")
def first_turn(shared_db, tiny_model_dir, tmp_path_factory):
    """A case asked by replica 1 (its own process and home): (case, ``ask --json`` summary)."""
    case = make_case(0)
    image = tmp_path_factory.mktemp("images") / "case.png"
    image.write_bytes(case.images[0])
    home = tmp_path_factory.mktemp("replica-1")
    options = [a for o in case.options for a in ("--option", o)]
    first = _ask(home, shared_db, tiny_model_dir, "--image", str(image), "-q", case.question, *options)
    assert first["status"] == "ok"
    assert not (home / "checkpoints.sqlite").exists()  # the conversation state went to PostgreSQL
    return case, first


@pytest.mark.slow
def test_a_follow_up_through_a_second_process_sees_the_earlier_turn(
    shared_db, tiny_model_dir, first_turn, tmp_path
):
    case, first = first_turn
    assert first["thread_id"] in _checkpoint_threads(shared_db)
    follow = _ask(
        tmp_path / "replica-2", shared_db, tiny_model_dir, "--case", first["thread_id"], "-q", FOLLOW_UP
    )
    assert follow["status"] == "ok" and follow["thread_id"] == first["thread_id"]
    store = TrajectoryStore(shared_db)
    try:
        prompt = _attending_prompt(store, follow["run_id"])
        earlier = json.dumps(format_history([(case.question, first["answer"])]), ensure_ascii=False)[1:-1]
        assert earlier in prompt  # the first turn, as replica 1 answered it
        assert FOLLOW_UP in prompt
        # the follow-up ran on the case's stored image (no --image given)
        assert (
            store.get_run(follow["run_id"]).images[0].sha256
            == store.get_run(first["run_id"]).images[0].sha256
        )
    finally:
        store.close()
    assert not (tmp_path / "replica-2" / "checkpoints.sqlite").exists()


@pytest.mark.slow
@pytest.mark.browser
def test_the_case_link_reopens_it_on_another_replica_which_continues_it(
    shared_db, tiny_model_dir, tiny_backend, first_turn, tmp_path
):
    from playwright.sync_api import expect

    from tests.test_ui_browser import STEP_TIMEOUT_MS, send, short_runtime
    from tests.ui_server import chromium, serving

    case, first = first_turn
    runtime = short_runtime(tmp_path / "replica-3", tiny_backend, model=str(tiny_model_dir), db_url=shared_db)
    try:
        with serving(runtime) as url, chromium() as browser:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(f"{url}/?case={first['thread_id']}")
            chat = page.locator("#case-chat")
            chat.get_by_text(case.question).wait_for()  # replica 1's turn, reopened here
            expect(page.locator("#case-status")).to_contain_text(first["run_id"])
            asked = len(runtime.store.list_runs(thread_id=first["thread_id"]))
            page.locator(f"#verdict-{asked}").wait_for()  # every earlier turn is shown
            send(page, "Is it benign?", [])
            page.locator(f"#verdict-{asked + 1}").wait_for()
        runs = runtime.store.list_runs(thread_id=first["thread_id"])
        follow = next(r for r in runs if r.question == "Is it benign?")
        prompt = _attending_prompt(runtime.store, follow.id)
        assert json.dumps(case.question, ensure_ascii=False)[1:-1] in prompt
    finally:
        runtime.close()
    assert not (tmp_path / "replica-3" / "checkpoints.sqlite").exists()


def test_ask_case_refuses_an_unknown_case_and_a_case_without_images(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("MMEDAGENT_HOME", str(settings.home))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(settings.model))
    res = CliRunner().invoke(app, ["ask", "-q", "Is it malignant?"])
    assert res.exit_code == 2 and "--image" in res.output
    res = CliRunner().invoke(app, ["ask", "-q", "Is it malignant?", "--case", "nope"])
    assert res.exit_code == 2 and "no stored case 'nope'" in res.output


def test_db_upgrade_creates_and_current_checks_the_checkpoint_schema(postgres_server, monkeypatch):
    url = postgres_server.create_database()
    try:
        TrajectoryStore(url).close()  # the store's schema only, as before this version
        assert checkpoint_revision(url) is None
        monkeypatch.setenv("MMEDAGENT_DB_URL", url)
        runner = CliRunner()
        res = runner.invoke(app, ["db", "current"])
        assert res.exit_code == 1 and "checkpoints) at schema none" in res.output, res.output
        res = runner.invoke(app, ["db", "upgrade"])
        assert res.exit_code == 0 and f"at schema {checkpoint_head()}" in res.output, res.output
        assert runner.invoke(app, ["db", "current"]).exit_code == 0
        # A database whose checkpoint schema is behind is refused, with the command that fixes it.
        import psycopg

        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("DELETE FROM checkpoint_migrations WHERE v = %s", (checkpoint_head(),))
        with pytest.raises(DatabaseNotMigrated, match="mmedagent db upgrade"):
            open_checkpointer(url, Path("unused.sqlite"))
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
        assert checkpoint_revision(url) == checkpoint_head()
    finally:
        postgres_server.drop_database(url)


def test_replicas_starting_together_create_the_checkpoint_tables_once(postgres_server):
    url = postgres_server.create_database()
    try:
        TrajectoryStore(url).close()
        errors: list[BaseException] = []

        def start() -> None:
            try:
                open_checkpointer(url, Path("unused.sqlite")).close()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and checkpoint_revision(url) == checkpoint_head()
    finally:
        postgres_server.drop_database(url)

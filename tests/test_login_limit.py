"""Failed logins limited per client: the limiter on an injected clock, then the served app over HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from pydantic import SecretStr

from app.config import Settings, UISettings
from app.runtime import Runtime
from data.schema import ROLES
from tests.scripted import ScriptedBackend
from tests.ui_server import chromium, serving
from ui.login_limit import LoginLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock) -> LoginLimiter:
    return LoginLimiter(free_failures=5, first_lock_s=30, max_lock_s=100, forget_after_s=3600, clock=clock)


@pytest.mark.parametrize(
    ("failures", "lock"),
    [(1, 0), (4, 0), (5, 0), (6, 30), (7, 60), (8, 100), (12, 100)],  # doubles from the 6th, capped
)
def test_the_lock_out_starts_after_five_failures_and_doubles(failures, lock):
    clock = Clock()
    limits = limiter(clock)
    for _ in range(failures - 1):
        limits.failed("10.0.0.1")
        clock.now += limits.retry_after("10.0.0.1")  # each try waits out the lock before it
    assert limits.failed("10.0.0.1") == (failures, lock)
    assert limits.retry_after("10.0.0.1") == lock


def test_the_lock_runs_out_other_clients_are_untouched_and_success_resets():
    clock = Clock()
    limits = limiter(clock)
    for _ in range(6):
        limits.failed("10.0.0.1")
    assert limits.retry_after("10.0.0.1") == 30
    assert limits.retry_after("10.0.0.2") == 0  # per client
    clock.now += 29
    assert limits.retry_after("10.0.0.1") == 1
    clock.now += 1
    assert limits.retry_after("10.0.0.1") == 0
    assert limits.failed("10.0.0.1") == (7, 60)  # the next failure doubles the lock
    clock.now += 60
    limits.succeeded("10.0.0.1")
    assert limits.failed("10.0.0.1") == (1, 0)


def test_a_client_quiet_for_a_day_starts_again_from_zero():
    clock = Clock()
    limits = limiter(clock)
    for _ in range(5):
        limits.failed("10.0.0.1")
    clock.now += 3601
    assert limits.failed("10.0.0.1") == (1, 0)


@pytest.mark.parametrize(
    ("failures", "pending", "wait"),
    [
        (0, 4, 0),  # five attempts may be in flight at once ...
        (0, 5, 30),  # ... not six: their five failures would lock the sixth out
        (3, 1, 0),
        (3, 2, 30),  # three failures and two in flight use up the five free ones
        (5, 0, 0),
        (5, 1, 30),
        (6, 0, 0),  # after a lock-out has run out: one attempt at a time ...
        (6, 1, 60),  # ... refused for the lock its failure would start
        (7, 1, 100),
    ],
)
def test_attempts_in_flight_count_before_their_answer(failures, pending, wait):
    clock = Clock()
    limits = limiter(clock)
    for _ in range(failures):
        assert limits.admit("10.0.0.1") == 0
        limits.failed("10.0.0.1")
        clock.now += limits.retry_after("10.0.0.1")
    assert [limits.admit("10.0.0.1") for _ in range(pending)] == [0] * pending
    assert limits.admit("10.0.0.1") == wait
    assert limits.admit("10.0.0.2") == 0  # per client


def test_settled_attempts_free_their_place():
    clock = Clock()
    limits = limiter(clock)
    assert [limits.admit("10.0.0.1") for _ in range(6)] == [0] * 5 + [30]
    limits.abandoned("10.0.0.1")  # no verdict (an error): not counted, its place is free
    assert limits.admit("10.0.0.1") == 0
    limits.succeeded("10.0.0.1")  # the count restarts, the four others are still in flight
    assert [limits.admit("10.0.0.1") for _ in range(2)] == [0, 30]
    assert [limits.failed("10.0.0.1") for _ in range(5)] == [
        (i, 0) if i <= 5 else (i, 30) for i in range(1, 6)
    ]
    assert limits.admit("10.0.0.1") == 0  # five failures, none in flight: one more may try
    assert limits.failed("10.0.0.1") == (6, 30)
    assert limits.admit("10.0.0.1") == 30


def test_the_least_recently_seen_client_is_forgotten_beyond_the_maximum():
    clock = Clock()
    limits = LoginLimiter(free_failures=1, first_lock_s=30, max_clients=3, clock=clock)
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        limits.failed(client)
        limits.failed(client)
        assert limits.retry_after(client) == 30
    assert limits.admit("10.0.0.1") == 30  # a refused try counts as seen: 10.0.0.2 is now the oldest
    limits.failed("10.0.0.4")
    assert [limits.retry_after(f"10.0.0.{i}") for i in range(1, 5)] == [30, 0, 30, 0]
    assert limits.failed("10.0.0.2") == (1, 0)  # forgotten: it starts again from zero


def login(url: str, username: str, password: str) -> httpx.Response:
    """A login as Gradio's login page sends it: a multipart form."""
    return httpx.post(f"{url}/login", files={"username": (None, username), "password": (None, password)})


@contextmanager
def login_server(home: Path) -> Iterator[str]:
    """The app with a login (clinic / s3cret-pass), served on loopback; no question is asked."""
    ui = UISettings(username="clinic", password=SecretStr("s3cret-pass"))
    scripted = ScriptedBackend(lambda _: "")
    runtime = Runtime(Settings(home=home, ui=ui), backends=dict.fromkeys(ROLES, scripted))
    with closing(runtime), serving(runtime) as url:
        yield url


@pytest.mark.slow
def test_the_served_app_refuses_even_the_right_password_after_six_failures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ui.login_limit")
    with login_server(tmp_path / "home") as url:
        assert login(url, "clinic", "s3cret-pass").status_code == 200  # the login works ...
        wrong = [login(url, "clinic", f"guess-{i}").status_code for i in range(6)]
        assert wrong == [400] * 6
        refused = login(url, "clinic", "s3cret-pass")  # ... and the right password is now refused
        assert refused.status_code == 400 and "access-token" not in refused.headers.get("set-cookie", "")
        assert "Too many failed logins" in refused.json()["detail"]
        assert 0 < int(refused.headers["retry-after"]) <= 30
        page = httpx.get(f"{url}/gradio_api/login_check").json()["detail"]
        assert "refused for a while" in page["auth_message"]  # the login page states the rule
    lines = [r.getMessage() for r in caplog.records if r.name == "ui.login_limit"]
    assert any("'clinic' from 127.0.0.1 (6 in a row; locked out for 30 s)" in line for line in lines), lines
    assert any(line.startswith("login refused: user 'clinic' from 127.0.0.1") for line in lines), lines
    assert not any("s3cret-pass" in line or "guess-" in line for line in lines)
    assert not any("s3cret-pass" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@pytest.mark.browser
def test_the_login_page_refuses_a_locked_out_browser_and_states_the_rule(tmp_path):
    with login_server(tmp_path / "home") as url, chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        expect(page.get_by_text("refused for a while")).to_be_visible()  # the rule, before any try

        def log_in(password: str) -> None:
            page.get_by_label("username").fill("clinic")
            page.get_by_label("password").fill(password)
            with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
                page.get_by_role("button", name="Login").click()
            assert answer.value.status == 400

        for i in range(6):
            log_in(f"guess-{i}")
        log_in("s3cret-pass")  # the right password, refused
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        page.reload()
        expect(page.get_by_label("password")).to_be_visible()  # still the login page, not the app
        expect(page.locator("#case-input")).to_have_count(0)


async def concurrent_logins(url: str, passwords: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        form = [{"username": (None, "clinic"), "password": (None, p)} for p in passwords]
        return await asyncio.gather(*(client.post(f"{url}/login", files=f) for f in form))


@pytest.mark.slow
def test_parallel_wrong_logins_get_no_more_guesses_than_the_free_ones(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ui.login_limit")
    with login_server(tmp_path / "home") as url:
        answers = asyncio.run(concurrent_logins(url, [f"guess-{i}" for i in range(10)]))
        assert [a.status_code for a in answers] == [400] * 10
        refused = ["Too many failed logins" in a.json()["detail"] for a in answers]
        assert 5 <= sum(refused) < 10, [a.json() for a in answers]  # at most five reached Gradio
        failed = [r for r in caplog.records if r.getMessage().startswith("login failed")]
        assert len(failed) == 10 - sum(refused)
        assert login(url, "clinic", "s3cret-pass").status_code == 200  # fewer than six failed


@pytest.mark.slow
def test_an_oversized_login_form_is_refused_unread(tmp_path):
    padding = "x" * (64 * 1024)
    with login_server(tmp_path / "home") as url:
        form = {"username": (None, "clinic"), "password": (None, "s3cret-pass"), "pad": (None, padding)}
        sized = httpx.post(f"{url}/login", files=form)  # the right login, were it forwarded
        assert sized.status_code == 413 and "access-token" not in sized.headers.get("set-cookie", "")
        assert "larger than 65536 bytes" in sized.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts what arrives
            yield b"username=clinic&password=s3cret-pass&pad="
            for _ in range(17):
                yield b"x" * 4096

        form_type = {"content-type": "application/x-www-form-urlencoded"}
        streamed = httpx.post(f"{url}/login", content=chunks(), headers=form_type)
        assert streamed.status_code == 413 and "access-token" not in streamed.headers.get("set-cookie", "")
        small = {"username": (None, "clinic"), "password": (None, "s3cret-pass"), "pad": (None, "x" * 1000)}
        assert httpx.post(f"{url}/login", files=small).status_code == 200  # a normal form still logs in

"""Several model servers behind one role's ``base_url``: the shipped nginx config
(``docs/deploy/nginx-balancer.conf``) in front of two real ``transformers serve`` processes on the
tiny checkpoint (issue 30).

nginx runs with the shipped file, only its addresses replaced (``app.local_serving``), as an
unprivileged foreground process with a temp prefix. Cases run through the app's Runtime and its
OpenAI backend; one server is killed with SIGKILL mid-run and no case is lost.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from app.backends.openai import OpenAIBackend
from app.config import RoleSpec, Settings
from app.local_serving import (
    SHIPPED_CONFIG,
    BalancerUnavailable,
    NginxBalancer,
    TransformersServe,
    nginx_binary,
    render_balancer_config,
)
from app.runtime import CaseRequest, Runtime
from data.synthetic import generate_cases
from graph.protocol import ChatRequest, Sampling

TOKENS = {"triage": 6, "specialist": 10, "attending": 14}
N_CASES = 8
KILL_AFTER_STEPS = 8  # of N_CASES x 5


@pytest.fixture(scope="module")
def nginx() -> str:
    try:
        return nginx_binary()
    except BalancerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def servers(
    nginx: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[TransformersServe]]:
    logs = tmp_path_factory.mktemp("servers")
    started = [TransformersServe(tiny_model_dir, logs / f"server{i}.log") for i in range(2)]
    try:
        for server in started:
            server.start()
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.kill()


def _settings(home: Path, model_dir: Path, base_url: str) -> Settings:
    roles = {r: RoleSpec(backend="openai", base_url=base_url, max_new_tokens=n) for r, n in TOKENS.items()}
    return Settings(home=home, model=str(model_dir), **roles)  # type: ignore[arg-type]


def test_the_shipped_config_is_run_with_only_its_addresses_replaced(tmp_path: Path) -> None:
    shipped = SHIPPED_CONFIG.read_text()
    servers = ["127.0.0.1:9101", "127.0.0.1:9102", "10.0.0.7:8000"]
    rendered = render_balancer_config(shipped, "127.0.0.1:9100", servers)
    before, after = shipped.splitlines(), rendered.splitlines()
    kept = [line for line in before if not re.match(r"\s*(server \d|listen )", line)]
    assert [line for line in after if not re.match(r"\s*(server \d|listen )", line)] == kept
    params = re.findall(r"^\s*server \S+ (.*)$", shipped, re.M)
    assert params and len(set(params)) == 1, "the shipped servers share their parameters"
    assert re.findall(r"^\s*server (\S+) (.*)$", rendered, re.M) == [(s, params[0]) for s in servers]
    assert re.findall(r"^\s*listen (.*)$", rendered, re.M) == ["127.0.0.1:9100;"]
    for setting in ("least_conn;", "max_fails=", "fail_timeout=", "proxy_next_upstream error"):
        assert setting in rendered
    assert "non_idempotent" not in rendered.split("proxy_next_upstream error")[1].splitlines()[0]
    with pytest.raises(ValueError, match="upstream"):
        render_balancer_config("events {}\nhttp { server { listen 80; } }\n", "127.0.0.1:1", servers)
    with pytest.raises(ValueError, match="at least one"):
        render_balancer_config(shipped, "127.0.0.1:1", [])
    try:
        binary = nginx_binary()
    except BalancerUnavailable as exc:
        pytest.skip(str(exc))
    (tmp_path / "nginx.conf").write_text(rendered)
    checked = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr  # nginx itself accepts the rendered file


@pytest.mark.slow
def test_both_servers_answer_and_killing_one_loses_no_case(
    servers: list[TransformersServe], tiny_model_dir: Path, tmp_path: Path
) -> None:
    victim, survivor = servers
    cases = [
        CaseRequest.from_synthetic(c, gold=False, case_id=None) for c in generate_cases(N_CASES, seed=11)
    ]
    steps, lock, at_kill = [0], threading.Lock(), {}

    def on_event(event: dict) -> None:
        if event.get("event") != "step_finished":
            return
        with lock:
            steps[0] += 1
            if steps[0] == KILL_AFTER_STEPS:  # other cases' calls are in flight on both servers
                at_kill.update(victim=victim.answered(), survivor=survivor.answered())
                victim.kill()

    with NginxBalancer([s.address for s in servers]) as balancer:
        runtime = Runtime(_settings(tmp_path, tiny_model_dir, balancer.base_url))
        try:
            with ThreadPoolExecutor(4) as pool:
                results = list(pool.map(lambda c: runtime.ask(c, on_event=on_event), cases))
            stored = [runtime.store.get_run(r.run_id) for r in results]
            every_run = runtime.store.list_runs(limit=None)
        finally:
            runtime.close()
        log = balancer.access_log.read_text()
        attempts = balancer.upstream_counts()

    assert at_kill, "the kill never happened"
    assert at_kill["victim"] > 0 and at_kill["survivor"] > 0, at_kill  # both had answered
    assert victim.process is not None and victim.process.returncode == -9
    assert [r.status for r in results] == ["ok"] * N_CASES, [r.error for r in results]
    assert len(every_run) == N_CASES
    assert all(run is not None and run.status == "ok" and len(run.steps) == 5 for run in stored)
    # The survivor answered every call that the victim had not answered before it died.
    assert survivor.answered() == 5 * N_CASES - victim.answered(), (victim.answered(), survivor.answered())
    assert survivor.answered() > at_kill["survivor"]
    assert attempts[victim.address] >= at_kill["victim"] and attempts[survivor.address] == survivor.answered()
    # The calls in flight on the victim failed at nginx (502, not passed on: they were POSTs that had
    # reached it) and the backend's retries took them to the survivor.
    assert re.search(rf"upstream={re.escape(victim.address)} upstream_status=502", log), log[-3000:]


@pytest.mark.slow
def test_a_refused_connection_is_passed_to_a_live_server(
    servers: list[TransformersServe], tiny_model_dir: Path
) -> None:
    """A fresh nginx knows nothing of the dead server: the requests it hands there are refused
    before any byte is sent, and it passes them on itself (the client, without retries, sees none)."""
    dead, live = servers
    dead.kill()  # already dead when the kill test ran first
    request = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which?"}]}],
        images=[Image.new("RGB", (64, 64), (90, 30, 200))],
        sampling=Sampling(max_new_tokens=4),
    )
    with NginxBalancer([dead.address, live.address]) as balancer:
        backend = OpenAIBackend(balancer.base_url, str(tiny_model_dir), retries=0)
        try:
            completions = [backend.generate([request])[0] for _ in range(3)]
        finally:
            backend.close()
        log = balancer.access_log.read_text()
    assert all(c.completion_tokens > 0 for c in completions)
    assert f"upstream={dead.address}, {live.address} upstream_status=502, 200" in log, log

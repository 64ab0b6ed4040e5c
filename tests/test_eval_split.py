"""One evaluation split over several `mmedagent eval` processes on one database (issue 30).

Real processes, a real PostgreSQL server (and a SQLite file), and a real OpenAI-compatible HTTP
server that answers every case after a short delay (so a kill lands mid-eval), the same answer for
the same case (a hash of the request: the reports of two runs can be compared). The server holds
its first requests until every process has sent one, so all of them are running cases before any
case finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from data.schema import Run
from data.store import TrajectoryStore
from tests.loopback import LoopbackServer, QuietHandler

ROOT = Path(__file__).resolve().parents[1]
N_CASES = 30
DELAY_S = 0.2
LEASE_S = 4.0
VOLATILE = {"eval_id", "created_at", "run_id", "wall_s", "model_s"}


class SlowServer(LoopbackServer):
    """``/v1/chat/completions`` on loopback: after ``delay`` seconds, an option letter chosen by a
    hash of the request; the first request waits until ``together`` requests are in (or 120 s)."""

    def __init__(self, *, delay: float = DELAY_S, together: int = 1) -> None:
        self.requests = 0
        gate = threading.Barrier(together, timeout=120)
        opened = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.read_json()
                if not opened.is_set():
                    gate.wait()
                    opened.set()
                time.sleep(delay)
                server.requests += 1
                digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
                text = f"<think>looked</think><answer>{'ABCD'[digest[0] % 4]}</answer>"
                self.send_completion(body.get("model"), text, 3)

        super().__init__(Handler)


def _start(tmp_path: Path, db_url: str, server: SlowServer, eval_id: str, name: str) -> subprocess.Popen:
    """``mmedagent eval`` (single mode, synthetic cases) as a process of its own; output to files."""
    env = {
        **os.environ,
        "MMEDAGENT_HOME": str(tmp_path / "home"),
        "MMEDAGENT_DB_URL": db_url,
        "MMEDAGENT_MODEL": "slow-server",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **{f"MMEDAGENT_{r}__BACKEND": "openai" for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
        **{f"MMEDAGENT_{r}__BASE_URL": server.base_url for r in ("TRIAGE", "SPECIALIST", "ATTENDING")},
    }
    args = ["--benchmark", "synthetic", "--n", str(N_CASES), "--seed", "3", "--mode", "single"]
    args += ["--eval-id", eval_id, "--lease", str(LEASE_S), "--out", str(tmp_path / name)]
    log = tmp_path / f"{name}.log"
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "eval", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _finish(tmp_path: Path, proc: subprocess.Popen, name: str) -> dict:
    assert proc.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()
    return json.loads((tmp_path / name / "report.json").read_text())


def _stable(x: Any) -> Any:
    """A report without what legitimately differs between two runs of the same eval."""
    if isinstance(x, dict):
        return {k: _stable(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_stable(v) for v in x]
    return x


def _runs_per_case(store: TrajectoryStore, eval_id: str) -> Counter:
    """Successful runs per case (a killed process's run in flight stays too, ``interrupted``)."""
    with store.session() as s:
        rows = s.execute(
            select(Run.case_id, func.count())
            .where(Run.eval_id == eval_id, Run.status == "ok")
            .group_by(Run.case_id)
        ).all()
    return Counter(dict(rows))


def _pid(owner: str | None) -> int | None:
    return int(owner.split(":")[1]) if owner else None  # host:pid[:start]:nonce


def _wait_until(cond, procs, tmp_path: Path, names, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        for p, name in zip(procs, names, strict=True):
            assert p.poll() is None, (tmp_path / f"{name}.log").read_text()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


@pytest.mark.slow
def test_three_processes_one_killed_run_every_case_once(postgres_server, tmp_path):
    db_url = postgres_server.create_database()
    store = TrajectoryStore(db_url)  # the schema, before the processes start
    try:
        with SlowServer(together=3) as server:
            names = ["p0", "p1", "p2"]
            procs = [_start(tmp_path, db_url, server, "split", name) for name in names]

            def done_by_each() -> bool:
                done = Counter(_pid(c.owner) for c in store.eval_claims("split") if c.done)
                return all(done[p.pid] >= 2 for p in procs)

            _wait_until(done_by_each, procs, tmp_path, names)
            victim, survivors = procs[0], procs[1:]
            os.kill(victim.pid, signal.SIGKILL)
            assert victim.wait(timeout=30) == -signal.SIGKILL
            claims = store.eval_claims("split")
            held = {c.case_id for c in claims if _pid(c.owner) == victim.pid and not c.done}
            assert held, "the killed process held no case"  # its window: one running, one queued
            assert sum(not c.done for c in claims) > len(held), "the eval was over before the kill"
            reports = [_finish(tmp_path, p, n) for p, n in zip(survivors, names[1:], strict=True)]

        claims = {c.case_id: c for c in store.eval_claims("split")}
        assert len(claims) == N_CASES and all(c.done for c in claims.values())
        for case_id in held:  # taken over once the killed process's lease lapsed
            assert _pid(claims[case_id].owner) in {p.pid for p in survivors}
            assert claims[case_id].attempts == 2
        runs = _runs_per_case(store, "split")
        assert len(runs) == N_CASES and set(runs.values()) == {1}, runs
        store.mark_interrupted()  # (the survivors' runtimes mark it too, at their lease renewals)
        cut = [r for r in store.list_runs(limit=None, eval_id="split") if r.status != "ok"]
        assert all(r.status == "interrupted" and _pid(r.owner) == victim.pid for r in cut), cut
        assert {r.case_id for r in cut} <= held
        assert reports[0]["cases"]["run"] == N_CASES and _stable(reports[0]) == _stable(reports[1])

        with SlowServer() as server:  # the reference: one process, a fresh eval id
            single = _finish(tmp_path, _start(tmp_path, db_url, server, "single", "one"), "one")
        assert _runs_per_case(store, "single") == Counter(dict.fromkeys(runs, 1))
        assert 0 < single["accuracy"]["correct"] < N_CASES  # a report with something to compare
        assert _stable(reports[0]) == _stable(single)
    finally:
        store.close()
        postgres_server.drop_database(db_url)


@pytest.mark.slow
def test_two_processes_on_sqlite_share_the_cases(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TrajectoryStore(db_url)
    try:
        with SlowServer(delay=0.1, together=2) as server:
            names = ["a", "b"]
            procs = [_start(tmp_path, db_url, server, "one-host", name) for name in names]
            reports = [_finish(tmp_path, p, n) for p, n in zip(procs, names, strict=True)]
            assert server.requests == N_CASES  # no case was asked twice
        runs = _runs_per_case(store, "one-host")
        assert len(runs) == N_CASES and set(runs.values()) == {1}, runs
        ran = Counter(_pid(c.owner) for c in store.eval_claims("one-host"))
        assert set(ran) == {p.pid for p in procs}, ran  # both took part
        assert _stable(reports[0]) == _stable(reports[1]) and reports[0]["cases"]["run"] == N_CASES
    finally:
        store.close()


def test_claims_lease_release_and_reopen(store):
    """The claim table alone, on SQLite and PostgreSQL: batches in order, no case twice, a lapsed
    lease taken over, renewal, giving back, and a new start reopening what has no successful run."""
    assert store.open_eval_cases("e", ["a", "b", "c"]) == set()
    assert [c for c, _ in store.claim_eval_cases("e", "o1", n=2, lease_s=60, below=3)] == ["a", "b"]
    assert store.claim_eval_cases("e", "o2", n=5, lease_s=60, below=3) == [("c", 2)]
    assert store.claim_eval_cases("e", "o2", n=5, lease_s=60, below=3) == []
    assert store.renew_eval_claims("o1", 60) == 2

    store.open_eval_cases("f", ["x"])
    assert store.claim_eval_cases("f", "o1", n=1, lease_s=0.3, below=1) == [("x", 0)]
    assert store.claim_eval_cases("f", "o2", n=1, lease_s=60, below=1) == []
    time.sleep(0.5)  # o1 stopped renewing: its lease lapses and o2 takes the case
    assert store.claim_eval_cases("f", "o2", n=1, lease_s=60, below=1) == [("x", 0)]
    assert store.finish_eval_case("f", "x", "o1") is False  # o1 had lost it
    assert store.open_eval_case_count("f", below=1) == 0

    assert store.finish_eval_case("e", "a", "o1") is True
    assert store.finish_eval_case("e", "c", "o2", note="bad image") is True
    assert store.release_eval_claims("o1") == 1  # b, unfinished, goes back at once
    assert store.claim_eval_cases("e", "o3", n=5, lease_s=60, below=3) == [("b", 1)]
    assert store.open_eval_case_count("e", below=3) == 1
    claims = {c.case_id: c for c in store.eval_claims("e")}
    assert (claims["c"].note, claims["b"].owner, claims["b"].attempts) == ("bad image", "o3", 2)
    # a new start: no case has a successful run, so the done ones (a, c) are open again
    assert store.open_eval_cases("e", ["a", "b", "c"]) == set()
    assert store.open_eval_case_count("e", below=3) == 3
    assert store.eval_claims("e")[2].note is None

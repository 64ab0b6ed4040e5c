"""Concurrent writers (UI + eval + ...) on one database: 8 threads x 50 runs, none lost.

The threads start together on a brand-new database (so they also race to create its schema), share
images (so they race to insert the same content-addressed blob) and each writes 5 steps + rewards
per run. SQLite (WAL, busy timeout, immediate write transactions, retry) and PostgreSQL.

Then several processes (spawned, each with threads) on SQLite, round after round on a brand-new file:
their first connections switch the file to WAL together, which once let ``database is locked`` escape
every busy timeout and retry (data.store._sqlite_wal).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from data.schema import ImageBlob, Reward, Run, RunImage, Step
from data.store import ImageIn, RewardIn, RunIn, TrajectoryStore, make_engine

THREADS, RUNS_PER_THREAD, STEPS_PER_RUN = 8, 50, 5
SHARED = [hashlib.sha256(b"shared %d" % i).hexdigest() for i in range(3)]


def _image(sha: str, data: bytes) -> ImageIn:
    return ImageIn(sha, "image/png", 4, 4, data)


def _step(i: int) -> dict:
    role = ("triage", "specialist", "specialist", "specialist", "attending")[i]
    return {
        "node": role,
        "role": role,
        "specialty": "Radiologist" if role == "specialist" else None,
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
        "image_refs": [],
        "completion": "<think>t</think><answer>A</answer>",
        "parsed": {"answer": "A"},
        "parse_status": "ok",
        "token_ids": [1, 2],
        "logprobs": [-0.5, -0.1],
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "latency_s": 0.0,
        "model_id": "m",
    }


def _save(store: TrajectoryStore, tag: str, t: int, r: int) -> None:
    """Run ``{tag}r{r}``: a shared image, its own image, 5 steps and a reward per step."""
    own = b"%s run %d" % (tag.encode(), r)
    images = [_image(SHARED[(t + r) % 3], b"shared"), _image(hashlib.sha256(own).hexdigest(), own)]
    run = RunIn(
        id=f"{tag}r{r}",
        thread_id=tag,
        question="q",
        status="ok",
        image_shas=[i.sha256 for i in images],
        gold_answer="A",
    )
    rewards = [RewardIn(step=i, role=_step(i)["role"], kind="format", value=0.5) for i in range(5)]
    store.save_run(run, [_step(i) for i in range(STEPS_PER_RUN)], images, rewards)


def _writer(
    url: str, shared: TrajectoryStore | None, t: int, barrier: threading.Barrier, errors: list
) -> None:
    try:
        barrier.wait()
        store = shared or TrajectoryStore(url)
        for r in range(RUNS_PER_THREAD):
            _save(store, f"t{t}", t, r)
        if shared is None:
            store.close()
    except Exception as exc:  # reported by the test: a lost run must fail it, with the reason
        errors.append(f"thread {t}: {type(exc).__name__}: {exc}")


def _assert_all_runs(store: TrajectoryStore, ids: set[str]) -> None:
    n = len(ids)
    with store.session() as s:
        assert set(s.scalars(select(Run.id))) == ids
        assert s.scalar(select(func.count()).select_from(Step)) == n * STEPS_PER_RUN
        assert s.scalar(select(func.count()).select_from(Reward)) == n * STEPS_PER_RUN
        assert s.scalar(select(func.count()).select_from(RunImage)) == n * 2
        # every shared image stored once, every run's own image once
        assert s.scalar(select(func.count()).select_from(ImageBlob)) == n + len(SHARED)


@pytest.mark.slow
@pytest.mark.parametrize("own_store", [True, False], ids=["store-per-thread", "shared-store"])
def test_concurrent_writers_lose_no_run(db_url, own_store):
    shared = None if own_store else TrajectoryStore(db_url)
    barrier, errors = threading.Barrier(THREADS), []
    threads = [
        threading.Thread(target=_writer, args=(db_url, shared, t, barrier, errors)) for t in range(THREADS)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not errors, errors[:3]
    store = shared or TrajectoryStore(db_url)
    _assert_all_runs(store, {f"t{t}r{r}" for t in range(THREADS) for r in range(RUNS_PER_THREAD)})
    store.close()


# Several processes, each with threads, all released together on a brand-new SQLite file, round after
# round. Before data.store._sqlite_wal about 1 round in 10 of CONNECT_ROUNDS failed here (2 cores).
PROCESSES = 4
CONNECT_THREADS, CONNECT_ROUNDS = 4, 100
STORE_THREADS, STORE_ROUNDS, RUNS_PER_STORE = 3, 10, 2


def _first_connects(urls: list[str], barrier: Any, p: int, t: int, errors: list[str]) -> None:
    """Each round: connect (data.store's engine and connect hook) to that round's new file."""
    for k, url in enumerate(urls):
        barrier.wait(timeout=120)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                if mode != "wal":
                    errors.append(f"round {k} process {p} thread {t}: journal_mode {mode}")
        except Exception as exc:
            errors.append(f"round {k} process {p} thread {t}: {type(exc).__name__}: {exc}")
        finally:
            engine.dispose()


def _store_writers(urls: list[str], barrier: Any, p: int, t: int, errors: list[str]) -> None:
    """Each round: open a TrajectoryStore on that round's new file (its schema too) and save runs."""
    for k, url in enumerate(urls):
        barrier.wait(timeout=120)
        try:
            store = TrajectoryStore(url)
            for r in range(RUNS_PER_STORE):
                _save(store, f"p{p}t{t}", t, r)
            store.close()
        except Exception as exc:
            errors.append(f"round {k} process {p} thread {t}: {type(exc).__name__}: {exc}")


def _process(target: Callable, urls: list[str], barrier: Any, results: Any, p: int, threads: int) -> None:
    errors: list[str] = []
    pool = [threading.Thread(target=target, args=(urls, barrier, p, t, errors)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    results.put(errors)


def _in_processes(target: Callable, urls: list[str], threads: int) -> list[str]:
    """Run ``target`` in PROCESSES spawned processes x ``threads`` threads; their errors."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES * threads), ctx.Queue()
    procs = [
        ctx.Process(target=_process, args=(target, urls, barrier, results, p, threads))
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    errors: list[str] = []
    try:
        for _ in procs:
            errors += results.get(timeout=240)
    except queue.Empty:
        errors.append(f"a process gave no result (exit codes {[proc.exitcode for proc in procs]})")
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return errors


def _new_files(tmp_path: Path, rounds: int) -> list[str]:
    return [f"sqlite:///{tmp_path / f'round{k}' / 'store.db'}" for k in range(rounds)]


@pytest.mark.slow
def test_processes_connecting_to_a_new_sqlite_file_together(tmp_path):
    """All first connections to a new file succeed, and each finds it in WAL."""
    errors = _in_processes(_first_connects, _new_files(tmp_path, CONNECT_ROUNDS), CONNECT_THREADS)
    assert not errors, f"{len(errors)} failed connects: {errors[:3]}"


@pytest.mark.slow
def test_processes_writing_to_a_new_sqlite_file_lose_no_run(tmp_path):
    urls = _new_files(tmp_path, STORE_ROUNDS)
    errors = _in_processes(_store_writers, urls, STORE_THREADS)
    assert not errors, f"{len(errors)} failed writers: {errors[:3]}"
    tags = [f"p{p}t{t}" for p in range(PROCESSES) for t in range(STORE_THREADS)]
    for url in urls:
        store = TrajectoryStore(url)
        _assert_all_runs(store, {f"{tag}r{r}" for tag in tags for r in range(RUNS_PER_STORE)})
        store.close()

"""Concurrent writers (UI + eval + ...) on one database: 8 threads x 50 runs, none lost.

The threads start together on a brand-new database (so they also race to create its schema), share
images (so they race to insert the same content-addressed blob) and each writes 5 steps + rewards
per run. SQLite (WAL, busy timeout, immediate write transactions, retry) and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import threading

import pytest
from sqlalchemy import func, select

from data.schema import ImageBlob, Reward, Run, RunImage, Step
from data.store import ImageIn, RewardIn, RunIn, TrajectoryStore

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


def _writer(
    url: str, shared: TrajectoryStore | None, t: int, barrier: threading.Barrier, errors: list
) -> None:
    try:
        barrier.wait()
        store = shared or TrajectoryStore(url)
        for r in range(RUNS_PER_THREAD):
            own = b"thread %d run %d" % (t, r)
            images = [_image(SHARED[(t + r) % 3], b"shared"), _image(hashlib.sha256(own).hexdigest(), own)]
            run = RunIn(
                id=f"t{t}r{r}",
                thread_id=f"t{t}",
                question="q",
                status="ok",
                image_shas=[i.sha256 for i in images],
                gold_answer="A",
            )
            rewards = [RewardIn(step=i, role=_step(i)["role"], kind="format", value=0.5) for i in range(5)]
            store.save_run(run, [_step(i) for i in range(STEPS_PER_RUN)], images, rewards)
        if shared is None:
            store.close()
    except Exception as exc:  # reported by the test: a lost run must fail it, with the reason
        errors.append(f"thread {t}: {type(exc).__name__}: {exc}")


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
    n = THREADS * RUNS_PER_THREAD
    with store.session() as s:
        ids = set(s.scalars(select(Run.id)))
        assert ids == {f"t{t}r{r}" for t in range(THREADS) for r in range(RUNS_PER_THREAD)}
        assert s.scalar(select(func.count()).select_from(Step)) == n * STEPS_PER_RUN
        assert s.scalar(select(func.count()).select_from(Reward)) == n * STEPS_PER_RUN
        assert s.scalar(select(func.count()).select_from(RunImage)) == n * 2
        # every shared image stored once, every run's own image once
        assert s.scalar(select(func.count()).select_from(ImageBlob)) == n + len(SHARED)
    store.close()

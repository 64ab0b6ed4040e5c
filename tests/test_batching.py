"""Batched fan-out and the micro-batcher: fewer model.generate calls, the same greedy results.

Real TransformersBackend on the tiny checkpoint, real Runtime (LangGraph, SQLite) where a case runs.
Batching windows are generous here (hundreds of ms) so that merging does not depend on how loaded the
machine is; what is asserted is who gets which result and how many model calls there were.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.backends.batcher import MicroBatcher, batching_session
from app.backends.local import TransformersBackend
from app.config import RoleSpec
from app.runtime import CaseRequest
from data.schema import ROLES
from data.synthetic import generate_cases
from graph.protocol import BackendError, ChatRequest, Completion, Sampling

SHORT = {
    "triage": RoleSpec(max_new_tokens=6),
    "specialist": RoleSpec(max_new_tokens=10),
    "attending": RoleSpec(max_new_tokens=14),
}


def _request(text: str, shade: int, sampling: Sampling) -> ChatRequest:
    image = Image.new("RGB", (56 + shade % 40, 56), (shade, 255 - shade, 90))
    return ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
        images=[image],
        sampling=sampling,
    )


def _cases(n: int, seed: int) -> list[CaseRequest]:
    return [CaseRequest.from_synthetic(c, gold=False, case_id=None) for c in generate_cases(n, seed=seed)]


def _in_threads(fn: Callable[[int], Any], n: int) -> list[Any]:
    """Run ``fn(i)`` for i < n in n threads released together; results (or exceptions) by index."""
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def _fingerprint(steps: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(
        (s["node"], s.get("specialty") or "", s["completion"], tuple(s["token_ids"]), s["prompt_tokens"])
        for s in steps
    )


@pytest.fixture
def backend(tiny_model_dir: Path) -> TransformersBackend:
    made = TransformersBackend(str(tiny_model_dir), batch_gap_s=0.3, batch_wait_s=2.0)
    yield made
    made.close()


def test_fanout_is_one_model_call_with_the_sequential_results(
    make_runtime, backend: TransformersBackend, tiny_model_dir: Path
) -> None:
    (case,) = _cases(1, seed=3)
    batched = make_runtime(backends=dict.fromkeys(ROLES, backend), **SHORT).ask(case)
    assert batched.status == "ok", batched.error
    # triage, the 3 specialists together, attending.
    assert backend.model_calls == 3
    specialists = [s for s in batched.steps if s["node"] == "specialist"]
    assert len(specialists) == 3 and len({s["latency_s"] for s in specialists}) == 1

    one_by_one = TransformersBackend(str(tiny_model_dir), max_batch=1)
    sequential = make_runtime(backends=dict.fromkeys(ROLES, one_by_one), **SHORT).ask(case)
    one_by_one.close()
    assert one_by_one.model_calls == 5
    assert _fingerprint(batched.steps) == _fingerprint(sequential.steps)
    for b, s in zip(
        sorted(batched.steps, key=lambda s: (s["node"], s.get("specialty") or "")),
        sorted(sequential.steps, key=lambda s: (s["node"], s.get("specialty") or "")),
        strict=True,
    ):
        assert b["logprobs"] == pytest.approx(s["logprobs"], abs=1e-4)
    assert batched.answer == sequential.answer


@pytest.mark.slow
def test_sixteen_concurrent_callers_each_get_their_own_result(backend: TransformersBackend) -> None:
    requests = [
        _request(f"Caller {i}: which specialist for this image?", 13 * i, Sampling(max_new_tokens=4 + i % 5))
        for i in range(16)
    ]
    alone = [backend.generate([r])[0] for r in requests]
    assert len({tuple(c.token_ids or []) for c in alone}) > 1, "the callers must expect different answers"
    before = backend.model_calls

    results = _in_threads(lambda i: backend.generate([requests[i]]), 16)

    for i, result in enumerate(results):
        assert not isinstance(result, Exception), result
        (completion,) = result
        assert completion.token_ids == alone[i].token_ids, f"caller {i} got another caller's result"
        assert completion.text == alone[i].text
        assert completion.completion_tokens == alone[i].completion_tokens
        assert completion.prompt_tokens == alone[i].prompt_tokens
    assert backend.model_calls - before < 16, "concurrent callers were not batched"


def test_seeded_requests_are_not_batched_across_callers(backend: TransformersBackend) -> None:
    # Rows of one sampled batch draw differently, so merging callers would change their samples.
    seeded = _request("Which specialist?", 40, Sampling(max_new_tokens=8, temperature=1.0, seed=11))
    alone = backend.generate([seeded])[0].token_ids
    results = _in_threads(lambda _: backend.generate([seeded]), 4)
    assert [r[0].token_ids for r in results] == [alone] * 4


def test_one_callers_bad_request_fails_only_that_caller(backend: TransformersBackend) -> None:
    good = [_request(f"Case {i}", 30 * i, Sampling(max_new_tokens=5)) for i in range(3)]
    # A 1000x2 image passes our checks but the Qwen image processor refuses its aspect ratio, which
    # fails the whole batch it is in.
    bad = ChatRequest(
        messages=good[0].messages, images=[Image.new("RGB", (1000, 2))], sampling=Sampling(max_new_tokens=5)
    )
    with pytest.raises(BackendError):
        backend.generate([bad])
    expected = [backend.generate([r])[0].token_ids for r in good]

    results = _in_threads(lambda i: backend.generate([good[i] if i < 3 else bad]), 4)

    assert isinstance(results[3], BackendError)
    assert [r[0].token_ids for r in results[:3]] == expected


def test_a_failed_batch_fails_each_of_its_callers_and_the_batcher_recovers() -> None:
    broken = threading.Event()
    broken.set()
    calls: list[int] = []

    def run(items: list[str]) -> list[Completion]:
        calls.append(len(items))
        if broken.is_set():
            raise RuntimeError("CUDA out of memory")
        return [Completion(text=item.upper(), model_id="upper") for item in items]

    batcher: MicroBatcher[str] = MicroBatcher(run, key=lambda _i, _c: 0, max_wait_s=2.0, gap_s=0.3)
    results = _in_threads(lambda i: batcher.submit([f"caller {i}"]), 6)

    assert all(isinstance(r, BackendError) and "CUDA out of memory" in str(r) for r in results)
    assert len({id(r) for r in results}) == 6, "each caller raises its own exception"
    broken.clear()
    assert [c.text for c in batcher.submit(["again", "fine"])] == ["AGAIN", "FINE"]
    batcher.close()
    with pytest.raises(BackendError, match="closed"):
        batcher.submit(["late"])


def test_concurrent_cases_share_batches_and_match_sequential_runs(
    make_runtime, backend: TransformersBackend, tiny_model_dir: Path
) -> None:
    cases = _cases(4, seed=5)
    runtime = make_runtime(backends=dict.fromkeys(ROLES, backend), **SHORT)

    results = _in_threads(lambda i: runtime.ask(cases[i]), 4)

    assert all(not isinstance(r, Exception) and r.status == "ok" for r in results), results
    assert backend.model_calls < 4 * 3, "the cases' calls were not batched together"
    stored = {r.run_id: len(runtime.store.get_run(r.run_id).steps) for r in results}
    assert stored == {r.run_id: 5 for r in results}

    one_by_one = TransformersBackend(str(tiny_model_dir), max_batch=1)
    alone = make_runtime(backends=dict.fromkeys(ROLES, one_by_one), **SHORT)
    for case, result in zip(cases, results, strict=True):
        assert _fingerprint(result.steps) == _fingerprint(alone.ask(case).steps)
    one_by_one.close()


def test_a_bug_outside_run_fails_its_callers_and_the_worker_goes_on() -> None:
    def key(item: str, _caller: int) -> int:
        if item == "unhashable":
            raise TypeError("cannot group this request")
        return 0

    def run(items: list[str]) -> list[Completion]:
        return [Completion(text=item.upper(), model_id="upper") for item in items]

    batcher: MicroBatcher[str] = MicroBatcher(run, key=key, max_wait_s=0.01, gap_s=0.0)
    with pytest.raises(BackendError, match="cannot group this request"):
        batcher.submit(["unhashable"])
    assert [c.text for c in batcher.submit(["fine"])] == ["FINE"]
    batcher.close()


def _upper(calls: list[int]) -> Callable[[list[str]], list[Completion]]:
    def run(items: list[str]) -> list[Completion]:
        calls.append(len(items))
        return [Completion(text=item.upper(), model_id="upper") for item in items]

    return run


def test_cases_started_together_share_their_first_batch_though_they_reach_it_apart() -> None:
    # Each case's preprocessing takes a different time; the first to arrive must not run alone
    # once the gap passes: the others are active sessions that have not called a model yet.
    calls: list[int] = []
    batcher: MicroBatcher[str] = MicroBatcher(
        _upper(calls), key=lambda _i, _c: 0, max_wait_s=5.0, gap_s=0.005
    )
    barrier = threading.Barrier(4)

    def case(i: int) -> list[Completion]:
        with batching_session():
            barrier.wait()
            time.sleep(0.03 * i)
            return batcher.submit([f"case {i}"])

    results = _in_threads(case, 4)
    batcher.close()
    assert [r[0].text for r in results] == [f"CASE {i}" for i in range(4)]
    assert calls == [4]


def test_a_session_that_never_calls_holds_a_batch_no_longer_than_max_wait() -> None:
    calls: list[int] = []
    batcher: MicroBatcher[str] = MicroBatcher(
        _upper(calls), key=lambda _i, _c: 0, max_wait_s=0.2, gap_s=0.005
    )
    started, release = threading.Event(), threading.Event()

    def idle() -> None:
        with batching_session():
            started.set()
            release.wait(timeout=60)

    idler = threading.Thread(target=idle)
    idler.start()
    started.wait(timeout=60)
    try:
        with batching_session():
            (done,) = batcher.submit(["busy"])
        assert idler.is_alive()  # answered while the idle session was still active
    finally:
        release.set()
        idler.join(timeout=60)
        batcher.close()
    assert done.text == "BUSY" and calls == [1]

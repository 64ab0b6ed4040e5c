"""Micro-batching: the requests of concurrent callers reach the model together, in few calls.

Callers (the parallel specialist nodes of one case, the nodes of other cases running in other
threads) call ``submit`` and block. One worker thread gathers what arrives and runs it as one batch
when any of these holds:

- ``max_batch`` requests are waiting;
- no request arrived for ``gap_s`` and every active *session* this batcher expects has a request
  waiting (a session is one case run, see ``batching_session``; callers outside sessions need only
  the gap). A batcher expects the sessions it has served, and sessions that have not called any
  batcher yet: cases started together begin together rather than splitting their first batch by a
  few ms of preprocessing, and once out of step (their calls differ in length) they would stay
  so. The gap lets the parallel siblings of a fan-out, which arrive within a few ms, join;
- ``max_wait_s`` passed since the first request arrived or the model freed up (whichever is later):
  the bound on waiting for a session that is busy elsewhere.

So one case alone waits ``gap_s`` per model call, while concurrent cases, which reach each step a few
ms apart, stay in step and share batches. Compatible requests (equal ``key``) share one call to
``run``; each caller gets its own completions, in its order, or a ``BackendError`` when its requests
failed (a failed call shared by several callers is retried once per caller, so one caller's bad
request fails that caller only).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from graph.protocol import BackendError, Completion

logger = logging.getLogger(__name__)

Item = TypeVar("Item")  # what a caller submits: a ChatRequest, or a (ChatRequest, adapter) pair


class _Session:
    """One case run, as the batchers see it: has it called any batcher yet?"""

    __slots__ = ("called",)

    def __init__(self) -> None:
        self.called = False


_SESSION: ContextVar[_Session | None] = ContextVar("mmedagent_batching_session", default=None)
_ACTIVE: set[_Session] = set()
_ACTIVE_LOCK = threading.Lock()


@contextmanager
def batching_session() -> Iterator[None]:
    """Mark the model calls made inside as one client of the batchers (one case run).

    Calls from this thread, and from threads that copy its context (LangGraph runs nodes that way),
    belong to the session. While it is active a batcher that has served it expects more from it, and
    until it first calls a batcher every batcher expects it: a batch waits for it (up to
    ``max_wait_s``) unless it already has a request waiting.
    """
    token = _Session()
    with _ACTIVE_LOCK:
        _ACTIVE.add(token)
    reset = _SESSION.set(token)
    try:
        yield
    finally:
        _SESSION.reset(reset)
        with _ACTIVE_LOCK:
            _ACTIVE.discard(token)


@dataclass(eq=False)
class _Job(Generic[Item]):
    """One ``submit`` call: its requests, their completions as they arrive, and how it ended."""

    caller: int
    requests: list[Item]
    arrived: float
    session: _Session | None
    results: list[Completion | None] = field(init=False)
    remaining: int = field(init=False)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.requests)
        self.remaining = len(self.requests)

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class MicroBatcher(Generic[Item]):
    """Merges concurrent ``submit`` calls into batched calls of ``run`` on one worker thread.

    ``run`` gets a list of requests with equal ``key`` (at most ``max_batch``) and returns one
    completion per request, in order. ``key(request, caller)`` gets a number unique to the ``submit``
    call: a key that includes it keeps the request out of other callers' batches (seeded sampling,
    whose draws depend on the batch). The worker thread starts on demand and exits after
    ``idle_exit_s`` without work, so an unused batcher holds no thread.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], list[Completion]],
        *,
        key: Callable[[Item, int], Hashable],
        max_wait_s: float = 0.05,
        gap_s: float = 0.005,
        max_batch: int = 32,
        name: str = "batcher",
        idle_exit_s: float = 10.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 0 <= gap_s <= max_wait_s:
            raise ValueError(f"need 0 <= gap_s <= max_wait_s, got {gap_s} and {max_wait_s}")
        self._run, self._key = run, key
        self.max_wait_s, self.gap_s, self.max_batch, self.name = max_wait_s, gap_s, max_batch, name
        self._idle_exit_s = idle_exit_s
        self._cond = threading.Condition()
        self._pending: deque[_Job[Item]] = deque()
        self._pending_requests = 0
        self._callers = 0
        self._worker: threading.Thread | None = None
        self._closed = False
        self._free_since = 0.0  # when the last batch finished
        self._last_arrival = 0.0
        self._served: set[_Session] = set()  # sessions that submitted here

    def submit(self, requests: Sequence[Item]) -> list[Completion]:
        """Complete ``requests`` (in order) together with whatever other callers submit meanwhile."""
        if not requests:
            return []
        with self._cond:
            if self._closed:
                raise BackendError(f"{self.name} is closed")
            self._callers += 1
            job = _Job(self._callers, list(requests), time.perf_counter(), _SESSION.get())
            if job.session is not None:
                job.session.called = True
                self._served.add(job.session)
            self._last_arrival = job.arrived
            self._pending.append(job)
            self._pending_requests += len(job.requests)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name=f"{self.name}-batcher", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            # A fresh exception per caller: one object raised in several threads would share a traceback.
            raise BackendError(str(job.error)) from job.error
        return [c for c in job.results if c is not None]

    def close(self) -> None:
        """Refuse new work, fail what is still queued, let the worker finish its current batch."""
        with self._cond:
            self._closed = True
            while self._pending:
                self._pending.popleft().fail(BackendError(f"{self.name} was closed before running this"))
            self._pending_requests = 0
            self._cond.notify_all()

    def _work(self) -> None:
        try:
            while (jobs := self._next_jobs()) is not None:
                try:
                    self._process(jobs)
                except BaseException as exc:  # a bug outside ``run``: never leave a caller waiting
                    logger.exception("%s: batch worker failed", self.name)
                    for job in jobs:
                        job.fail(BackendError(f"{self.name}: batching failed: {type(exc).__name__}: {exc}"))
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._free_since = time.perf_counter()
        finally:
            with self._cond:
                if self._worker is threading.current_thread():  # died: the next submit starts another
                    self._worker = None

    def _next_jobs(self) -> list[_Job[Item]] | None:
        """Block until there is work, gather companions (see the module doc), take one batch's worth.

        Returns None (and retires the worker) when closed or idle for ``idle_exit_s``.
        """
        with self._cond:
            while not self._pending:
                notified = not self._closed and self._cond.wait(timeout=self._idle_exit_s)
                if not notified and not self._pending:
                    self._worker = None
                    return None
            # The window opens when the first request arrives or the model frees up, whichever is
            # later: callers just handed a result submit their next request a few ms later, and
            # waiting for them (rather than running the backlog alone) keeps concurrent cases in
            # step, so their requests keep sharing batches.
            deadline = max(self._pending[0].arrived, self._free_since) + self.max_wait_s
            while self._pending_requests < self.max_batch and not self._closed:
                now = time.perf_counter()
                quiet_at = self._last_arrival + self.gap_s
                if now >= deadline or (now >= quiet_at and self._sessions_all_waiting()):
                    break
                # A session ending does not notify: re-check every gap_s.
                wake = quiet_at if now < quiet_at else now + max(self.gap_s, 0.001)
                self._cond.wait(timeout=min(deadline, wake) - now)
            jobs: list[_Job[Item]] = []
            taken = 0
            # Whole jobs, first come first served; a job larger than max_batch goes alone (in chunks).
            while self._pending and (not jobs or taken + len(self._pending[0].requests) <= self.max_batch):
                job = self._pending.popleft()
                jobs.append(job)
                taken += len(job.requests)
            self._pending_requests -= taken
            return jobs

    def _sessions_all_waiting(self) -> bool:
        """Whether every session this batcher expects (see the module doc) has a request waiting."""
        with _ACTIVE_LOCK:
            self._served &= _ACTIVE
            expected = self._served | {s for s in _ACTIVE if not s.called}
        return expected <= {job.session for job in self._pending}

    def _process(self, jobs: list[_Job[Item]]) -> None:
        groups: dict[Hashable, list[tuple[_Job[Item], int]]] = {}
        for job in jobs:
            for index, request in enumerate(job.requests):
                groups.setdefault(self._key(request, job.caller), []).append((job, index))
        for members in groups.values():
            for start in range(0, len(members), self.max_batch):
                chunk = [(job, i) for job, i in members[start : start + self.max_batch] if job.error is None]
                if chunk:
                    self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[tuple[_Job[Item], int]], *, isolate: bool = True) -> None:
        try:
            completions = self._run([job.requests[i] for job, i in chunk])
            if len(completions) != len(chunk):
                raise BackendError(f"{len(completions)} completions for {len(chunk)} requests")
        except Exception as exc:
            error = exc if isinstance(exc, BackendError) else BackendError(f"{type(exc).__name__}: {exc}")
            callers = list(dict.fromkeys(job for job, _ in chunk))
            if isolate and len(callers) > 1:
                # One caller's bad request must not fail the others: each caller's part alone, once.
                logger.info(
                    "%s: a batch of %d callers failed (%s); retrying each alone",
                    self.name,
                    len(callers),
                    error,
                )
                for caller in callers:
                    self._run_chunk([(job, i) for job, i in chunk if job is caller], isolate=False)
                return
            logger.warning("%s: a batch of %d failed: %s", self.name, len(chunk), error)
            for job, _ in chunk:
                job.fail(error)
            return
        batch_id = uuid.uuid4().hex[:16]
        for (job, i), completion in zip(chunk, completions, strict=True):
            completion.batch_id, completion.batch_size = batch_id, len(chunk)
            job.results[i] = completion
            job.remaining -= 1
            if job.remaining == 0:
                job.done.set()

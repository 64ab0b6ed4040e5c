"""Failed logins limited per client address: after a few failures, a lock-out that doubles each time.

``LoginLimiter`` keeps the count (its clock is injected, so tests need not sleep);
``LimitLogins`` is the ASGI middleware that applies it to Gradio's ``POST /login``. Both log the
username and the client's address, never the password. An attempt counts as soon as it is let
through, so parallel requests cannot all pass the check before the first failure is recorded.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

log = logging.getLogger(__name__)

FREE_FAILURES = 5  # failures in a row allowed before the first lock-out
FIRST_LOCK_S = 30.0  # the first lock-out; each further failure doubles it ...
MAX_LOCK_S = 3600.0  # ... up to this
FORGET_AFTER_S = 24 * 3600.0  # a client with no attempt for this long starts again from zero
MAX_CLIENTS = 10_000  # clients remembered at most; the least recently seen is forgotten first
MAX_LOGIN_BODY = 64 * 1024  # a login form larger than this is refused (413) unread


@dataclass
class _Record:
    failures: int = 0
    pending: int = 0  # attempts let through whose answer is not known yet
    locked_until: float = 0.0
    last_seen: float = 0.0


class LoginLimiter:
    """Counts failed logins per client; ``admit`` lets an attempt through or says how long to wait.

    Each admitted attempt is settled by exactly one of ``succeeded``, ``failed`` or ``abandoned``.
    At most ``max_clients`` clients are remembered, least recently seen forgotten first, so the
    table stays bounded and forgetting stale clients only looks at the oldest ones.
    """

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        first_lock_s: float = FIRST_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        forget_after_s: float = FORGET_AFTER_S,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures, self.first_lock_s, self.max_lock_s = free_failures, first_lock_s, max_lock_s
        self.forget_after_s, self.max_clients, self.clock = forget_after_s, max_clients, clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds ``client`` is still locked out (0: none)."""
        with self._lock:
            record = self._records.get(client)
            return max(0.0, record.locked_until - self.clock()) if record else 0.0

    def admit(self, client: str) -> float:
        """0 and the attempt counted as pending, or the seconds ``client`` must wait (refused).

        Refused too while the attempts in flight could by themselves use up the free failures
        (after a lock-out: while one is in flight); the wait is then the lock they would start.
        """
        with self._lock:
            now = self.clock()
            record = self._touch(client, now)
            if record.locked_until > now:
                return record.locked_until - now
            if record.pending >= max(self.free_failures - record.failures, 1):
                return max(self._lock_after(record.failures + record.pending), self.first_lock_s)
            record.pending += 1
            return 0.0

    def failed(self, client: str) -> tuple[int, float]:
        """Record a failed login: (failures in a row, seconds of the lock-out it starts, 0 for none)."""
        with self._lock:
            now = self.clock()
            record = self._touch(client, now)
            record.pending = max(0, record.pending - 1)
            record.failures += 1
            lock = self._lock_after(record.failures)
            record.locked_until = now + lock
            return record.failures, lock

    def succeeded(self, client: str) -> None:
        """A correct login: the client's count starts again from zero."""
        with self._lock:
            record = self._records.get(client)
            if record:
                record.failures, record.locked_until = 0, 0.0
                self._settle(client, record)

    def abandoned(self, client: str) -> None:
        """An admitted attempt that got no verdict (an error, a dropped connection): not counted."""
        with self._lock:
            record = self._records.get(client)
            if record:
                self._settle(client, record)

    def _lock_after(self, failures: int) -> float:
        over = failures - self.free_failures
        return min(self.first_lock_s * 2 ** (over - 1), self.max_lock_s) if over > 0 else 0.0

    def _settle(self, client: str, record: _Record) -> None:
        record.pending = max(0, record.pending - 1)
        if not record.failures and not record.pending:
            del self._records[client]

    def _touch(self, client: str, now: float) -> _Record:
        """``client``'s record, created if need be, as the most recently seen; forgets stale ones."""
        while self._records:
            oldest, record = next(iter(self._records.items()))
            if now - record.last_seen <= self.forget_after_s or record.pending:
                break
            del self._records[oldest]
        record = self._records.pop(client, None) or _Record()
        if len(self._records) >= self.max_clients:
            self._records.popitem(last=False)
        record.last_seen = now
        self._records[client] = record
        return record


class LimitLogins:
    """ASGI middleware: refuses ``POST …/login`` from a locked-out client before Gradio checks it.

    A refused login answers 400 (the status Gradio's login page reports as a failed login) with
    a ``Retry-After`` header and a detail that says why; the page's login message states the rule.
    A login body over ``max_body`` bytes is answered 413 without being read further.
    """

    def __init__(self, app: Any, limiter: LoginLimiter | None = None, max_body: int = MAX_LOGIN_BODY):
        self.app, self.limiter, self.max_body = app, limiter or LoginLimiter(), max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/login"):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        body = await _read_body(scope, receive, self.max_body)
        if body is None:
            log.warning("login refused: a form of over %d bytes from %s", self.max_body, client)
            await _answer(send, 413, f"The login form is larger than {self.max_body} bytes.")
            return
        replay = _replay(body)
        username = await _username(scope, replay())
        wait = self.limiter.admit(client)
        if wait > 0:
            log.warning(
                "login refused: user %r from %s is locked out for %d s more",
                username,
                client,
                math.ceil(wait),
            )
            await _refuse(send, wait)
            return
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, replay(), watch)
        finally:
            self._settle(client, username, status[0] if status else None)

    def _settle(self, client: str, username: str, status: int | None) -> None:
        if status == 200:
            self.limiter.succeeded(client)
            log.info("login: user %r from %s", username, client)
        elif status == 400:
            failures, lock = self.limiter.failed(client)
            log.warning(
                "login failed: user %r from %s (%d in a row%s)",
                username,
                client,
                failures,
                f"; locked out for {lock:.0f} s" if lock else "",
            )
        else:
            self.limiter.abandoned(client)


async def _read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes | None:
    """The request body, or None when it is (or says it is) over ``limit`` bytes."""
    declared = dict(scope.get("headers", [])).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes) -> Callable[[], Any]:
    """A factory of ``receive`` callables that each hand the buffered body over once."""

    def make() -> Any:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return receive

    return make


async def _username(scope: dict[str, Any], receive: Any) -> str:
    """The username field of the login form (at most 64 characters), or '' when it has none."""
    try:
        form = await Request(dict(scope), receive).form()
    except Exception:  # a malformed body: Gradio answers it; the log line just has no username
        return ""
    value = form.get("username")
    return value.strip()[:64] if isinstance(value, str) else ""


async def _refuse(send: Any, wait: float) -> None:
    seconds = math.ceil(wait)
    detail = (
        f"Too many failed logins from this address: refused for {seconds} s more, "
        "even with the right password."
    )
    await _answer(send, 400, detail, ((b"retry-after", str(seconds).encode()),))


async def _answer(send: Any, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A JSON ``{"detail": …}`` answer, as Gradio gives its own errors."""
    body = json.dumps({"detail": detail}).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + list(headers)})
    await send({"type": "http.response.body", "body": body})

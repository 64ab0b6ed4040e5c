"""Failed logins limited per client address: after a few failures, a lock-out that doubles each time.

``LoginLimiter`` keeps the count (its clock is injected, so tests need not sleep);
``LimitLogins`` is the ASGI middleware that applies it to Gradio's ``POST /login``. Both log the
username and the client's address, never the password.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

log = logging.getLogger(__name__)

FREE_FAILURES = 5  # failures in a row allowed before the first lock-out
FIRST_LOCK_S = 30.0  # the first lock-out; each further failure doubles it ...
MAX_LOCK_S = 3600.0  # ... up to this
FORGET_AFTER_S = 24 * 3600.0  # a client with no failure for this long starts again from zero


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


class LoginLimiter:
    """Counts failed logins per client; ``retry_after`` says how long a client is still refused."""

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        first_lock_s: float = FIRST_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        forget_after_s: float = FORGET_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.free_failures, self.first_lock_s, self.max_lock_s = free_failures, first_lock_s, max_lock_s
        self.forget_after_s, self.clock = forget_after_s, clock
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds ``client`` must still wait before a login is even checked (0: it may try now)."""
        with self._lock:
            record = self._records.get(client)
            return max(0.0, record.locked_until - self.clock()) if record else 0.0

    def failed(self, client: str) -> tuple[int, float]:
        """Record a failed login: (failures in a row, seconds of the lock-out it starts, 0 for none)."""
        with self._lock:
            now = self.clock()
            self._forget(now)
            record = self._records.setdefault(client, _Record())
            record.failures += 1
            record.last_failure = now
            over = record.failures - self.free_failures
            lock = min(self.first_lock_s * 2 ** (over - 1), self.max_lock_s) if over > 0 else 0.0
            record.locked_until = now + lock
            return record.failures, lock

    def succeeded(self, client: str) -> None:
        """A correct login: the client's count starts again from zero."""
        with self._lock:
            self._records.pop(client, None)

    def _forget(self, now: float) -> None:
        stale = [c for c, r in self._records.items() if now - r.last_failure > self.forget_after_s]
        for client in stale:
            del self._records[client]


class LimitLogins:
    """ASGI middleware: refuses ``POST …/login`` from a locked-out client before Gradio checks it.

    A refused login answers 400 (the status Gradio's login page reports as a failed login) with
    a ``Retry-After`` header and a detail that says why; the page's login message states the rule.
    """

    def __init__(self, app: Any, limiter: LoginLimiter | None = None):
        self.app, self.limiter = app, limiter or LoginLimiter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "").rstrip("/")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/login"):
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        body = await _read_body(receive)
        replay = _replay(body)
        username = await _username(scope, replay())
        wait = self.limiter.retry_after(client)
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

        await self.app(scope, replay(), watch)
        if status and status[0] == 200:
            self.limiter.succeeded(client)
            log.info("login: user %r from %s", username, client)
        elif status and status[0] == 400:
            failures, lock = self.limiter.failed(client)
            log.warning(
                "login failed: user %r from %s (%d in a row%s)",
                username,
                client,
                failures,
                f"; locked out for {lock:.0f} s" if lock else "",
            )


async def _read_body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
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
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(seconds).encode()),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})

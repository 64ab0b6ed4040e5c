"""Leases: which process holds a row (its name, ``host:pid:nonce``), whether that process is gone,
and a thread that renews a process's leases while it works.

Evaluation claims (app.evaluation.claims) and running runs (app.runtime) share these: a row held by
a process that stopped renewing for its whole lease, or whose process on this host has exited, is
free to be taken over (a claim) or marked ``interrupted`` (a run).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


def process_owner() -> str:
    """This process's name in leases: ``host:pid:nonce`` (the nonce tells reused pids apart)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_gone(owner: str | None) -> bool:
    """True when ``owner`` names a process on this host that no longer exists. A process on another
    host, or an owner this cannot read, is never called gone: its lease decides."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:100] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    return False


class LeaseKeeper:
    """Calls ``renew`` every third of ``lease_s`` in a background thread, until stopped."""

    def __init__(self, renew: Callable[[], object], lease_s: float, *, name: str) -> None:
        self.renew, self.lease_s = renew, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # the next renewal may get through; the lease has slack
                log.warning("could not renew the leases (%s): %s", self._thread.name, exc)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> LeaseKeeper:
        return self.start()

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

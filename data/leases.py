"""Leases: which process holds a row (its name, ``host:pid:start:nonce``), whether that process is
gone, and a thread that renews a process's leases while it works.

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
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

# The host part of an owner name: the name fits the 128-character owner columns whole.
HOST_CHARS = 90


def _host() -> str:
    return socket.gethostname()[:HOST_CHARS]


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of /proc/<pid>/stat), or None
    where that cannot be read (no such process, no /proc)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat_line.rpartition(")")[2].split()  # from field 3 on: the command name may hold spaces
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host exists and, where ``start`` is known and /proc readable,
    is the one that started then, not a later process given the same pid (in a container the app is
    often pid 1 again after a restart)."""
    if start is not None and Path("/proc/self/stat").exists():
        return process_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def process_owner() -> str:
    """This process's name in leases: ``host:pid:start:nonce``, or ``host:pid:nonce`` where its start
    time is unknown (the start time tells reused pids apart, the nonce runtimes of one process)."""
    pid = os.getpid()
    start = process_start(pid)
    return ":".join([_host(), str(pid), *([start] if start else []), secrets.token_hex(4)])


def owner_gone(owner: str | None) -> bool:
    """True when ``owner`` names a process on this host that no longer exists (or whose pid another
    process has taken since). A process on another host, or an owner this cannot read, is never
    called gone: its lease decides. Names without a start time (``host:pid:nonce``) are read too."""
    parts = (owner or "").split(":")
    if len(parts) not in (3, 4) or parts[0] != _host() or not parts[1].isdigit():
        return False
    return not process_alive(int(parts[1]), parts[2] if len(parts) == 4 else None)


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

"""Several processes, on any hosts, on one evaluation: who runs which case.

Every process that runs an eval registers its cases in the store's ``eval_claims`` table and
claims open ones in small batches (PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``; SQLite: a write
transaction, so one host's processes take turns on the file). A claim is a lease, timed by the
database's clock: :class:`LeaseKeeper` renews the process's leases while its cases run, so a case
is reclaimed by another process only once its own process has stopped renewing (killed, hung,
cut off from the database) for the whole lease. A case is done once its run is stored.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from types import TracebackType

from data.store import TrajectoryStore

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60.0


def claim_owner() -> str:
    """This process's name in the claims: ``host:pid:nonce`` (the nonce tells reused pids apart)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaseKeeper:
    """Renews ``owner``'s leases every third of ``lease_s`` in a background thread, until stopped."""

    def __init__(self, store: TrajectoryStore, owner: str, lease_s: float) -> None:
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eval-lease", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.store.renew_eval_claims(self.owner, self.lease_s)
            except Exception as exc:  # the next renewal may get through; the lease has slack
                log.warning("could not renew the eval's leases of %s: %s", self.owner, exc)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

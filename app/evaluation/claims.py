"""Several processes, on any hosts, on one evaluation: who runs which case.

Every process that runs an eval registers its cases in the store's ``eval_claims`` table and
claims open ones in small batches (PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``; SQLite: a write
transaction, so one host's processes take turns on the file). A claim is a lease, timed by the
database's clock: a :class:`data.leases.LeaseKeeper` renews the process's leases while its cases
run, so a case is reclaimed by another process only once its own process has stopped renewing
(killed, hung, cut off from the database) for the whole lease. A case is done once its run is stored.
"""

from __future__ import annotations

from data.leases import LeaseKeeper
from data.store import TrajectoryStore

DEFAULT_LEASE_S = 60.0


def claim_keeper(store: TrajectoryStore, owner: str, lease_s: float) -> LeaseKeeper:
    """Renews the eval claims ``owner`` holds while its cases run."""
    return LeaseKeeper(lambda: store.renew_eval_claims(owner, lease_s), lease_s, name="eval-lease")

"""LangGraph's conversation state (the checkpointer) beside the trajectory store.

A case's earlier turns live in the checkpointer, keyed by the case's thread id. With the embedded
SQLite default they stay in a file in ``home`` (one process, one host). With a PostgreSQL
``db_url`` they live in the same database as the runs (``langgraph-checkpoint-postgres``, tables
``checkpoints``, ``checkpoint_blobs``, ``checkpoint_writes``, ``checkpoint_migrations``), so any
replica can take a case's follow-up or reopen it (docs/deploy.md).

Their schema follows the store's rule (data.migrate): a database without them gets them at start;
one whose checkpoint schema is older than this version's is refused until ``mmedagent db upgrade``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy.engine import make_url

from data.migrate import DatabaseNotMigrated

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import psycopg

# Connections a process keeps for checkpoints: a write per graph step, each a few milliseconds, so a
# few carry many cases at once; a case waits for a free one rather than failing.
POOL_SIZE = 4
POOL_WAIT_S = 120.0
MIGRATION_WAIT_S = 300.0
# Serialises checkpoint migrations between processes (PostgreSQL advisory lock key; the store's
# own migrations use another, data.migrate).
_PG_LOCK_KEY = 0x6D6D636B


@dataclass
class Checkpointer:
    """A LangGraph checkpointer and how to release what it holds."""

    saver: BaseCheckpointSaver
    close: Callable[[], None]


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL ``url`` (``postgresql+psycopg://…``) as psycopg's connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def open_checkpointer(url: str, sqlite_path: Path) -> Checkpointer:
    """The checkpointer beside the store at ``url``: in that database when it is PostgreSQL (its
    tables created when absent, refused when behind), else in the SQLite file ``sqlite_path``."""
    if not is_postgres(url):
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(sqlite_path, check_same_thread=False)
        return Checkpointer(SqliteSaver(conn), conn.close)
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool

    version = checkpoint_revision(url)
    if version is None:
        upgrade_checkpoints(url)
    elif version != checkpoint_head():
        raise DatabaseNotMigrated(
            f"database {make_url(url).render_as_string(hide_password=True)} has conversation-state "
            f"(checkpoint) schema {version}, this version needs {checkpoint_head()}: "
            "run `mmedagent db upgrade`"
        )
    pool = ConnectionPool(
        libpq_url(url),
        min_size=1,
        max_size=POOL_SIZE,
        timeout=POOL_WAIT_S,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        name="mmedagent-checkpoints",
    )
    return Checkpointer(PostgresSaver(pool), pool.close)


def checkpoint_head() -> int:
    """The checkpoint schema version this version of langgraph-checkpoint-postgres writes."""
    from langgraph.checkpoint.postgres import PostgresSaver

    return len(PostgresSaver.MIGRATIONS) - 1


def checkpoint_revision(url: str) -> int | None:
    """The database's checkpoint schema version; None when it has no checkpoint tables."""
    with _connect(url) as conn:
        found = conn.execute("SELECT to_regclass('checkpoint_migrations') AS t").fetchone()
        if found is None or found["t"] is None:
            return None
        row = conn.execute("SELECT max(v) AS v FROM checkpoint_migrations").fetchone()
        return None if row is None or row["v"] is None else int(row["v"])


def upgrade_checkpoints(url: str) -> int:
    """Create or migrate the checkpoint tables (LangGraph's own migrations); returns the version.

    Safe when several processes start on one database at once: the migrations run under an advisory
    lock, so the later ones find them done. The others poll for the lock rather than wait in it: a
    waiting ``pg_advisory_lock`` is an open transaction, which the migrations' ``CREATE INDEX
    CONCURRENTLY`` would wait for in turn (a deadlock).
    """
    from langgraph.checkpoint.postgres import PostgresSaver

    with _connect(url) as conn:
        deadline = time.monotonic() + MIGRATION_WAIT_S
        while not conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_PG_LOCK_KEY,)).fetchone()["ok"]:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"another process held the checkpoint migration lock for {MIGRATION_WAIT_S} s"
                )
            time.sleep(0.1)
        try:
            PostgresSaver(conn).setup()  # autocommit: its CREATE INDEX CONCURRENTLY needs it
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_LOCK_KEY,))
    version = checkpoint_revision(url)
    assert version is not None
    return version


@contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(libpq_url(url), autocommit=True, prepare_threshold=0, row_factory=dict_row) as conn:
        yield conn

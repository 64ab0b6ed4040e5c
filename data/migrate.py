"""Schema migrations (Alembic) for the trajectory store, run programmatically."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

MIGRATIONS = Path(__file__).with_name("migrations")
# Alembic's ``context`` is a process-wide proxy: two migrations at once in one process clash.
_PROCESS_LOCK = threading.Lock()
_PG_LOCK_KEY = 0x6D6D6564  # any constant shared by every mmedagent process


class DatabaseNotMigrated(RuntimeError):
    """The database schema is older (or newer) than this code expects."""


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest).

    Safe when several processes/threads start on the same new database at once: each migration
    holds the database's write lock (SQLite: BEGIN IMMEDIATE, see data.store.make_engine;
    PostgreSQL: an advisory lock) from before Alembic reads the current revision, so the later ones
    find the schema at head and do nothing.
    """
    _run(command.upgrade, engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database back to ``revision`` (data in tables it lacks is dropped)."""
    _run(command.downgrade, engine, revision)


def _run(step: Callable[[Config, str], None], engine: Engine, revision: str) -> None:
    cfg = _config()
    with _PROCESS_LOCK, engine.execution_options(sqlite_begin="IMMEDIATE").begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        cfg.attributes["connection"] = conn
        step(cfg, revision)


def is_empty(engine: Engine) -> bool:
    return not inspect(engine).get_table_names()


def ensure_current(engine: Engine, *, init_empty: bool = True) -> None:
    """Refuse to run on a database whose schema is not the head revision.

    A brand-new, empty database is created at head when ``init_empty`` (the embedded default).
    """
    if init_empty and is_empty(engine):
        upgrade(engine)
        return
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database {engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current or 'none'}, this version needs {head}: run `mmedagent db upgrade`"
        )

"""``db upgrade`` / ``downgrade`` / ``current``: the database schema (migrations in data.migrate)."""

from __future__ import annotations

from typing import Annotated

import typer
from alembic.util import CommandError

from app.checkpoints import checkpoint_head, checkpoint_revision, is_postgres, upgrade_checkpoints
from app.commands.common import console, fail, load_settings
from data.migrate import current_revision, downgrade, head_revision, upgrade
from data.store import make_engine

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (on PostgreSQL, the conversation state's too)."""
    url = load_settings().database_url
    engine = make_engine(url)
    upgrade(engine)
    console.print(f"database at revision {current_revision(engine)}")
    if is_postgres(url):
        console.print(f"conversation state (checkpoints) at schema {upgrade_checkpoints(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. 0001")]) -> None:
    """Migrate the database back to an older schema (drops what that schema lacks)."""
    engine = make_engine(load_settings().database_url)
    try:
        downgrade(engine, revision)
    except CommandError as exc:
        fail(str(exc))
    console.print(f"database at revision {current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the one this version needs (exit 1 when behind)."""
    url = load_settings().database_url
    engine = make_engine(url)
    current, head = current_revision(engine), head_revision()
    console.print(f"database at revision {current or 'none'}; this version needs {head}", highlight=False)
    behind = current != head
    if is_postgres(url):
        version, needed = checkpoint_revision(url), checkpoint_head()
        shown = "none" if version is None else version
        console.print(f"conversation state (checkpoints) at schema {shown}; this version needs {needed}")
        behind = behind or version != needed
    if behind:
        fail("run `mmedagent db upgrade`", code=1)

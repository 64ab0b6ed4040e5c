"""What every command shares: the consoles, the one-line failure, settings, runtime and store."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from app.config import Settings
from app.runtime import Runtime
from app.tiny_model import ensure_default_model
from data.migrate import DatabaseNotMigrated
from data.store import TrajectoryStore
from graph.context import GraphMode
from graph.protocol import BackendError, BackendSetupError

console = Console()
err = Console(stderr=True)

# Per-role policy choices from the global --triage/--specialist/--attending options.
policy_choices: dict[str, dict[str, str]] = {}


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line reason and exit (2 = bad input, 1 = the run itself failed).

    ``message`` is plain text: brackets in it (``[ui]``, ``pip install '…[train]'``) are shown as typed.
    """
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        return Settings(**policy_choices)
    except Exception as exc:  # pydantic's errors are long; the first line says what is wrong
        fail(f"invalid configuration: {str(exc).splitlines()[0]}")


def open_runtime(settings: Settings, mode: GraphMode | None = None) -> Runtime:
    ensure_default_model(settings, announce=err.print)
    try:
        return Runtime(settings, mode=mode)
    except (DatabaseNotMigrated, BackendSetupError) as exc:
        fail(str(exc))
    except (BackendError, OSError) as exc:
        fail(f"cannot load the model: {exc}", code=1)


def open_store(settings: Settings | None = None) -> TrajectoryStore:
    """The trajectory store; exits 2 with the upgrade hint when the schema is not current."""
    settings = settings or load_settings()
    try:
        return TrajectoryStore(settings.database_url, store_pixels=settings.store_pixels)
    except DatabaseNotMigrated as exc:
        fail(str(exc))

"""``ui``: serve the web app on this machine (the app itself lives in ui/)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.commands.common import console, fail, load_settings, open_runtime
from ui.safety import UnsafeBindError, check_bind


def ui_command(
    host: Annotated[
        str | None, typer.Option(help="default 127.0.0.1; any other host needs a login (see README)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="default 7860")] = None,
) -> None:
    """Serve the web app (chat, traces, trajectories) on this machine."""
    from ui.app import build_app, launch, login  # deferred: gradio takes seconds to import
    from ui.served import stop_on_signals

    settings = load_settings()
    host = host or settings.ui.host
    try:  # checked before the models load: a refused bind should fail fast
        auth = login(settings)
        check_bind(host, auth)
    except (ValueError, UnsafeBindError) as exc:
        fail(str(exc))
    runtime = open_runtime(settings)
    port = port or settings.ui.port
    login_note = f"login required (user {auth[0]})" if auth else "no login: reachable from this machine only"
    console.print(
        f"mmedagent UI on http://{host}:{port}  ({login_note}); Ctrl-C stops it",
        highlight=False,
        soft_wrap=True,
    )
    stop_on_signals()  # SIGTERM/SIGHUP shut down as Ctrl-C does: the served files go with the server
    try:
        launch(build_app(runtime), settings, host=host, port=port, quiet=True)
    finally:
        runtime.close()

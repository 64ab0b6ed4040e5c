"""The Gradio app: Chat (clinicians), Traces (developers), Trajectories (trainers).

``build_app(runtime)`` returns the Blocks; ``launch`` serves it with the safe defaults: loopback
unless a login is configured, failed logins limited per client, uploads capped at
``max_image_bytes``, errors without internals.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
from starlette.middleware import Middleware

from ui.chat import RECENT_CASES_JS, build_chat_tab
from ui.file_access import ServedToTheirClient
from ui.login_limit import FREE_FAILURES, LimitLogins
from ui.safety import DISCLAIMER, RefusedFilesAreNotFound, check_bind
from ui.served import app_folder, process_folder
from ui.traces import build_traces_tab
from ui.trajectories import build_trajectories_tab

if TYPE_CHECKING:
    from app.config import Settings
    from app.runtime import Runtime

log = logging.getLogger(__name__)

CSS = """
#disclaimer { border-left: 4px solid #d97706; padding: 0.2em 0.9em; background: rgba(217, 119, 6, 0.08); }
.inline-error { color: #b91c1c; }
/* A model's raw output (shown when nothing could be read from it) wraps instead of scrolling. */
#case-chat pre, #case-chat pre code { white-space: pre-wrap !important; overflow-wrap: anywhere; }
@media (max-width: 700px) {
  /* Narrow screens: rows of controls stack instead of squeezing side by side. */
  .gradio-container .row { flex-direction: column !important; align-items: stretch !important; }
  .gradio-container .row > * { min-width: 0 !important; width: 100% !important; flex: 1 1 auto !important; }
  .gradio-container .row > button { width: 100% !important; }
  .gradio-container .table-wrap, .gradio-container .table-container { overflow-x: auto; }
}
"""


def build_app(runtime: Runtime) -> gr.Blocks:
    """The whole app on one runtime (its store, backends and graph); one session per browser tab.

    What the app writes to serve (image previews, run downloads, exports: patient data) and
    Gradio's copies of it go to one folder of its own, ``demo.served_files`` (ui/served.py):
    ``launch`` removes it when the server shuts down, and it goes at the latest when the process
    exits.
    """
    folder = app_folder()
    # Uploads leave Gradio's cache as soon as the chat has read them (ui/uploads.py), or on New case;
    # delete_cache drops, every 10 minutes, files older than an hour: uploads attached but never
    # sent, and served previews and exports (a reopened case serves its images again).
    with gr.Blocks(title="mmedagent", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("# mmedagent · multi-agent medical image Q&A")
        gr.Markdown(DISCLAIMER, elem_id="disclaimer")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = build_chat_tab(runtime, runtime.settings.ui, folder / "previews")
            with gr.Tab("Traces", id="traces", elem_id="tab-traces") as traces_tab:
                traces = build_traces_tab(runtime.store, folder / "runs")
            with gr.Tab("Trajectories", id="trajectories", elem_id="tab-trajectories") as traj_tab:
                trajectories = build_trajectories_tab(runtime.store, folder / "exports")
        private = {"api_visibility": "private"}
        traces_tab.select(traces.search, traces.search_inputs, traces.search_outputs, **private)
        traj_tab.select(trajectories.refresh, None, trajectories.refresh_outputs, **private)
        demo.load(chat.open_from_url, None, chat.case_outputs, **private)
        demo.load(chat.recent_choices, chat.recent_json, chat.recent, js=RECENT_CASES_JS, **private)

        def open_in_chat(run_id: str) -> tuple[Any, ...]:
            run = runtime.store.get_run((run_id or "").strip())
            if run is None:
                return gr.skip(), *(gr.skip() for _ in chat.case_outputs)
            return gr.Tabs(selected="chat"), *chat.open_case(run.thread_id)

        traces.open_case.click(open_in_chat, traces.run_id, [tabs, *chat.case_outputs], **private)
        chat.open_trace.click(
            lambda session: (gr.Tabs(selected="traces"), session.last_run_id or ""),
            chat.session,
            [tabs, traces.run_id],
            **private,
        ).then(traces.open_run, traces.run_id, traces.open_outputs, **private).then(
            traces.search, traces.search_inputs, traces.search_outputs, **private
        )
    demo.served_files = folder
    return demo


def remove_on_shutdown(folder: Path) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A server lifespan that removes ``folder`` when the server shuts down."""

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed the app's served files (%s)", folder)

    return lifespan


def login(settings: Settings) -> tuple[str, str] | None:
    """The configured username and password, or None; half a login is a configuration error."""
    ui = settings.ui
    password = ui.password.get_secret_value() if ui.password else ""
    if bool(ui.username) != bool(password):
        raise ValueError("set both MMEDAGENT_UI__USERNAME and MMEDAGENT_UI__PASSWORD, or neither")
    return (ui.username, password) if ui.username else None


def launch(
    demo: gr.Blocks,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Serve ``demo``; returns its local URL. Refuses a non-loopback host without a login."""
    host = host or settings.ui.host
    auth = login(settings)
    check_bind(host, auth)
    demo.queue(default_concurrency_limit=settings.ui.concurrency)
    demo.launch(
        server_name=host,
        server_port=port or settings.ui.port,
        auth=auth,
        auth_message=(
            "mmedagent — research software, not for clinical decisions. Please log in. After "
            f"{FREE_FAILURES} failed logins in a row, logins from your address are refused for a while."
        ),
        max_file_size=settings.max_image_bytes,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
        prevent_thread_lock=not block,
        quiet=quiet,
        css=CSS,
        app_kwargs={
            "middleware": [
                Middleware(ServedToTheirClient, folder=process_folder()),
                Middleware(RefusedFilesAreNotFound),
                Middleware(LimitLogins),
            ],
            "lifespan": remove_on_shutdown(demo.served_files),
        },
    )
    return demo.local_url or f"http://{host}:{port}/"

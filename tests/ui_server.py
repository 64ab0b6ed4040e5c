"""Serve the Gradio app in-process on a free loopback port, for the UI tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.runtime import Runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(runtime: Runtime) -> Iterator[str]:
    """The app on ``runtime``, launched as ``mmedagent ui`` launches it; yields its URL."""
    from ui.app import build_app, launch

    demo = build_app(runtime)
    url = launch(demo, runtime.settings, host="127.0.0.1", port=free_port(), block=False, quiet=True)
    try:
        yield url.rstrip("/")
    finally:
        demo.close()

"""For the UI tests: the Gradio app served in-process on a free loopback port, and the headless
Chromium that drives it (screenshots go to artifacts/ui/, gitignored)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

    from app.runtime import Runtime

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"


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


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, under Playwright; skips the test where it is not installed."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (scripts/system-deps.sh installs it as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

"""Safe defaults of the web app: who may connect, and what the pages never show."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

from ui.file_access import requested_file

DISCLAIMER = (
    "**Research software — not a medical device.** Answers come from experimental models and can be "
    "wrong. Never use them for clinical decisions."
)

# An absolute POSIX path of two or more segments (model folders, temp files, the database file).
_ABS_PATH = re.compile(r"(?<![\w:/.])/(?:[\w.+-]+/)+([\w.+-]+)")


class UnsafeBindError(ValueError):
    """The app would be reachable from the network without a login."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only if every address it resolves to is
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to serve beyond loopback without a username and password."""
    if is_loopback(host) or auth is not None:
        return
    raise UnsafeBindError(
        f"binding to {host} makes the UI reachable from the network; it requires a login: set "
        "MMEDAGENT_UI__USERNAME and MMEDAGENT_UI__PASSWORD (or [ui] username/password in mmedagent.toml)"
    )


def redact_paths(text: str | None) -> str | None:
    """Replace absolute server paths with their last segment (``/srv/models/qwen`` -> ``…/qwen``)."""
    if not text:
        return text
    return _ABS_PATH.sub(lambda m: f"…/{m.group(1)}", text)


class RefusedFilesAreNotFound:
    """ASGI middleware: Gradio's file route answers 404, not 403, for a file it will not serve.

    Deleted uploads (ui/uploads.py) and files outside the allowed folders then look alike: the
    route says nothing about what exists on the server.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or requested_file(scope.get("path", "")) is None:
            await self.app(scope, receive, send)
            return

        async def send_not_found(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 403:
                message = {**message, "status": 404}
            await send(message)

        await self.app(scope, receive, send_not_found)

"""Served files go only to the browser they were made for.

Gradio's file route serves any file in its cache to whoever names the path. This ASGI middleware
gives each browser (each cookie jar: another user, another browser, a private window) a random
client id in a cookie, notes every path under the app's served folder that a response hands to a
client (uploads, image previews, run JSON, exports), and answers 404 when any other client, or a
request without the cookie, asks the file route for it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any

COOKIE = "mmedagent-client"
_KEEP = 4096  # bytes of one body chunk kept to find a path split across two chunks


def _client(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:  # a malformed cookie header names no client
                return None
            if COOKIE in jar:
                return jar[COOKIE].value
    return None


def _decode(raw: bytes) -> str:
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return raw.decode("utf-8", "replace")


class ServedToTheirClient:
    """ASGI middleware: a file under ``folder`` is served only to the client it was sent to."""

    def __init__(self, app: Any, folder: Path):
        self.app = app
        self.folder = os.path.abspath(folder)
        self._paths = re.compile(re.escape(self.folder.encode()) + rb'/(?:[^"\\]|\\.)+')
        self._owners: dict[str, str] = {}

    def _served_here(self, path: str) -> bool:
        return path.startswith(self.folder + os.sep)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        route = scope.get("path", "")
        if "/file=" in route:
            wanted = os.path.abspath(route.split("/file=", 1)[1])
            if self._served_here(wanted) and (client is None or self._owners.get(wanted) != client):
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await self.app(scope, receive, send)
            return
        set_cookie = None
        if client is None:
            client = secrets.token_urlsafe(24)
            set_cookie = f"{COOKIE}={client}; Path=/; HttpOnly; SameSite=Lax".encode()
        tail = b""

        async def noting(message: dict[str, Any]) -> None:
            nonlocal tail
            if message["type"] == "http.response.start" and set_cookie:
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)]}
            elif message["type"] == "http.response.body" and message.get("body"):
                body = message["body"]
                for found in self._paths.finditer(tail + body):
                    self._owners[os.path.abspath(_decode(found.group()))] = client
                tail = body[-_KEEP:]
            await send(message)

        await self.app(scope, receive, noting)

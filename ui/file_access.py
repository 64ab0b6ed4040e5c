"""Served files go only to the browser they were made for.

Gradio's file route serves any file in its cache to whoever names the path. This ASGI middleware
gives each browser (each cookie jar: another user, another browser, a private window) a random
client id in a cookie, notes every file under the app's served folder that a response hands to a
client (uploads, image previews, run JSON, exports), and answers 404 when any other client, or a
request without the cookie, asks a file route for it. A served path is content-addressed, so two
clients that open the same case or run are both its owners.
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
_FILE_ROUTE = re.compile(r"/file[=/]")  # gradio's /file=<path> and its older /file/<path>


def requested_file(route: str) -> str | None:
    """The path a request for gradio's file routes names, or None for any other route."""
    found = _FILE_ROUTE.search(route)
    return route[found.end() :] if found else None


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
        self.folder = os.path.realpath(folder)  # gradio resolves links: /proc/self/root/tmp/… too
        prefixes = {os.path.abspath(folder), self.folder}
        prefix = b"|".join(re.escape(p.encode()) for p in prefixes)
        self._paths = re.compile(rb"(?:" + prefix + rb')/(?:[^"\\]|\\.)+')
        self._owners: dict[str, set[str]] = {}

    def _served_here(self, path: str) -> bool:
        return path.startswith(self.folder + os.sep)

    def _allowed(self, wanted: str, client: str | None) -> bool:
        if not self._served_here(wanted):
            return True
        if not os.path.isfile(wanted):  # removed since it was served: forget it
            self._owners.pop(wanted, None)
            return False
        return client in self._owners.get(wanted, ())

    def _note(self, found: bytes, client: str) -> None:
        path = os.path.realpath(_decode(found))
        if self._served_here(path) and os.path.isfile(path):  # a made-up path in a body is not kept
            self._owners.setdefault(path, set()).add(client)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = _client(scope)
        route = scope.get("path", "")
        wanted = requested_file(route)
        if wanted is not None:
            if not self._allowed(os.path.realpath(wanted), client):
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
                    self._note(found.group(), client)
                tail = body[-_KEEP:]
            await send(message)

        await self.app(scope, receive, noting)

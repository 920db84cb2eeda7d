"""Which web pages may call the server from a browser (CORS), as Ollama decides it.

Pages served from this machine (localhost, 127.0.0.1, [::1], 0.0.0.0, any port), the server's
own page, and editor and app webviews are allowed; any other origin only when named with
`--cors-origin` (or `*`). A request from a foreign origin is refused outright with 403, not
merely left without CORS headers: a page on the web must not make the model work for it, even
with a request whose answer the browser would hide from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, MutableMapping
from typing import Any, Callable
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
LOCAL_SCHEMES = ("app", "file", "tauri", "vscode-webview")  # Ollama allows these too
METHODS = "GET, POST, PUT, DELETE, OPTIONS"
MAX_AGE = "600"


def allowed(origin: str, host: str, extra: tuple[str, ...]) -> bool:
    """Whether a page from `origin` may call a server reached as `host` (the Host header)."""
    if "*" in extra or origin in extra:
        return True
    parts = urlsplit(origin)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.hostname in LOCAL_HOSTS or parts.hostname.endswith(".localhost"):
        return True
    return parts.netloc.lower() == host.lower()  # the server's own page, however it is reached


class CORS:
    """ASGI middleware: answers preflights, adds CORS headers, refuses foreign origins."""

    def __init__(self, app: App, origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.origins = tuple(o.rstrip("/") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-origin call: nothing to decide
            await self.app(scope, receive, send)
            return
        if not allowed(origin, headers.get("host", ""), self.origins):
            await _refuse(send, origin, scope["path"])
            return
        vary = [(b"vary", b"Origin")]
        allow = [(b"access-control-allow-origin", origin.encode("latin-1")), *vary]
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            asked = headers.get("access-control-request-headers", "")
            reply = [
                *allow,
                (b"access-control-allow-methods", METHODS.encode()),
                (b"access-control-allow-headers", asked.encode("latin-1")),
                (b"access-control-max-age", MAX_AGE.encode()),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": reply})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *allow]
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _refuse(send: Send, origin: str, path: str) -> None:
    message = (
        f"the origin {origin} may not use this server: start it with --cors-origin {origin} "
        "to allow it"
    )
    if path.startswith("/api/"):
        body = json.dumps({"error": message})
    else:
        body = json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": "cors"}}
        )
    data = body.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": data})


_ORIGIN = re.compile(r"^(\*|[a-z][a-z0-9+.-]*://[^/\s]+)/?$", re.IGNORECASE)


def check_origin(value: str) -> bool:
    """Whether `value` is an origin (scheme://host[:port]) or `*`, for --cors-origin."""
    return bool(_ORIGIN.match(value))

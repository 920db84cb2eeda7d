"""The OpenAI-compatible HTTP API and the chat page, over the generation service.

Requests are checked here (bad ones get a 4xx with an OpenAI-style JSON error and the
server keeps serving); `replies` runs the work on `service.Service` and shapes the answer.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.serve import cors, utility_routes
from runtime.serve.errors import APIError
from runtime.serve.ollama import routes as ollama_routes
from runtime.serve.openai import responses
from runtime.serve.openai import routes as openai_routes
from runtime.serve.state import ServerState

__all__ = ["ServerState", "chat_page", "create_app", "serve"]

WEB = Path(__file__).parent / "web"
UNION_TAGS = {"str", "int", "float", "bool", "list", "dict"}  # pydantic's names of union branches


def _error(
    status: int, message: str, code: str, param: Optional[str] = None, request: Any = None
) -> JSONResponse:
    if request is not None and request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)  # Ollama's shape
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving `state`'s model."""
    app = FastAPI(title="llamapyz", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", "invalid_json", None, request)
        # pydantic names the branch of a union it tried ("literal['auto',…]"): not a field.
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(p for p in loc if p not in UNION_TAGS and not any(c in p for c in "[('"))
        message = (
            f"{where}: {first.get('msg', 'invalid value')}" if where else str(first.get("msg"))
        )
        return _error(400, message, "invalid_value", where or None, request)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.code, exc.param, request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(
            exc.status_code,
            str(exc.detail),
            "not_found" if exc.status_code == 404 else "http_error",
            None,
            request,
        )

    def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token, state.api_key):
            raise APIError(
                401,
                "a valid API key is needed: send it as 'Authorization: Bearer KEY'",
                "invalid_api_key",
            )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(chat_page())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_id, **state.service.status()}

    app.include_router(openai_routes.router(state, authorize))
    app.include_router(responses.router(state, authorize))
    app.include_router(utility_routes.router(state, authorize))
    app.include_router(ollama_routes.router(state, authorize))
    app.add_middleware(JsonBodies)
    app.add_middleware(cors.CORS, origins=state.cors_origins)
    return app


def chat_page() -> str:
    """The chat page, with the Markdown renderer (web/marked.js, from `make install`) inlined."""
    html = (WEB / "index.html").read_text(encoding="utf-8")
    renderer = WEB / "marked.js"
    if renderer.is_file():  # without it the page shows replies as plain text
        code = renderer.read_text(encoding="utf-8").replace("</script", "<\\/script")
        html = html.replace('<script id="marked"></script>', f"<script>{code}</script>", 1)
    return html


class Loading:
    """The ASGI app while the model loads: 503 for every request, then the real app."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        error = {"message": "the model is loading", "type": "unavailable_error", "code": "loading"}
        body = {"status": "loading"} if scope["path"] == "/health" else {"error": error}
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class JsonBodies:
    """ASGI middleware: every request body is JSON whatever its Content-Type says, as
    llama-server and Ollama read it (`curl … -d '{…}'`, their docs' examples, sends a form's)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=[*headers, (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGINT stays ignored where the process was started
    ignoring it (`nohup ./m.pyz --server &`): uvicorn installs its own handler either way."""

    def __init__(self, config: uvicorn.Config, sigint_ignored: bool) -> None:
        super().__init__(config)
        self.sigint_ignored = sigint_ignored

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGINT and self.sigint_ignored:
            return
        super().handle_exit(sig, frame)


def serve(
    load: Callable[[], ServerState], sock: socket.socket, host: str, open_browser: bool
) -> None:
    """Serve on `sock` until interrupted: 503 while `load` runs, then its state's app.

    Says where on stderr once both the server and the model are ready; an error raised by
    `load` stops the server and is raised here.
    """
    import sys
    import threading

    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{bound}"
    loading = Loading()
    config = uvicorn.Config(loading, log_level="warning", access_log=False, lifespan="off")
    server = _Server(config, sigint_ignored=signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
    ready: list[ServerState] = []
    failed: list[BaseException] = []

    def prepare() -> None:
        try:
            state = load()
            loading.app = create_app(state)
            ready.append(state)
        except BaseException as exc:  # raised again on the main thread, once the server stops
            failed.append(exc)
            server.should_exit = True
            return
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            print(
                f"llamapyz: serving {state.model_id} on {url} (chat page and /v1 API)",
                file=sys.stderr,
                flush=True,
            )
            if open_browser:
                _open_browser(url)

    worker = threading.Thread(target=prepare, name="llamapyz-load", daemon=True)
    worker.start()
    try:
        server.run(sockets=[sock])
    finally:
        if ready:
            ready[0].service.close()
    if failed:
        raise failed[0]
    worker.join(timeout=0)


def _open_browser(url: str) -> None:
    """Open the chat page, but only where a graphical browser can be: never a text one in this terminal."""
    import contextlib
    import os
    import sys
    import webbrowser

    if sys.platform != "darwin" and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return
    with contextlib.suppress(Exception):  # no browser is no reason to stop serving
        webbrowser.open(url, new=2)

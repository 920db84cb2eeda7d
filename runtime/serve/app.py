"""The OpenAI-compatible HTTP API and the chat page, over the generation service.

Requests are checked here (bad ones get a 4xx with an OpenAI-style JSON error and the
server keeps serving); `replies` runs the work on `service.Service` and shapes the answer.
"""

from __future__ import annotations

import base64
import secrets
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.chat import templates
from runtime.engine import grammar
from runtime.serve import cors, ollama_api, replies
from runtime.serve.jobs import Job
from runtime.serve.openai_models import (
    APIError,
    ChatRequest,
    CompletionRequest,
    ContentPart,
    EmbeddingRequest,
    GenerationFields,
)
from runtime.serve.service import Service

WEB = Path(__file__).parent / "web"


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


@dataclass
class ServerState:
    service: Service
    model: Any  # engine.Model
    fmt: templates.ChatFormat
    model_id: str
    aliases: set[str]
    defaults: Any  # engine.Sampling from the command line
    n_predict: int
    stops: tuple[str, ...]
    api_key: Optional[str]
    created: int
    cors_origins: tuple[str, ...] = ()  # --cors-origin: origins allowed besides local pages


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application serving `state`'s model."""
    app = FastAPI(title="llamapyz", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", "invalid_json", None, request)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
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

    def check_model(name: str) -> None:
        if name not in state.aliases:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server has {state.model_id!r}",
                "model_not_found",
                "model",
            )

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(chat_page())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.model_id, **state.service.status()}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        entry = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "llamapyz",
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        check_model(body.model)
        messages = [{"role": _role(m.role), "content": _text(m.content)} for m in body.messages]
        try:
            prompt_text = templates.render(state.fmt, messages, state.model)
        except templates.TemplateError as exc:
            raise APIError(400, str(exc), "invalid_messages", "messages") from None
        limit = body.max_completion_tokens or body.max_tokens
        job = _job(state, body, prompt_text, limit if limit else state.n_predict, state.fmt.stops)
        return await replies.answer(
            state.service, state.model_id, replies.CHAT, job, request, body.stream
        )

    @app.post("/v1/completions", dependencies=[Depends(authorize)], response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(
                400,
                "prompt: give one prompt (a string, or a list of one)",
                "invalid_value",
                "prompt",
            )
        job = _job(state, body, prompts[0], body.max_tokens or 16, ())
        return await replies.answer(
            state.service, state.model_id, replies.TEXT, job, request, body.stream
        )

    @app.post("/v1/embeddings", dependencies=[Depends(authorize)])
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
        check_model(body.model)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not inputs or any(not text for text in inputs):
            raise APIError(400, "input: give non-empty text", "invalid_value", "input")
        data, used = [], 0
        for i, text in enumerate(inputs):
            job = Job(prompt=[], n_predict=0, sampling=None, embed_text=text)
            vector = await replies.embedding(state.service, job, request)
            used += len(state.model.tokenize(text))
            value: Any = vector
            if body.encoding_format == "base64":  # what the openai client asks for by default
                value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {
            "object": "list",
            "data": data,
            "model": state.model_id,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    app.include_router(ollama_api.router(state, authorize))
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


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _text(content: Union[str, list[ContentPart], None]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


def _job(
    state: ServerState,
    body: GenerationFields,
    prompt_text: str,
    n_predict: int,
    stops: tuple[str, ...],
) -> Job:
    from dataclasses import replace

    tokens = state.model.tokenize(prompt_text)
    if len(tokens) >= state.model.n_ctx:
        raise APIError(
            400,
            f"the prompt is {len(tokens)} tokens, longer than the context of {state.model.n_ctx}",
            "context_length_exceeded",
            "messages" if isinstance(body, ChatRequest) else "prompt",
        )
    d = state.defaults
    gbnf = None
    if body.response_format is not None and body.response_format.type != "text":
        try:
            gbnf = grammar.from_response_format(
                body.response_format.type, body.response_format.json_schema
            )
        except grammar.GrammarError as exc:
            raise APIError(400, str(exc), "invalid_value", "response_format") from None
    sampling = replace(
        d,
        temp=d.temp if body.temperature is None else body.temperature,
        top_p=d.top_p if body.top_p is None else body.top_p,
        top_k=d.top_k if body.top_k is None else body.top_k,
        min_p=d.min_p if body.min_p is None else body.min_p,
        repeat_penalty=d.repeat_penalty if body.repeat_penalty is None else body.repeat_penalty,
        seed=d.seed if body.seed is None else body.seed & 0xFFFFFFFF,
        grammar=gbnf or d.grammar,
    )
    extra = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    stops = tuple(stops) + state.stops + extra
    return Job(prompt=tokens, n_predict=n_predict, sampling=sampling, stops=stops)


def serve(state: ServerState, sock: socket.socket, host: str, open_browser: bool) -> None:
    """Serve on `sock` until interrupted; say where on stderr once ready."""
    import sys
    import threading

    import uvicorn

    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else shown}:{bound}"
    config = uvicorn.Config(
        create_app(state), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)

    def announce() -> None:
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

    threading.Thread(target=announce, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        state.service.close()


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

"""Running a request's job on the generation service, and answering it the OpenAI way.

A completion is answered whole or as server-sent events; `Shape` holds what differs
between /v1/chat/completions and /v1/completions, so each is written once here.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Callable, Optional

from fastapi import Request
from sse_starlette.sse import EventSourceResponse

from runtime.serve.jobs import Job
from runtime.serve.openai_models import APIError
from runtime.serve.service import Busy, Lost, Service


@dataclass(frozen=True)
class Shape:
    """An endpoint's object names, and the fields of its choices."""

    prefix: str  # of the response id
    whole: str  # the object name of a whole response
    chunk: str  # the object name of a streamed chunk
    answer: Callable[[str], dict[str, Any]]  # a whole response's choice, given all the text
    piece: Callable[[str], dict[str, Any]]  # a chunk's choice, given its text
    opening: Optional[dict[str, Any]]  # the choice of a chunk sent before any text
    closing: dict[str, Any]  # the choice of the chunk that carries the finish reason


CHAT = Shape(
    prefix="chatcmpl",
    whole="chat.completion",
    chunk="chat.completion.chunk",
    answer=lambda text: {"message": {"role": "assistant", "content": text}},
    piece=lambda text: {"delta": {"content": text}},
    opening={"delta": {"role": "assistant", "content": ""}},
    closing={"delta": {}},
)

TEXT = Shape(
    prefix="cmpl",
    whole="text_completion",
    chunk="text_completion",
    answer=lambda text: {"text": text, "logprobs": None},
    piece=lambda text: {"text": text, "logprobs": None},
    opening=None,
    closing={"text": "", "logprobs": None},
)


async def answer(
    service: Service, model_id: str, shape: Shape, job: Job, request: Request, stream: bool
) -> Any:
    """Run `job`: the whole response once it is done, or a stream of chunks as they come."""
    if stream:
        return _stream(service, model_id, shape, job, request)
    text, done = await _collect(service, job, request)
    return {
        "id": f"{shape.prefix}-{secrets.token_hex(12)}",
        "object": shape.whole,
        "created": int(time.time()),
        "model": model_id,
        "choices": [_choice(shape.answer(text), done["finish_reason"])],
        "usage": _usage(job, done),
    }


async def embedding(service: Service, job: Job, request: Request) -> list[float]:
    """Run the embedding `job`: its vector."""
    events = _attach(job)
    _submit(service, job)
    kind, value = await _next(events, job, request)
    if kind == "error":
        _raise(value)
    return list(value)


def _choice(fields: dict[str, Any], finish: Optional[str]) -> dict[str, Any]:
    return {"index": 0, **fields, "finish_reason": finish}


def _usage(job: Job, done: dict[str, Any]) -> dict[str, int]:
    prompt, completion = len(job.prompt), int(done["completion_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _attach(job: Job) -> asyncio.Queue[tuple[str, Any]]:
    """Route the worker thread's events for `job` into an asyncio queue on this loop."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_event(kind: str, value: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    job.on_event = on_event
    return events


def _submit(service: Service, job: Job) -> None:
    try:
        service.submit(job)
    except Busy as exc:
        raise APIError(
            503, f"the server is busy: {exc}; try again shortly", "server_busy"
        ) from None
    except Lost as exc:
        raise APIError(503, f"the model cannot run: {exc}", "engine_lost") from None


async def _next(
    events: asyncio.Queue[tuple[str, Any]], job: Job, request: Request
) -> tuple[str, Any]:
    """The job's next event; cancels the job when the client has gone away meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancel()
                raise asyncio.CancelledError() from None


def _raise(exc: Exception) -> None:
    from runtime.engine.model import EngineError

    if isinstance(exc, Lost):
        raise APIError(503, f"the model cannot run: {exc}", "engine_lost") from None
    if isinstance(exc, EngineError):
        raise APIError(400, str(exc), "invalid_request") from None
    raise exc


async def _collect(service: Service, job: Job, request: Request) -> tuple[str, dict[str, Any]]:
    job.stream = False
    events = _attach(job)
    _submit(service, job)
    try:
        while True:
            kind, value = await _next(events, job, request)
            if kind == "error":
                _raise(value)
            elif kind == "done":
                return "".join(job.parts), value
    finally:
        job.cancel()


def _stream(
    service: Service, model_id: str, shape: Shape, job: Job, request: Request
) -> EventSourceResponse:
    events = _attach(job)
    _submit(service, job)  # before the response starts: a busy server still answers 503
    ident = f"{shape.prefix}-{secrets.token_hex(12)}"
    created = int(time.time())

    def chunk(fields: dict[str, Any], finish: Optional[str] = None) -> dict[str, str]:
        body = {
            "id": ident,
            "object": shape.chunk,
            "created": created,
            "model": model_id,
            "choices": [_choice(fields, finish)],
        }
        return {"data": json.dumps(body)}

    async def produce() -> AsyncIterator[dict[str, str]]:
        try:
            if shape.opening is not None:
                yield chunk(shape.opening)
            while True:
                kind, value = await _next(events, job, request)
                if kind == "text":
                    yield chunk(shape.piece(value))
                elif kind == "error":
                    message = {"error": {"message": str(value), "type": "server_error"}}
                    yield {"data": json.dumps(message)}
                    break
                elif kind == "done":
                    yield chunk(shape.closing, value["finish_reason"])
                    break
            yield {"data": "[DONE]"}
        finally:
            job.cancel()  # a client that went away stops its own generation

    return EventSourceResponse(produce(), ping=15)

"""Running a request's jobs on the generation service, and answering it the OpenAI way.

A request with `n` choices is `n` jobs, each in its own slot. A completion is answered whole
or as server-sent events; `choices` reads the text, the same way for chat and completions.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Callable, Optional

from fastapi import Request
from sse_starlette.sse import EventSourceResponse

from runtime.serve import choices
from runtime.serve.errors import APIError
from runtime.serve.jobs import Job
from runtime.serve.service import Busy, Lost, Service

Events = asyncio.Queue[tuple[int, str, Any]]
# Called once a job is done: (job, its "done" event, seconds since it was submitted).
Observer = Callable[[Job, dict[str, Any], float], None]


def _names(chat: bool) -> tuple[str, str, str]:
    if chat:
        return "chatcmpl", "chat.completion", "chat.completion.chunk"
    return "cmpl", "text_completion", "text_completion"


async def answer(
    service: Service,
    model_id: str,
    reading: choices.Reading,
    jobs: list[Job],
    request: Request,
    stream: bool,
    include_usage: bool = False,
    observe: Optional[Observer] = None,
) -> Any:
    """Run `jobs` (one per choice): the whole response once done, or a stream of chunks."""
    prefix, whole, _ = _names(reading.chat)
    if stream:
        return _stream(service, model_id, reading, jobs, request, include_usage, observe)
    for job in jobs:
        job.stream = False
    events = _attach(jobs)
    started = time.monotonic()
    _submit(service, jobs)
    dones: dict[int, dict[str, Any]] = {}
    try:
        while len(dones) < len(jobs):
            index, kind, value = await _next(events, jobs, request)
            if kind == "error":
                _raise(value)
            elif kind == "done":
                dones[index] = value
                if observe:
                    observe(jobs[index], value, time.monotonic() - started)
    finally:
        for job in jobs:
            job.cancel()
    picked = [
        {"index": i, **choices.whole(reading, job, "".join(job.parts), dones[i]["finish_reason"])}
        for i, job in enumerate(jobs)
    ]
    return {
        "id": f"{prefix}-{secrets.token_hex(12)}",
        "object": whole,
        "created": int(time.time()),
        "model": model_id,
        "choices": picked,
        "usage": usage(jobs, dones),
        "timings": timings(dones),
    }


async def collect(service: Service, job: Job, request: Request) -> tuple[str, dict[str, Any]]:
    """Run one job to its end without streaming: its text and its "done" event."""
    job.stream = False
    events = start(service, [job])
    try:
        while True:
            _, kind, value = await _next(events, [job], request)
            if kind == "error":
                _raise(value)
            elif kind == "done":
                return "".join(job.parts), value
    finally:
        job.cancel()


async def embedding(service: Service, job: Job, request: Request) -> list[float]:
    """Run the embedding `job`: its vector."""
    events = _attach([job])
    _submit(service, [job])
    _, kind, value = await _next(events, [job], request)
    if kind == "error":
        _raise(value)
    return list(value)


def usage(jobs: list[Job], dones: dict[int, dict[str, Any]]) -> dict[str, int]:
    """Tokens read (the prompt once: the choices share it) and written (by all choices)."""
    prompt = len(jobs[0].prompt) if jobs else 0
    completion = sum(int(d["completion_tokens"]) for d in dones.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def timings(dones: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """llama-server's `timings` of a reply: the prompt's and the generation's tokens and
    milliseconds, and with speculation the draft tokens verified and accepted (summed over
    the choices; the prompt is read once)."""
    spent = [d["timings"] for d in dones.values() if "timings" in d]
    if not spent:
        return {}
    out: dict[str, Any] = {"prompt_n": spent[0]["prompt_n"], "prompt_ms": spent[0]["prompt_ms"]}
    out["predicted_n"] = sum(t["predicted_n"] for t in spent)
    out["predicted_ms"] = max(t["predicted_ms"] for t in spent)
    for what in ("prompt", "predicted"):
        n, ms = out[f"{what}_n"], out[f"{what}_ms"]
        out[f"{what}_per_token_ms"] = ms / n if n else 0.0
        out[f"{what}_per_second"] = 1000.0 * n / ms if ms else 0.0
    if any("draft_n" in t for t in spent):
        out["draft_n"] = sum(t.get("draft_n", 0) for t in spent)
        out["draft_n_accepted"] = sum(t.get("draft_n_accepted", 0) for t in spent)
        out["draft_steps"] = sum(t.get("draft_steps", 0) for t in spent)  # not llama-server's
    return out


def _attach(jobs: list[Job]) -> Events:
    """Route the worker thread's events for `jobs` into one asyncio queue on this loop."""
    loop = asyncio.get_running_loop()
    events: Events = asyncio.Queue()
    for index, job in enumerate(jobs):

        def on_event(kind: str, value: Any, index: int = index) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (index, kind, value))

        job.on_event = on_event
    return events


def _submit(service: Service, jobs: list[Job]) -> None:
    try:
        for job in jobs:
            service.submit(job)
    except Busy as exc:
        for job in jobs:
            job.cancel()
        raise APIError(
            503, f"the server is busy: {exc}; try again shortly", "server_busy"
        ) from None
    except Lost as exc:
        raise APIError(503, f"the model cannot run: {exc}", "engine_lost") from None


async def _next(events: Events, jobs: list[Job], request: Request) -> tuple[int, str, Any]:
    """The jobs' next event; cancels them when the client has gone away meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                for job in jobs:
                    job.cancel()
                raise asyncio.CancelledError() from None


def _raise(exc: Exception) -> None:
    from runtime.engine.decoding.model import EngineError

    if isinstance(exc, Lost):
        raise APIError(503, f"the model cannot run: {exc}", "engine_lost") from None
    if isinstance(exc, EngineError):
        raise APIError(400, str(exc), "invalid_request") from None
    raise exc


def start(service: Service, jobs: list[Job]) -> Events:
    """Submit `jobs` for a streamed reply (a busy server still answers 503 before it starts)."""
    events = _attach(jobs)
    _submit(service, jobs)
    return events


async def deltas(
    events: Events,
    reading: choices.Reading,
    jobs: list[Job],
    request: Request,
    observe: Optional[Observer],
) -> AsyncIterator[tuple[str, Any]]:
    """The streamed reply as ("choice", (index, fields, finish)), then ("timings", …) and
    ("usage", …), or ("error", …)."""
    started = time.monotonic()
    readers = [choices.Streamer(reading, job) for job in jobs]
    dones: dict[int, dict[str, Any]] = {}
    try:
        while len(dones) < len(jobs):
            index, kind, value = await _next(events, jobs, request)
            if kind == "text":
                for fields in readers[index].text(value):
                    yield "choice", (index, fields, None)
            elif kind == "error":
                yield "error", str(value)
                return
            elif kind == "done":
                dones[index] = value
                if observe:
                    observe(jobs[index], value, time.monotonic() - started)
                last, finish = readers[index].done(value["finish_reason"])
                for fields in last:
                    yield "choice", (index, fields, None)
                closing: dict[str, Any] = (
                    {"delta": {}} if reading.chat else {"text": "", "logprobs": None}
                )
                yield "choice", (index, closing, finish)
        yield "timings", timings(dones)
        yield "usage", usage(jobs, dones)
    finally:
        for job in jobs:
            job.cancel()  # a client that went away stops its own generation


def _stream(
    service: Service,
    model_id: str,
    reading: choices.Reading,
    jobs: list[Job],
    request: Request,
    include_usage: bool,
    observe: Optional[Observer],
) -> EventSourceResponse:
    events = start(service, jobs)
    prefix, _, object_name = _names(reading.chat)
    ident = f"{prefix}-{secrets.token_hex(12)}"
    created = int(time.time())

    def chunk(picked: list[dict[str, Any]], **extra: Any) -> dict[str, str]:
        body = {
            "id": ident,
            "object": object_name,
            "created": created,
            "model": model_id,
            "choices": picked,
            **({"usage": None} if include_usage else {}),
            **extra,
        }
        return {"data": json.dumps(body)}

    async def produce() -> AsyncIterator[dict[str, str]]:
        if reading.chat:
            for i in range(len(jobs)):
                opening = {"delta": {"role": "assistant", "content": ""}}
                yield chunk([{"index": i, **opening, "finish_reason": None}])
        spent: dict[str, Any] = {}
        async for kind, value in deltas(events, reading, jobs, request, observe):
            if kind == "choice":
                index, fields, finish = value
                yield chunk([{"index": index, **fields, "finish_reason": finish}])
            elif kind == "error":
                yield {"data": json.dumps({"error": {"message": value, "type": "server_error"}})}
            elif kind == "timings":
                spent = value
            elif kind == "usage" and include_usage:
                yield chunk([], usage=value, timings=spent)
        yield {"data": "[DONE]"}

    return EventSourceResponse(produce(), ping=15)

"""Running an Ollama request's job on the generation service, and answering it Ollama's way.

Streaming is Ollama's default: one JSON object per line (NDJSON), each with `done: false`,
then a last one with `done: true` and the request's counts and durations in nanoseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from runtime.serve import replies
from runtime.serve.jobs import Job
from runtime.serve.service import Service

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def now_iso() -> str:
    """The time as Ollama writes it: RFC 3339, UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class ThinkSplit:
    """Separates the text inside <think>…</think> from the reply, piece by piece."""

    def __init__(self) -> None:
        self.inside = False
        self.held = ""  # text that may be the start of a marker

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, content) of `text`, holding back what may be half a marker."""
        text = self.held + text
        self.held = ""
        thinking: list[str] = []
        content: list[str] = []
        while text:
            marker = THINK_CLOSE if self.inside else THINK_OPEN
            at = text.find(marker)
            if at >= 0:
                (thinking if self.inside else content).append(text[:at])
                text = text[at + len(marker) :]
                self.inside = not self.inside
                continue
            keep = _partial(text, marker)
            (thinking if self.inside else content).append(text[: len(text) - keep])
            self.held = text[len(text) - keep :]
            break
        return "".join(thinking), "".join(content)

    def flush(self) -> tuple[str, str]:
        held, self.held = self.held, ""
        return (held, "") if self.inside else ("", held)


def _partial(text: str, marker: str) -> int:
    """How many characters at the end of `text` begin `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


@dataclass
class Reply:
    """What one /api/chat or /api/generate request is answered with."""

    model_id: str
    chat: bool  # /api/chat (a message) or /api/generate (a response)
    think: bool  # split <think>…</think> into `thinking`
    started: float  # perf_counter when the request arrived
    headers: dict[str, str]
    context: Optional[Any] = None  # engine.Model, for /api/generate's `context` tokens

    def fields(self, content: str, thinking: str) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if self.think:
                message["thinking"] = thinking
            return {"message": message}
        out: dict[str, Any] = {"response": content}
        if self.think:
            out["thinking"] = thinking
        return out

    def line(self, content: str, thinking: str, done: bool) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "created_at": now_iso(),
            **self.fields(content, thinking),
            "done": done,
        }

    def final(self, job: Job, done: dict[str, Any], text: str) -> dict[str, Any]:
        end = time.perf_counter()
        first = job.first_text or end
        out: dict[str, Any] = {
            "done_reason": done["finish_reason"],
            "total_duration": ns(end - self.started),
            "load_duration": ns(job.arrived - self.started),  # templating and tokenizing
            "prompt_eval_count": len(job.prompt),
            "prompt_eval_duration": ns(first - job.arrived),
            "eval_count": int(done["completion_tokens"]),
            "eval_duration": ns(end - first),
        }
        if self.context is not None:
            out["context"] = job.prompt + self.context.tokenize(text, add_special=False)
        return out


async def answer(service: Service, reply: Reply, job: Job, request: Request, stream: bool) -> Any:
    """Run `job`: the whole reply once it is done, or a stream of lines as they come."""
    split = ThinkSplit() if reply.think else None
    if not stream:
        text, done = await replies.collect(service, job, request)
        thinking, content = ("", text)
        if split is not None:
            thinking, content = _join(split.feed(text), split.flush())
        body = {**reply.line(content, thinking, True), **reply.final(job, done, text)}
        return JSONResponse(body, headers=reply.headers)
    events = replies.start(service, [job])  # before the response: a busy server answers 503

    async def produce() -> AsyncIterator[bytes]:
        said: list[str] = []
        try:
            while True:
                _, kind, value = await replies._next(events, [job], request)
                if kind == "text":
                    said.append(value)
                    thinking, content = split.feed(value) if split else ("", value)
                    if thinking or content:
                        yield _ndjson(reply.line(content, thinking, False))
                elif kind == "error":
                    yield _ndjson({"error": str(value)})
                    break
                elif kind == "done":
                    thinking, content = split.flush() if split else ("", "")
                    last = reply.line(content, thinking, True)
                    yield _ndjson({**last, **reply.final(job, value, "".join(said))})
                    break
        finally:
            job.cancel()  # a client that went away stops its own generation

    return StreamingResponse(produce(), media_type="application/x-ndjson", headers=reply.headers)


def loaded(model_id: str, chat: bool) -> dict[str, Any]:
    """Ollama's answer to a request with no prompt: the model is loaded (it always is here)."""
    fields: dict[str, Any] = {"message": {"role": "assistant", "content": ""}} if chat else {}
    if not chat:
        fields["response"] = ""
    return {
        "model": model_id,
        "created_at": now_iso(),
        **fields,
        "done": True,
        "done_reason": "load",
    }


def _join(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    return a[0] + b[0], a[1] + b[1]


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()

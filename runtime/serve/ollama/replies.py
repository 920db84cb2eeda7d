"""Running an Ollama request's job on the generation service, and answering it Ollama's way.

Streaming is Ollama's default: one JSON object per line (NDJSON), each with `done: false`,
then a last one with `done: true` and the request's counts and durations in nanoseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from runtime.chat import reasoning, tools
from runtime.serve import replies
from runtime.serve.jobs import Job
from runtime.serve.service import Service


def now_iso() -> str:
    """The time as Ollama writes it: RFC 3339, UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


class Reader:
    """Reads a chat reply's text as it comes, with the OpenAI routes' own readers: the thinking
    apart (chat/reasoning.py) and tool calls held back, then parsed (chat/tools.py)."""

    def __init__(self, think: bool, opened: bool, known: list[str]) -> None:
        self.thinking = reasoning.ReasoningStream(opened) if think else None
        self.calls = tools.ToolStream(known) if known else None

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, content) that may be sent now."""
        return self._sort(self.thinking.feed(text) if self.thinking else [("content", text)])

    def finish(self) -> tuple[str, str, list[dict[str, Any]]]:
        """The (thinking, content) held back, and the tool calls found, in Ollama's shape."""
        thought, content = self._sort(self.thinking.finish() if self.thinking else [])
        if self.calls is None:
            return thought, content, []
        held = self.calls.held
        rest, found = self.calls.finish()
        calls = ollama_calls(found)
        if found and calls is None:  # arguments that are not an object: not a call Ollama has
            return thought, content + held, []
        return thought, content + rest, calls or []

    def _sort(self, pieces: list[tuple[str, str]]) -> tuple[str, str]:
        thought, content = [], []
        for kind, text in pieces:
            if kind == "reasoning":
                thought.append(text)
            else:
                content.append(self.calls.feed(text) if self.calls else text)
        return "".join(thought), "".join(content)


def whole(text: str, think: bool, opened: bool, known: list[str]) -> tuple[str, str, list[Any]]:
    """(thinking, content, tool calls) of a finished chat reply, read as choices.whole does."""
    thought = ""
    if think:
        thought, text = reasoning.split((reasoning.OPEN if opened else "") + text)
    if not known:
        return thought, text, []
    content, found = tools.parse(text, known)
    calls = ollama_calls(found)
    if not found or calls is None:
        return thought, text, []
    return thought, content, calls


def ollama_calls(found: list[tools.ToolCall]) -> Optional[list[dict[str, Any]]]:
    """Calls as Ollama sends them, arguments an object; None if one's arguments are not."""
    out = []
    for call in found:
        args = json.loads(call.arguments)
        if not isinstance(args, dict):
            return None
        out.append({"function": {"name": call.name, "arguments": args}})
    return out


@dataclass
class Reply:
    """What one /api/chat or /api/generate request is answered with."""

    model_id: str
    chat: bool  # /api/chat (a message) or /api/generate (a response)
    think: bool  # split <think>…</think> into `thinking`
    started: float  # perf_counter when the request arrived
    headers: dict[str, str]
    context: Optional[Any] = None  # engine.Model, for /api/generate's `context` tokens
    tools: list[str] = field(default_factory=list)  # tool names to look for; none: no calls
    opened: bool = False  # the prompt itself opened <think>
    observe: Optional[replies.Observer] = None  # /metrics counts each finished job

    def finished(self, job: Job, done: dict[str, Any]) -> None:
        if self.observe is not None:
            self.observe(job, done, time.perf_counter() - self.started)

    def fields(
        self, content: str, thinking: str, calls: Optional[list[Any]] = None
    ) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if self.think:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            return {"message": message}
        out: dict[str, Any] = {"response": content}
        if self.think:
            out["thinking"] = thinking
        return out

    def line(
        self, content: str, thinking: str, done: bool, calls: Optional[list[Any]] = None
    ) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "created_at": now_iso(),
            **self.fields(content, thinking, calls),
            "done": done,
        }

    def final(self, job: Job, done: dict[str, Any], text: str, called: bool) -> dict[str, Any]:
        end = time.perf_counter()
        first = job.first_text or end
        out: dict[str, Any] = {
            "done_reason": "stop" if called else done["finish_reason"],
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
    """Run `job`: the whole reply once it is done, or a stream of lines as they come.

    Streamed, the prose goes out as it comes and tool calls in one line once the reply is
    done, as Ollama sends them."""
    if not stream:
        text, done = await replies.collect(service, job, request)
        reply.finished(job, done)
        thinking, content, calls = whole(text, reply.think, reply.opened, reply.tools)
        last = reply.line(content, thinking, True, calls)
        body = {**last, **reply.final(job, done, text, bool(calls))}
        return JSONResponse(body, headers=reply.headers)
    events = replies.start(service, [job])  # before the response: a busy server answers 503
    reader = Reader(reply.think, reply.opened, reply.tools)

    async def produce() -> AsyncIterator[bytes]:
        said: list[str] = []
        try:
            while True:
                _, kind, value = await replies._next(events, [job], request)
                if kind == "text":
                    said.append(value)
                    thinking, content = reader.feed(value)
                    if thinking or content:
                        yield _ndjson(reply.line(content, thinking, False))
                elif kind == "error":
                    yield _ndjson({"error": str(value)})
                    break
                elif kind == "done":
                    reply.finished(job, value)
                    thinking, content, calls = reader.finish()
                    if calls:
                        yield _ndjson(reply.line(content, thinking, False, calls))
                        thinking, content = "", ""
                    last = reply.line(content, thinking, True)
                    yield _ndjson({**last, **reply.final(job, value, "".join(said), bool(calls))})
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


def _ndjson(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj) + "\n").encode()

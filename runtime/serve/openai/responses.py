"""/v1/responses, OpenAI's Responses API, stateless: each request carries its conversation.

The request becomes a chat request (input items to messages, instructions to a system
message, tools flattened to chat tools) and runs as one; the reply is shaped as a response
object, or streamed as the Responses API's typed events.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Callable, Optional, Union

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from runtime.serve import replies
from runtime.serve.errors import APIError
from runtime.serve.openai.models import ChatRequest
from runtime.serve.openai.routes import chat_jobs
from runtime.serve.state import ServerState


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    stream: bool = False
    previous_response_id: Optional[str] = None
    text: Optional[dict[str, Any]] = None
    seed: Optional[int] = None


def _message(role: str, content: Any) -> dict[str, Any]:
    """A chat message: text parts, and `input_image` parts as chat image parts."""
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict)]
        kinds = {p.get("type") for p in parts}
        if kinds - {"input_text", "output_text", "text", "input_image"}:
            raise APIError(
                400,
                "input: only text and input_image content can be read by this model",
                "invalid_value",
                "input",
            )
        if "input_image" not in kinds:
            return {"role": role, "content": "".join(str(p.get("text", "")) for p in parts)}
        content = [
            {"type": "input_image", "image_url": p.get("image_url") or ""}
            if p.get("type") == "input_image"
            else {"type": "text", "text": str(p.get("text", ""))}
            for p in parts
        ]
    return {"role": role, "content": content}


def to_chat(body: ResponsesRequest) -> ChatRequest:
    """The chat request that does what `body` asks."""
    if body.previous_response_id:
        raise APIError(
            400,
            "previous_response_id: this server keeps no responses; send the whole conversation in input",
            "unsupported",
            "previous_response_id",
        )
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    items = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(str(item.get("role", "user")), item.get("content", "")))
        elif kind == "function_call":
            call = {
                "id": item.get("call_id", ""),
                "type": "function",
                "function": {
                    "name": item.get("name", ""),
                    "arguments": item.get("arguments", "{}"),
                },
            }
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id", ""),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        elif kind != "reasoning":
            raise APIError(
                400, f"input: items of type {kind!r} are not served", "invalid_value", "input"
            )
    tools = []
    for t in body.tools or []:
        if t.get("type") != "function":
            raise APIError(
                400,
                f"tools: tools of type {t.get('type')!r} are not served here",
                "invalid_value",
                "tools",
            )
        function = {k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}
        tools.append({"type": "function", "function": function})
    choice: Any = body.tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        choice = {"type": "function", "function": {"name": choice.get("name", "")}}
    fmt = (body.text or {}).get("format")
    response_format = None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        response_format = {"type": "json_schema", "json_schema": {"schema": fmt.get("schema", {})}}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        response_format = {"type": "json_object"}
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "tools": tools or None,
        "tool_choice": choice,
        "parallel_tool_calls": body.parallel_tool_calls,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "response_format": response_format,
    }
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise APIError(400, f"{where}: {first.get('msg')}", "invalid_value", where) from None


def router(state: ServerState, authorize: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(authorize)])

    @api.post("/v1/responses", response_model=None)
    async def create(body: ResponsesRequest, request: Request) -> Any:
        chat = to_chat(body)
        reading, jobs = await run_in_threadpool(chat_jobs, state, chat)
        observe = state.metrics.observe if state.metrics else None
        shell = Shell(state.model_id, body)
        if body.stream:
            events = replies.start(state.service, jobs)
            return EventSourceResponse(
                shell.events(replies.deltas(events, reading, jobs, request, observe)), ping=15
            )
        whole = await replies.answer(
            state.service, state.model_id, reading, jobs, request, False, observe=observe
        )
        picked = whole["choices"][0]
        return shell.response(
            "completed" if picked["finish_reason"] != "length" else "incomplete",
            _items(picked["message"]),
            whole["usage"],
        )

    return api


def _ident(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat message as Responses output items."""
    out: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        text = message["reasoning_content"]
        out.append(_reasoning(_ident("rs"), text))
    if message.get("content"):
        out.append(_text_item(_ident("msg"), message["content"], "completed"))
    for call in message.get("tool_calls") or []:
        fn = call["function"]
        out.append(_call_item(_ident("fc"), call["id"], fn["name"], fn["arguments"], "completed"))
    return out


def _reasoning(ident: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": ident,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _text_item(ident: str, text: Optional[str], status: str) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": ident,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(ident: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": ident,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class Shell:
    """A response's fixed fields, and its streamed events."""

    def __init__(self, model_id: str, body: ResponsesRequest) -> None:
        self.id, self.created, self.model_id, self.body = (
            _ident("resp"),
            int(time.time()),
            model_id,
            body,
        )
        self.sequence = 0

    def response(
        self, status: str, output: list[dict[str, Any]], used: Optional[dict[str, int]]
    ) -> dict[str, Any]:
        b = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model_id,
            "output": output,
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": None,
            "temperature": b.temperature,
            "top_p": b.top_p,
            "tool_choice": b.tool_choice or "auto",
            "tools": b.tools or [],
            "text": b.text or {"format": {"type": "text"}},
            "truncation": "disabled",
            "store": False,
            "metadata": {},
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "usage": None
            if used is None
            else {
                "input_tokens": used["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": used["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": used["total_tokens"],
            },
        }

    def event(self, kind: str, **fields: Any) -> dict[str, str]:
        body = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return {"event": kind, "data": json.dumps(body)}

    async def events(self, source: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[dict[str, str]]:
        yield self.event("response.created", response=self.response("in_progress", [], None))
        yield self.event("response.in_progress", response=self.response("in_progress", [], None))
        output: list[dict[str, Any]] = []
        open_item: Optional[dict[str, Any]] = None  # the item whose deltas are arriving
        texts: dict[str, str] = {}  # item id: its text so far
        finish: Optional[str] = None

        def close() -> list[dict[str, str]]:
            nonlocal open_item
            if open_item is None:
                return []
            item, open_item = open_item, None
            at, text = len(output), texts.get(item["id"], "")
            out = []
            if item["type"] == "message":
                part = {"type": "output_text", "text": text, "annotations": []}
                common = {"item_id": item["id"], "output_index": at, "content_index": 0}
                out.append(self.event("response.output_text.done", text=text, **common))
                out.append(self.event("response.content_part.done", part=part, **common))
                item = _text_item(item["id"], text, "completed")
            elif item["type"] == "reasoning":
                item = _reasoning(item["id"], text)
            else:
                common = {"item_id": item["id"], "output_index": at}
                out.append(
                    self.event("response.function_call_arguments.done", arguments=text, **common)
                )
                item = _call_item(item["id"], item["call_id"], item["name"], text, "completed")
            output.append(item)
            out.append(self.event("response.output_item.done", output_index=at, item=item))
            return out

        def opening(item: dict[str, Any]) -> list[dict[str, str]]:
            nonlocal open_item
            out = close()
            open_item = item
            out.append(
                self.event("response.output_item.added", output_index=len(output), item=item)
            )
            if item["type"] == "message":
                part = {"type": "output_text", "text": "", "annotations": []}
                out.append(
                    self.event(
                        "response.content_part.added",
                        item_id=item["id"],
                        output_index=len(output),
                        content_index=0,
                        part=part,
                    )
                )
            return out

        async for kind, value in source:
            if kind == "error":
                yield self.event("error", message=value, code="server_error")
                return
            if kind == "timings":
                continue
            if kind == "usage":
                for e in close():
                    yield e
                status = "incomplete" if finish == "length" else "completed"
                yield self.event(
                    f"response.{status}", response=self.response(status, output, value)
                )
                continue
            _, fields, done = value
            finish = done or finish
            delta = fields.get("delta", {})
            events: list[dict[str, str]] = []
            if delta.get("reasoning_content"):
                if open_item is None or open_item["type"] != "reasoning":
                    events += opening({"type": "reasoning", "id": _ident("rs"), "summary": []})
                assert open_item is not None
                texts[open_item["id"]] = texts.get(open_item["id"], "") + delta["reasoning_content"]
            if delta.get("content"):
                if open_item is None or open_item["type"] != "message":
                    events += opening(_text_item(_ident("msg"), None, "in_progress"))
                assert open_item is not None
                texts[open_item["id"]] = texts.get(open_item["id"], "") + delta["content"]
                events.append(
                    self.event(
                        "response.output_text.delta",
                        item_id=open_item["id"],
                        output_index=len(output),
                        content_index=0,
                        delta=delta["content"],
                    )
                )
            for call in delta.get("tool_calls") or []:
                if "id" in call:
                    name = call["function"]["name"]
                    events += opening(_call_item(_ident("fc"), call["id"], name, "", "in_progress"))
                piece = call.get("function", {}).get("arguments", "")
                if piece and open_item is not None:
                    texts[open_item["id"]] = texts.get(open_item["id"], "") + piece
                    events.append(
                        self.event(
                            "response.function_call_arguments.delta",
                            item_id=open_item["id"],
                            output_index=len(output),
                            delta=piece,
                        )
                    )
            for e in events:
                yield e

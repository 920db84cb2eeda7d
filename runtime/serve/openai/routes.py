"""OpenAI's /v1 routes: models, chat completions, completions, embeddings.

Each request is checked here (a bad field is a 400 naming it), turned into one job per
choice, and answered by `replies`.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from typing import Any, Callable, Optional, Union

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from runtime.chat import templates, tools
from runtime.engine.decoding import grammar
from runtime.engine.decoding.logprobs import MAX_TOP
from runtime.serve import choices, media, replies
from runtime.serve.errors import APIError
from runtime.serve.jobs import Job, sampling_asked
from runtime.serve.openai.models import (
    MAX_STOPS,
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    ContentPart,
    EmbeddingRequest,
    GenerationFields,
    ImageURL,
)
from runtime.serve.state import ServerState

IMAGE_PARTS = ("image_url", "input_image")


def router(state: ServerState, authorize: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(authorize)])

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        entry = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "llamapyz",
            "meta": {"n_ctx": state.model.n_ctx, "n_ctx_train": state.model.n_ctx_train},
        }
        return {"object": "list", "data": [entry]}

    async def answer(body: Any, reading: Any, jobs: Any, request: Request) -> Any:
        """The reply to a chat or completion request, whole or streamed."""
        return await replies.answer(
            state.service,
            state.model_id,
            reading,
            jobs,
            request,
            body.stream,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            observe=state.metrics.observe if state.metrics else None,
        )

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        # Off the event loop: images are fetched, decoded and tokenized on the way.
        reading, jobs = await run_in_threadpool(chat_jobs, state, body)
        return await answer(body, reading, jobs, request)

    @api.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(
                400,
                "prompt: give one prompt (a string, or a list of one)",
                "invalid_value",
                "prompt",
            )
        if body.echo:
            raise APIError(400, "echo: this server cannot echo the prompt", "unsupported", "echo")
        if body.suffix:
            raise APIError(
                400, "suffix: fill-in-the-middle is not served here", "unsupported", "suffix"
            )
        reading = choices.Reading(chat=False, model=state.model, logprobs=body.logprobs)
        jobs = make_jobs(state, body, prompts[0], body.max_tokens or 16, (), reading)
        return await answer(body, reading, jobs, request)

    @api.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
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

    return api


def messages_of(
    body: list[ChatMessage], state: Optional[ServerState] = None, seen: Optional[list[Any]] = None
) -> list[dict[str, Any]]:
    """The conversation as the chat templates take it; with `seen`, its images go there
    (checked, in order) and the projector's marker where each stood."""
    out = []
    for i, m in enumerate(body):
        content = _text(m.content, i, state, seen)
        entry: dict[str, Any] = {"role": _role(m.role), "content": content}
        if m.tool_calls:
            entry["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        if m.name:
            entry["name"] = m.name
        out.append(entry)
    return out


def chat_jobs(state: ServerState, body: ChatRequest) -> tuple[choices.Reading, list[Job]]:
    """The reading and the jobs of a chat request: its tools, template and sampling."""
    defs = [t.model_dump(exclude_none=True) for t in body.tools or []]
    choice = body.tool_choice or ("auto" if defs else "none")
    forced: Optional[str] = None  # a grammar for the call the request insists on
    if choice != "none" and choice != "auto":
        if not defs:
            raise APIError(
                400,
                "tool_choice: it asks for a tool call, but no tools are given",
                "invalid_value",
                "tool_choice",
            )
        only = None if choice == "required" else choice.function.name
        if only is not None and only not in tools.names(defs):
            raise APIError(
                400,
                f"tool_choice: there is no tool named {only!r} in tools",
                "invalid_value",
                "tool_choice",
            )
        if body.response_format is not None and body.response_format.type != "text":
            raise APIError(
                400,
                "response_format: it cannot be combined with a required tool call",
                "invalid_value",
                "response_format",
            )
        try:
            forced = grammar.from_schema(tools.call_schema(defs, only))
        except grammar.GrammarError as exc:
            raise APIError(400, f"tools: {exc}", "invalid_value", "tools") from None
    offered = defs if choice != "none" else None
    seen: list[Any] = []
    messages = messages_of(body.messages, state, seen)
    try:
        prompt_text = templates.render(state.fmt, messages, state.model, offered)
    except templates.TemplateError as exc:
        raise APIError(400, str(exc), "invalid_messages", "messages") from None
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(
            400, "top_logprobs: it needs logprobs set to true", "invalid_value", "top_logprobs"
        )
    reading = choices.Reading(
        chat=True,
        model=state.model,
        tools=tools.names(defs) if offered else [],
        reasoning=state.reasoning_format != "none",
        opened=prompt_text.rstrip().endswith("<think>"),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        parallel=body.parallel_tool_calls is not False,
    )
    limit = body.max_completion_tokens or body.max_tokens or state.n_predict
    jobs = make_jobs(state, body, prompt_text, limit, state.fmt.stops, reading, forced, seen)
    return reading, jobs


def _role(role: str) -> str:
    return "system" if role == "developer" else role


def _text(
    content: Union[str, list[ContentPart], None],
    i: int,
    state: Optional[ServerState],
    seen: Optional[list[Any]],
) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    text = []
    for j, part in enumerate(content):
        if part.type in ("text", "input_text", "output_text"):
            text.append(part.text or "")
            continue
        if part.type not in IMAGE_PARTS or state is None or seen is None:
            raise APIError(
                400,
                f"messages: a content part of type {part.type!r} cannot be read by this model",
                "invalid_value",
                "messages",
            )
        where = f"messages[{i}].content[{j}]"
        text.append(media.marker(state, where, "messages"))
        url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
        if not url:
            raise APIError(400, f"{where}: give its image_url", "invalid_value", "messages")
        seen.append(media.image(state, url, where, "messages"))
    return "".join(text)


def _biases(state: ServerState, bias: Optional[dict[str, float]]) -> tuple[tuple[int, float], ...]:
    out = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < state.model.n_vocab:
            raise APIError(
                400,
                f"logit_bias: {key!r} is not a token id of this model (0 to {state.model.n_vocab - 1})",
                "invalid_value",
                "logit_bias",
            )
        if not -100 <= value <= 100:
            raise APIError(
                400, "logit_bias: biases go from -100 to 100", "invalid_value", "logit_bias"
            )
        out.append((token, float(value)))
    return tuple(out)


def make_jobs(
    state: ServerState,
    body: GenerationFields,
    prompt_text: str,
    n_predict: int,
    stops: tuple[str, ...],
    reading: choices.Reading,
    forced: Optional[str] = None,
    seen: Optional[list[Any]] = None,
) -> list[Job]:
    """One job per choice (`n`), each with the request's sampling and its own seed; the
    prompt's images (`seen`) where its markers are."""
    param = "messages" if isinstance(body, ChatRequest) else "prompt"
    tokens = media.tokens(state, prompt_text, seen or [], param)
    if not tokens:
        raise APIError(400, f"{param}: the prompt is empty", "invalid_value", param)
    if len(tokens) >= state.model.n_ctx:
        raise APIError(
            400,
            f"the prompt is {len(tokens)} tokens, longer than the context of {state.model.n_ctx}",
            "context_length_exceeded",
            param,
        )
    if body.n > state.service.slots:
        raise APIError(
            400,
            f"n: this server runs {state.service.slots} requests at once (--parallel), so n is at most that",
            "invalid_value",
            "n",
        )
    extra = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(extra) > MAX_STOPS or any(not s for s in extra):
        raise APIError(
            400, f"stop: give up to {MAX_STOPS} non-empty strings", "invalid_value", "stop"
        )
    gbnf = forced
    if body.response_format is not None and body.response_format.type != "text":
        try:
            gbnf = grammar.from_response_format(
                body.response_format.type, body.response_format.json_schema
            )
        except grammar.GrammarError as exc:
            raise APIError(400, str(exc), "invalid_value", "response_format") from None
    sampling = sampling_asked(
        state.defaults,
        temp=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repeat_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=_biases(state, body.logit_bias),
        seed=None if body.seed is None else body.seed & 0xFFFFFFFF,
        grammar=gbnf,
    )
    top = reading.logprobs
    if top is not None and top > MAX_TOP:
        raise APIError(400, f"logprobs: at most {MAX_TOP}", "invalid_value", "logprobs")
    all_stops = tuple(stops) + state.stops + extra
    jobs = []
    for i in range(body.n):
        # Each choice samples on its own: the same seed would give n equal answers.
        seed = sampling.seed if sampling.seed == 0xFFFFFFFF else (sampling.seed + i) & 0xFFFFFFFF
        jobs.append(
            Job(
                prompt=tokens,
                n_predict=n_predict,
                sampling=replace(sampling, seed=seed),
                stops=all_stops,
                logprobs=top,
            )
        )
    return jobs

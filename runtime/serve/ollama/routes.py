"""Ollama's native API (/api/*) on the server's port, over the same generation service.

Requests become the service's Jobs, as the OpenAI routes' do, so both dialects share one
scheduler; `ollama/replies.py` turns the service's events into Ollama's NDJSON lines. Errors
are `{"error": "..."}` (app.py's handlers give every /api/ path that shape).
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from runtime.chat import reasoning, templates, tools
from runtime.engine.decoding import facts, grammar
from runtime.serve import media, replies
from runtime.serve.errors import APIError
from runtime.serve.jobs import Job, sampling_asked
from runtime.serve.ollama import facts as ollama_facts
from runtime.serve.ollama import replies as ollama_replies
from runtime.serve.ollama.models import (
    LOAD_OPTIONS,
    UNSUPPORTED_OPTIONS,
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    GenerationRequest,
    Message,
    Options,
    ShowRequest,
)

CONTEXT_HEADER = "X-Context-Length"  # the context a request was answered within


def bad(message: str, field: Optional[str] = None) -> APIError:
    return APIError(400, message, "invalid_value", field)


def named(model: Optional[str], chat: bool = False) -> None:
    """Refuse a request that names no model, in Ollama's words: it requires `model` on
    /api/* (the OpenAI routes here serve the loaded model without one, as llama-server does)."""
    if model:
        return
    if chat:  # /api/chat and /api/show
        raise APIError(400, "model is required", "invalid_value", "model")
    raise APIError(404, "model '' not found", "not_found", "model")


def router(state: Any, authorize: Any) -> APIRouter:
    """The /api/* routes serving `state` (app.ServerState)."""
    api = APIRouter(dependencies=[Depends(authorize)])
    model = state.model

    def name() -> str:
        return ollama_facts.tagged(state.model_id)

    @api.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": ollama_facts.VERSION}

    @api.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [ollama_facts.listing(model, state.model_id)]}

    @api.get("/api/ps")
    async def ps() -> dict[str, Any]:
        return {"models": [ollama_facts.running(model, state.model_id)]}

    @api.post("/api/show")
    async def show(body: ShowRequest) -> dict[str, Any]:
        named(body.model or body.name, chat=True)
        return ollama_facts.show(model, state.model_id, state.fmt, state.defaults, state.vision)

    @api.post("/api/chat", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Any:
        started = time.perf_counter()
        named(body.model, chat=True)
        think = _common(state, body)
        if not body.messages:
            return ollama_replies.loaded(name(), chat=True)
        defs = [t.model_dump(exclude_none=True) for t in body.tools or []]
        seen: list[Any] = []
        messages = await run_in_threadpool(messages_of, body.messages, state, seen)
        try:
            text = templates.render(state.fmt, messages, model, defs or None)
        except templates.TemplateError as exc:
            raise bad(str(exc), "messages") from None
        tokens = await run_in_threadpool(media.tokens, state, text, seen, "messages")
        job, window = _job(state, body, tokens, state.fmt.stops)
        reply = _reply(state, True, think, started, window)
        reply.tools = tools.names(defs)
        reply.opened = think and text.rstrip().endswith(reasoning.OPEN)
        return await ollama_replies.answer(state.service, reply, job, request, body.stream)

    @api.post("/api/generate", response_model=None)
    async def generate(body: GenerateRequest, request: Request) -> Any:
        started = time.perf_counter()
        named(body.model)
        think = _common(state, body)
        if body.template:
            raise bad(
                "template: a request's own (Go) template is not supported; "
                "send the prompt ready-made with raw: true",
                "template",
            )
        if not body.prompt and not body.suffix and not body.context:
            return ollama_replies.loaded(name(), chat=False)
        tokens = await run_in_threadpool(_generate_prompt, state, body)
        stops: tuple[str, ...] = () if body.raw or body.suffix else state.fmt.stops
        job, window = _job(state, body, tokens, stops)
        reply = _reply(state, False, think, started, window)
        reply.context = model
        return await ollama_replies.answer(state.service, reply, job, request, body.stream)

    @api.post("/api/embed")
    async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        named(body.model)
        _check_options(body.options)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        vectors, used = [], 0
        for i, text in enumerate(inputs):
            where = "input" if isinstance(body.input, str) else f"input[{i}]"
            text, count = _fit(state, text, body.truncate, where)
            vector = await _embedding(state, text, request)
            if body.dimensions is not None:
                vector = _shorten(vector, body.dimensions)
            vectors.append(vector)
            used += count
        return {
            "model": name(),
            "embeddings": vectors,
            "total_duration": ollama_replies.ns(time.perf_counter() - started),
            "load_duration": 0,
            "prompt_eval_count": used,
        }

    @api.post("/api/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request) -> dict[str, Any]:
        named(body.model)
        _check_options(body.options)
        if not body.prompt:
            return {"embedding": []}
        text, _ = _fit(state, body.prompt, False, "prompt")
        return {"embedding": await _embedding(state, text, request)}

    return api


def messages_of(
    body: list[Message], state: Any = None, seen: Optional[list[Any]] = None
) -> list[dict[str, Any]]:
    """The conversation as the chat templates take it (the OpenAI routes' shape): a call's
    arguments as JSON text, with an id that the tool results after it answer, in order; a
    message's images (into `seen`, checked) as the projector's markers before its text."""
    out = []
    waiting: list[str] = []  # ids of the calls not answered yet
    for i, m in enumerate(body):
        marks = _images(state, m.images, f"messages[{i}].images", "messages", seen)
        entry: dict[str, Any] = {"role": m.role, "content": marks + (m.content or "")}
        if m.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": f"call_{i}_{j}",
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _json(c.function.arguments)},
                }
                for j, c in enumerate(m.tool_calls)
            ]
            waiting = [c["id"] for c in entry["tool_calls"]]
        if m.role == "tool":
            if waiting:
                entry["tool_call_id"] = waiting.pop(0)
            if m.tool_name:
                entry["name"] = m.tool_name
        out.append(entry)
    return out


def _json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _common(state: Any, body: GenerationRequest) -> bool:
    """Checks shared by /api/chat and /api/generate; whether to split out the thinking."""
    _check_options(body.options)
    if body.logprobs or body.top_logprobs:
        raise bad("logprobs: log-probabilities are not supported on /api/* yet", "logprobs")
    if body.think is None or body.think is False:
        return False
    if body.think is not True:
        raise bad(f"think: give true or false, not {body.think!r}", "think")
    if not facts.has_token(state.model, reasoning.OPEN):
        raise bad(f"think: {state.model_id} does not support thinking", "think")
    return True


def _images(
    state: Any, given: Optional[list[str]], where: str, param: str, seen: Optional[list[Any]]
) -> str:
    """The markers of `given` (base64 images, Ollama's way), each checked into `seen`."""
    if not given:
        return ""
    mark = media.marker(state, where, param)
    assert seen is not None
    for k, data in enumerate(given):
        seen.append(media.image(state, data, f"{where}[{k}]", param))
    return mark * len(given)


def _check_options(options: Optional[Options]) -> None:
    for key in (options.model_extra or {}) if options else {}:
        if key in LOAD_OPTIONS:
            raise bad(
                f"options.{key}: is set when the server starts (its flags), not per request",
                "options",
            )
        if key in UNSUPPORTED_OPTIONS:
            raise bad(f"options.{key}: is not supported by this server", "options")
        raise bad(f"options.{key}: is not an option", "options")


def _generate_prompt(state: Any, body: GenerateRequest) -> list[int]:
    model = state.model
    seen: list[Any] = []
    prompt = _images(state, body.images, "images", "images", seen) + (body.prompt or "")
    if seen and (body.suffix or body.context):
        raise bad("images: they cannot go with suffix or context here", "images")
    if body.suffix:
        fim = facts.fim(model)
        if fim is None:
            raise bad(
                f"suffix: {state.model_id} has no fill-in-the-middle tokens, so it cannot insert",
                "suffix",
            )
        start = model.tokenize("", add_special=True)  # BOS, where the model wants one
        return [
            *start,
            fim.pre,
            *model.tokenize(prompt, add_special=False),
            fim.suf,
            *model.tokenize(body.suffix, add_special=False),
            fim.mid,
        ]
    if not body.raw:
        messages = [{"role": "system", "content": body.system}] if body.system else []
        messages.append({"role": "user", "content": prompt})
        try:
            prompt = templates.render(state.fmt, messages, model)
        except templates.TemplateError as exc:
            raise bad(str(exc), "prompt") from None
    if not body.context:
        return media.tokens(state, prompt, seen, "images" if seen else "prompt")
    if any(not 0 <= t < model.n_vocab for t in body.context):
        raise bad(f"context: token ids run from 0 to {model.n_vocab - 1}", "context")
    return [*body.context, *model.tokenize(prompt, add_special=False)]


def _job(
    state: Any, body: GenerationRequest, tokens: list[int], stops: tuple[str, ...]
) -> tuple[Job, int]:
    """The Job for a prompt and the request's options, and the context it is answered within.

    num_ctx above the loaded context is answered within the loaded one (the context is shared
    by every slot and cannot grow per request); the reply's X-Context-Length says which.
    """
    o = body.options or Options.model_validate({})
    loaded = state.model.n_ctx
    window = min(o.num_ctx or loaded, loaded)
    if len(tokens) >= window:
        raise bad(
            f"the prompt is {len(tokens)} tokens, longer than the context of {window}",
            "options.num_ctx" if window < loaded else None,
        )
    if o.num_predict == 0:
        raise bad("options.num_predict: give at least 1, or -1 for no limit", "options")
    limit = state.n_predict if o.num_predict is None else max(o.num_predict, -1)
    if window < loaded:  # the request's own, smaller context: stop where it is full
        room = window - len(tokens)
        limit = room if limit < 0 else min(limit, room)
    sampling = sampling_asked(
        state.defaults,
        temp=o.temperature,
        top_k=o.top_k,
        top_p=o.top_p,
        min_p=o.min_p,
        typical_p=o.typical_p,
        repeat_penalty=o.repeat_penalty,
        seed=None if o.seed is None or o.seed < 0 else o.seed & 0xFFFFFFFF,
        grammar=_format_grammar(body.format),
    )
    extra = (o.stop,) if isinstance(o.stop, str) else tuple(o.stop or ())
    if any(not s for s in extra):
        raise bad("options.stop: a stop string cannot be empty", "options")
    job = Job(
        prompt=tokens,
        n_predict=limit,
        sampling=sampling,
        stops=tuple(stops) + state.stops + extra,
    )
    return job, window


def _format_grammar(value: Any) -> Optional[str]:
    if value is None or value == "":
        return None
    if value != "json" and not isinstance(value, dict):
        raise bad(f'format: give "json" or a JSON schema (an object), not {value!r}', "format")
    try:
        return grammar.json_grammar() if value == "json" else grammar.from_schema(value)
    except grammar.GrammarError as exc:
        raise bad(f"format: {exc}", "format") from None


def _reply(state: Any, chat: bool, think: bool, started: float, window: int) -> Any:
    return ollama_replies.Reply(
        model_id=ollama_facts.tagged(state.model_id),
        chat=chat,
        think=think,
        started=started,
        headers={CONTEXT_HEADER: str(window)},
        observe=state.metrics.observe if state.metrics else None,
    )


def _fit(state: Any, text: str, truncate: bool, where: str) -> tuple[str, int]:
    """`text` within what an embedding may take (cut there when `truncate`), and its tokens."""
    if not text:
        raise bad(f"{where}: give non-empty text", where)
    model = state.model
    limit = min(model.n_ctx_train or 2048, 2048)  # engine.Model.embed's context
    tokens = model.tokenize(text)
    if len(tokens) <= limit:
        return text, len(tokens)
    if not truncate:
        raise bad(
            f"{where}: is {len(tokens)} tokens, longer than the {limit} an embedding may take "
            "(truncate: true cuts it)",
            where,
        )
    bos = model.tokenize("", add_special=True)
    kept = tokens[len(bos) : limit - 1]  # room for BOS, and a token that re-reads longer
    cut = b"".join(model.piece(t) for t in kept).decode("utf-8", "ignore")
    return cut, len(model.tokenize(cut))


async def _embedding(state: Any, text: str, request: Request) -> list[float]:
    job = Job(prompt=[], n_predict=0, sampling=None, embed_text=text)
    return await replies.embedding(state.service, job, request)


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    if dimensions > len(vector):
        raise bad(
            f"dimensions: the model's embeddings have {len(vector)}, not {dimensions}",
            "dimensions",
        )
    kept = vector[:dimensions]
    norm = sum(v * v for v in kept) ** 0.5 or 1.0
    return [v / norm for v in kept]

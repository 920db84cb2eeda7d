"""llama-server's own routes: tokenize, detokenize, apply-template, props, metrics, openapi."""

from __future__ import annotations

from typing import Any, Callable, Optional

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from runtime.chat import templates
from runtime.serve.errors import APIError
from runtime.serve.openai.models import ChatMessage
from runtime.serve.openai.routes import messages_of
from runtime.serve.state import ServerState


class TokenizeRequest(BaseModel):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    tokens: list[int]


class TemplateRequest(BaseModel):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Optional[list[dict[str, Any]]] = None


def router(state: ServerState, authorize: Callable[..., None]) -> APIRouter:
    api = APIRouter(dependencies=[Depends(authorize)])
    model = state.model

    @api.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        tokens = model.tokenize(body.content, add_special=body.add_special)
        if not body.with_pieces:
            return {"tokens": tokens}
        pieces = [{"id": t, "piece": model.piece(t).decode("utf-8", "replace")} for t in tokens]
        return {"tokens": pieces}

    @api.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        bad = [t for t in body.tokens if not 0 <= t < model.n_vocab]
        if bad:
            raise APIError(
                400,
                f"tokens: {bad[0]} is not a token id of this model (0 to {model.n_vocab - 1})",
                "invalid_value",
                "tokens",
            )
        raw = b"".join(model.piece(t) for t in body.tokens)
        return {"content": raw.decode("utf-8", "replace")}

    @api.post("/apply-template")
    async def apply_template(body: TemplateRequest) -> dict[str, Any]:
        try:
            prompt = templates.render(state.fmt, messages_of(body.messages), model, body.tools)
        except templates.TemplateError as exc:
            raise APIError(400, str(exc), "invalid_messages", "messages") from None
        return {"prompt": prompt}

    @api.get("/props")
    async def props() -> dict[str, Any]:
        d = state.defaults
        return {
            "model_alias": state.model_id,
            "model_path": str(model.source.label),
            "total_slots": state.service.slots,
            "chat_template": state.fmt.source or state.fmt.name,
            "chat_template_kind": state.fmt.kind,
            "reasoning_format": state.reasoning_format,
            "default_generation_settings": {
                "n_ctx": model.n_ctx,
                "n_predict": state.n_predict,
                "temperature": d.temp,
                "top_k": d.top_k,
                "top_p": d.top_p,
                "min_p": d.min_p,
                "repeat_penalty": d.repeat_penalty,
                "seed": d.seed,
                "stop": list(state.stops),
            },
            "modalities": {"vision": state.vision is not None, "audio": False},  # as llama-server
            "bos_token": model.special_token("bos"),
            "eos_token": model.special_token("eos"),
        }

    @api.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            raise APIError(501, "this server keeps no metrics", "not_implemented")
        body, kind = state.metrics.text()
        return Response(body, media_type=kind)

    @api.get("/openapi.json")
    async def openapi(request: Request) -> dict[str, Any]:
        return dict(request.app.openapi())

    return api

"""Ollama's native API request bodies (/api/*), as pydantic checks them."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from runtime.serve.tooldefs import Tool

# pydantic reads these annotations at run time: Optional and Union, not `X | None`, keep the
# server importable on Python 3.9.

# Options Ollama applies when it (re)loads a model: here the model is loaded once, by the
# server's own flags, so a request cannot change them.
LOAD_OPTIONS = (
    "numa",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "embedding_only",
    "num_thread",
)
# Sampler options of Ollama's that llama.cpp's chain here does not offer.
UNSUPPORTED_OPTIONS = (
    "num_keep",
    "tfs_z",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
)


class Options(BaseModel):
    """`options`: the ones mapped to the sampler; any other name is refused by the route."""

    model_config = ConfigDict(extra="allow")

    num_predict: Optional[int] = Field(None, ge=-2)
    num_ctx: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_k: Optional[int] = Field(None, ge=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    min_p: Optional[float] = Field(None, ge=0, le=1)
    typical_p: Optional[float] = Field(None, gt=0, le=1)
    repeat_penalty: Optional[float] = Field(None, gt=0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = ""
    keep_alive: Union[float, str, None] = None  # accepted: the model stays loaded regardless


class GenerationRequest(Request):
    stream: bool = True
    options: Optional[Options] = None
    format: Any = None  # "json" or a JSON schema; the route names anything else
    think: Union[bool, str, None] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None


class ToolFunction(BaseModel):
    name: str
    arguments: Union[dict[str, Any], str] = Field(default_factory=dict)


class ToolCall(BaseModel):
    function: ToolFunction


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: Optional[str] = ""
    images: Optional[list[str]] = None
    thinking: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_name: Optional[str] = None


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(default_factory=list)
    tools: Optional[list[Tool]] = Field(None, max_length=128)  # OpenAI's shape, Ollama's too


class GenerateRequest(GenerationRequest):
    prompt: Optional[str] = None
    suffix: Optional[str] = None
    system: Optional[str] = None
    template: Optional[str] = None
    context: Optional[list[int]] = None
    raw: bool = False
    images: Optional[list[str]] = None


class EmbedRequest(Request):
    input: Union[str, list[str]]
    truncate: bool = True
    dimensions: Optional[int] = Field(None, ge=1)
    options: Optional[Options] = None


class EmbeddingsRequest(Request):
    prompt: str
    options: Optional[Options] = None


class ShowRequest(Request):
    name: Optional[str] = None  # the older spelling of `model`
    verbose: bool = False

"""What every route of the server shares: the model, its name, its defaults, its service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from runtime.chat import templates
from runtime.serve.service import Service


@dataclass
class ServerState:
    service: Service
    model: Any  # engine.Model
    fmt: templates.ChatFormat
    # The one name the server gives its model, in every reply and listing (OpenAI's and
    # Ollama's): --alias, else the Ollama name, else the file's stem. Requests may name any.
    model_id: str
    defaults: Any  # engine.Sampling from the command line
    n_predict: int
    stops: tuple[str, ...]
    api_key: Optional[str]
    created: int
    reasoning_format: str = "deepseek"  # or "none": <think> stays in the content
    metrics: Any = None  # serve.metrics.Metrics
    cors_origins: tuple[str, ...] = ()  # --cors-origin: origins allowed besides local pages
    vision: Any = None  # engine.media.vision.Vision, where the model has a projector
    media: Any = None  # serve.media.Policy: where image URLs may point (None: data and base64)


def model_id(alias: Optional[str], source: Any) -> str:
    """The served model's id: `alias`, the Ollama name, or the file's stem; never with spaces."""
    from pathlib import Path

    if alias:
        return alias
    name = source.name or Path(source.filename or source.path.name).stem or "model"
    return "-".join(name.split())

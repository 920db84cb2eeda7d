"""The one type every model source resolves to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ModelSource:
    """A GGUF inside some file: the file, where the GGUF starts, how long it is."""

    path: Path
    offset: int
    size: int
    label: str
    filename: str = ""  # the GGUF's own file name, where it has one
    default_args: tuple[str, ...] = ()  # flags the source implies (Ollama's params, system)
    license: Optional[str] = None
    name: str = ""  # the name the model is known by elsewhere (an Ollama model's name)

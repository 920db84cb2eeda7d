"""Ollama's Modelfile settings as the runtime's flags: its PARAMETERs and its system prompt."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from runtime.sources.ollama import OllamaError, OllamaModel

# Modelfile PARAMETER -> (runtime flag, the type the flag takes)
_FLAGS: dict[str, tuple[str, type]] = {
    "temperature": ("--temp", float),
    "num_ctx": ("-c", int),
    "top_k": ("--top-k", int),
    "top_p": ("--top-p", float),
    "min_p": ("--min-p", float),
    "repeat_penalty": ("--repeat-penalty", float),
    "seed": ("--seed", int),
    "num_predict": ("-n", int),
    "num_thread": ("-t", int),
}


def _number(key: str, value: Any, kind: type) -> str:
    """`value` as the flag's argument, refusing what the flag would not take."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OllamaError(f"the Modelfile parameter {key} is {value!r}, not a number")
    if kind is int:
        if value != int(value):
            raise OllamaError(f"the Modelfile parameter {key} is {value!r}, not a whole number")
        return str(int(value))
    return str(value)


def params_to_flags(params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The runtime's flags for Ollama's Modelfile parameters, and the parameters it has none for."""
    flags: list[str] = []
    ignored: list[str] = []
    for key, (flag, kind) in _FLAGS.items():
        if key in params:
            flags += [flag, _number(key, params[key], kind)]
    for key, value in params.items():
        if key == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise OllamaError(f"the Modelfile parameter stop is {value!r}, not a list of text")
            for stop in stops:
                flags += ["--stop", stop]
        elif key not in _FLAGS:
            ignored.append(key)
    return flags, ignored


def default_flags(model: OllamaModel) -> tuple[list[str], list[str]]:
    """The runtime flags a model's Modelfile implies (params, then its system prompt), and
    the parameters that have no flag."""
    flags, ignored = params_to_flags(model.params)
    if model.system:
        flags += ["--system", model.system]
    return flags, ignored

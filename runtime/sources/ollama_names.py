"""Ollama's model names: `[[HOST/]NAMESPACE/]MODEL[:TAG]`, checked by Ollama's own rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
PREFIX = "ollama:"
MEDIA_PREFIX = "application/vnd.ollama.image."

# Ollama's own rules for the parts of a name (types/model/name.go). Every part starts with a
# letter, digit or underscore, so none can be `.`, `..` or empty, and none holds a `/`: a
# name can never lead out of the store. A host may carry a port (`localhost:5000`): the tag
# is only looked for after the last `/`, so the colon is not mistaken for one.
HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
TAG = MODEL


class OllamaError(Exception):
    """An Ollama model that cannot be found, or whose files are damaged."""


@dataclass(frozen=True)
class ModelRef:
    """A fully qualified Ollama name: host, namespace, model and tag."""

    host: str = DEFAULT_HOST
    namespace: str = DEFAULT_NAMESPACE
    model: str = ""
    tag: str = DEFAULT_TAG

    @property
    def display(self) -> str:
        """The name as `ollama list` shows it: `smol:latest`, `me/smol:1b`, `host/me/smol:1b`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def spec(self) -> str:
        """The name as `-m` takes it: `ollama:smol:latest`."""
        return PREFIX + self.display

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def manifest_path(self, root: Path) -> Path:
        return root.joinpath("manifests", *self.parts)


def parse_name(text: str) -> ModelRef:
    """A full name from `[ollama:][[HOST/]NAMESPACE/]MODEL[:TAG]`; refuses any outside the store."""
    name = text[len(PREFIX) :] if text.startswith(PREFIX) else text
    shown = repr(text)
    if not name:
        raise OllamaError(f"{shown} names no Ollama model")
    if "\\" in name or "\0" in name:
        raise OllamaError(f"{shown} is not an Ollama model name (it holds a backslash or NUL)")
    parts = name.split("/")
    last = parts[-1]
    tag = DEFAULT_TAG
    if ":" in last:
        last, tag = last.rsplit(":", 1)
    parts[-1] = last
    if len(parts) > 3:
        raise OllamaError(
            f"{shown} is not an Ollama model name (it has {len(parts)} parts; "
            f"at most HOST/NAMESPACE/MODEL:TAG)"
        )
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    for label, value, pattern in (
        ("host", host, HOST),
        ("namespace", namespace, NAMESPACE),
        ("model", model, MODEL),
        ("tag", tag, TAG),
    ):
        if not pattern.fullmatch(value):
            raise OllamaError(
                f"{shown} is not an Ollama model name (its {label} {value!r} must start with a "
                f"letter, digit or _ and hold only letters, digits, _ - ."
                + (" and :port" if label == "host" else "")
                + ")"
            )
    return ModelRef(host, namespace, model, tag)

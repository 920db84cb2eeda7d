"""What `pack build` packages: a GGUF file, or a model from the Ollama store with its settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from packager.build import Expected
from packager.errors import PackError

OLLAMA_PREFIX = "ollama:"


@dataclass
class BuildInput:
    """The GGUF to embed and what the file should default to."""

    path: Path
    filename: str
    args: list[str] = field(default_factory=list)
    model_extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    default_output: Optional[Path] = None
    expected: Optional[Expected] = None  # the sha256 the weights must have
    projector: Optional[Path] = None  # the vision projector the source carries (Ollama's layer)


def from_spec(spec: str) -> BuildInput:
    if spec.startswith(OLLAMA_PREFIX):
        return from_ollama(spec[len(OLLAMA_PREFIX) :])
    path = Path(spec)
    return BuildInput(path=path, filename=path.name, default_output=path.with_suffix(".pyz"))


def from_ollama(name: str) -> BuildInput:
    """An Ollama model: its GGUF blob (sha256 checked), params and system prompt as defaults."""
    from runtime.sources import ollama
    from runtime.sources.ollama_params import default_flags

    try:
        model = ollama.resolve(name, verify=True, verify_model=False)
        args, ignored = default_flags(model)
    except ollama.OllamaError as exc:
        raise PackError(str(exc)) from None
    stem = re.sub(r"[^\w.-]+", "-", model.ref.display)
    notes = []
    if ignored:
        notes.append(
            f"{model.ref.spec}: parameters with no llamapyz flag were left out: {', '.join(ignored)}"
        )
    if model.template:
        notes.append(
            f"{model.ref.spec} has a Go chat template, which cannot run as Jinja: the file uses "
            "the GGUF's own chat template (or, without one, picks a format from the model when it runs)"
        )
    if model.other_layers:
        notes.append(
            f"{model.ref.spec}: layers left out: {', '.join(sorted(set(model.other_layers)))}"
        )
    if model.projector is not None:
        notes.append(f"{model.ref.spec}: its vision projector layer goes in the file too")
    extra: dict[str, Any] = {"ollama": model.ref.spec}
    if model.license:
        extra["license_text"] = model.license
    return BuildInput(
        path=model.source.path,
        filename=f"{stem}.gguf",
        args=args,
        model_extra=extra,
        notes=notes,
        default_output=Path(f"{stem}.pyz"),
        projector=model.projector.path if model.projector else None,
        expected=Expected(
            sha256=model.digest.split(":", 1)[-1],
            what=f"the model layer of {model.ref.spec} ({model.source.path})",
            remedy=f"fetch it again with `ollama pull {model.ref.display}`",
        ),
    )

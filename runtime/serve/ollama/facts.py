"""What /api/tags, /api/show and /api/ps say about the one model: Ollama's shapes of its facts."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from runtime.chat import templates
from runtime.engine.decoding import facts

VERSION = "0.12.0"  # the Ollama API release whose shapes this dialect follows (/api/version)
NEVER = "2318-01-01T00:00:00Z"  # expires_at of a model that stays loaded (keep_alive -1)


def tagged(model_id: str) -> str:
    """An Ollama name has a tag: `name:latest` unless the id has one."""
    return model_id if ":" in model_id else f"{model_id}:latest"


def digest(model: Any) -> str:
    """The sha256 of the weights where it is known without reading them, else of their place."""
    source = model.source
    from runtime.file.archive import ArchiveError, read_manifest
    from runtime.file.boot import archive

    here = archive()
    if here is not None and source.path == here:
        try:
            weights = read_manifest(here).weights
        except ArchiveError:
            weights = None
        if weights is not None and weights.offset == source.offset:
            return str(weights.sha256)
    name = str(source.path.name)
    if name.startswith("sha256-") and len(name) == 71:  # a blob of an Ollama store
        return name[7:]
    place = f"{source.path}\0{source.offset}\0{source.size}"
    return hashlib.sha256(place.encode()).hexdigest()


def modified_at(model: Any) -> str:
    try:
        stamp = model.source.path.stat().st_mtime
    except OSError:
        stamp = 0.0
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat().replace("+00:00", "Z")


def details(model: Any) -> dict[str, Any]:
    family = model.meta("general.architecture") or "unknown"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": facts.size_label(facts.n_params(model)),
        "quantization_level": facts.quantization(model),
    }


def capabilities(model: Any, vision: Any = None) -> list[str]:
    found = ["completion", "embedding", "tools"]  # tools: any template, described if need be
    if facts.fim(model) is not None:
        found.append("insert")
    if facts.has_token(model, "<think>"):
        found.append("thinking")
    if vision is not None:
        found.append("vision")
    return found


def projector_info(vision: Any) -> dict[str, Any]:
    """The projector's GGUF metadata (its header read, as model_info is the model's)."""
    from runtime.file import gguf_check

    source = vision.source
    try:
        header = gguf_check.check(source.path, source.offset, source.size, source.label)
    except gguf_check.GGUFError:
        return {}
    return {k: v for k, v in header.meta.items() if k.startswith(("general.", "clip."))}


def listing(model: Any, model_id: str) -> dict[str, Any]:
    """One entry of /api/tags."""
    name = tagged(model_id)
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at(model),
        "size": model.source.size,
        "digest": digest(model),
        "details": details(model),
    }


def running(model: Any, model_id: str) -> dict[str, Any]:
    """One entry of /api/ps: loaded for as long as the server runs."""
    entry = listing(model, model_id)
    del entry["modified_at"]
    return {
        **entry,
        "size": facts.n_bytes(model),
        "size_vram": 0,
        "expires_at": NEVER,
        "context_length": model.n_ctx,
    }


def show(
    model: Any, model_id: str, fmt: templates.ChatFormat, defaults: Any, vision: Any = None
) -> dict[str, Any]:
    """/api/show: details, the GGUF's metadata as model_info (the projector's as
    projector_info), template and parameters."""
    info = facts.metadata(model)
    info.pop("tokenizer.chat_template", None)  # it is `template`
    info["general.parameter_count"] = facts.n_params(model)
    template = fmt.source if fmt.kind == "jinja" else fmt.name
    parameters = "\n".join(
        f"{key:<15}{value}"
        for key, value in (
            ("temperature", defaults.temp),
            ("top_k", defaults.top_k),
            ("top_p", defaults.top_p),
            ("min_p", defaults.min_p),
            ("repeat_penalty", defaults.repeat_penalty),
            ("num_ctx", model.n_ctx),
        )
    )
    license_text = model.source.license or str(info.get("general.license", ""))
    shown = {
        "modelfile": f"# served by llamapyz\nFROM {model.source.label}\n",
        "parameters": parameters,
        "template": template,
        "license": license_text,
        "details": details(model),
        "model_info": info,
        "capabilities": capabilities(model, vision),
        "modified_at": modified_at(model),
    }
    if vision is not None:
        shown["projector_info"] = projector_info(vision)
    return shown

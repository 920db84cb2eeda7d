"""Checks that a file is a whole GGUF that llama.cpp can load safely (`runtime.file.gguf_check`,
which the runtime runs too) and reads the model's facts from its header, once, at build.

The header is walked once and arrays (a vocabulary of 150,000 tokens, say) are stepped over,
not loaded: `gguf.GGUFReader` would build them all in memory first, which costs seconds and
hundreds of MB on a large tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

from packager.errors import PackError
from runtime.file import gguf_check

GGUF_MAGIC = b"GGUF"


def check_magic(path: Path) -> None:
    """Refuse anything that does not start like a GGUF, with what it starts with instead."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except IsADirectoryError:
        raise PackError(f"{path} is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise PackError(f"{path} does not exist") from None
    except OSError as exc:
        raise PackError(f"cannot read {path} ({exc.strerror})") from None
    if head != GGUF_MAGIC:
        raise PackError(f"{path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")


@functools.cache
def _gguf_constants() -> Any:
    """gguf's constants module (quantization sizes, file types), loaded by itself: the gguf
    package's `__init__` imports numpy and the whole writer, ten times the time."""
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if locations:
        file = Path(locations[0]) / "constants.py"
        own = importlib.util.spec_from_file_location("_llamapyz_gguf_constants", file)
        if own is not None and own.loader is not None and file.is_file():
            module = importlib.util.module_from_spec(own)
            own.loader.exec_module(module)
            return module
    import gguf

    return gguf


def read_facts(path: Path) -> dict[str, Any]:
    """The model's facts: name, architecture, parameters, quantization, context, template, license."""
    gguf = _gguf_constants()

    check_magic(path)
    try:
        header = gguf_check.check(path)
    except gguf_check.GGUFError as exc:
        raise PackError(str(exc)) from None
    meta = header.meta
    counts: Counter[str] = Counter()
    parameters = 0
    for t in header.tensors:
        elements = 1
        for d in t.dims:
            elements *= d
        parameters += elements
        if len(t.dims) >= 2:
            try:
                counts[gguf.GGMLQuantizationType(t.kind).name] += 1
            except ValueError:
                counts[f"type {t.kind}"] += 1
    if not header.tensors:
        raise PackError(f"{path} holds no tensors: it is not a model")
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        _trial(template, path)

    arch = meta.get("general.architecture") or "unknown"
    quant = None
    file_type = meta.get("general.file_type")
    if isinstance(file_type, int):
        try:
            quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    if quant is None:
        quant = counts.most_common(1)[0][0] if counts else "unknown"
    return {
        "name": meta.get("general.name") or path.stem,
        "architecture": arch,
        "parameters": parameters,
        "quantization": quant,
        "context_length": meta.get(f"{arch}.context_length"),
        "chat_template": "tokenizer.chat_template" in meta,
        "license": meta.get("general.license"),
        "file_size": header.size,
    }


def _trial(template: str, path: Path) -> None:
    """Render the file's chat template once on a sample conversation: one that runs past the
    sandbox's limits (a loop for ever, a recursion) would fail every chat, so the build stops.
    A template that refuses the sample itself (roles it does not take) is left to the chat."""
    from runtime.chat import templates

    try:
        templates.trial(template)
    except templates.TemplateLimitError as exc:
        reason = str(exc).partition("stopped: ")[2] or str(exc)
        raise PackError(
            f"{path}: its chat template (tokenizer.chat_template) was stopped on a sample "
            f"conversation: {reason}"
        ) from None

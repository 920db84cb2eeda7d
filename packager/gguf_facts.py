"""Checks that a file is a whole GGUF and reads the model's facts from its header, once, at build."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from packager.errors import PackError

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


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # an odd field must not stop a build; it only goes unreported
        return None


def read_facts(path: Path) -> dict[str, Any]:
    """The model's facts: name, architecture, parameters, quantization, context, template, license."""
    import gguf

    check_magic(path)
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path)
        tensors = list(reader.tensors)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError, TypeError) as exc:
        raise PackError(
            f"{path} is not a readable GGUF file (truncated or damaged: {exc})"
        ) from None
    if end > size:
        raise PackError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
    if not tensors:
        raise PackError(f"{path} holds no tensors: it is not a model")

    arch = _field(reader, "general.architecture") or "unknown"
    file_type = _field(reader, "general.file_type")
    quant = None
    if isinstance(file_type, int):
        try:
            quant = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = None
    if quant is None:
        counts = Counter(t.tensor_type.name for t in tensors if len(t.shape) >= 2)
        quant = counts.most_common(1)[0][0] if counts else "unknown"
    return {
        "name": _field(reader, "general.name") or path.stem,
        "architecture": arch,
        "parameters": int(sum(int(t.n_elements) for t in tensors)),
        "quantization": quant,
        "context_length": _field(reader, f"{arch}.context_length"),
        "chat_template": reader.fields.get("tokenizer.chat_template") is not None,
        "license": _field(reader, "general.license"),
        "file_size": size,
    }

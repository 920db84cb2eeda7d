"""Checks that a file is a whole GGUF and reads the model's facts from its header, once, at build.

The header is read as a stream and arrays (a vocabulary of 150,000 tokens, say) are skipped
over, not loaded: `gguf.GGUFReader` would build them all in memory first, which costs
seconds and hundreds of MB on a large tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from packager.errors import PackError

GGUF_MAGIC = b"GGUF"
# GGUF value types: fixed-size ones by their struct format
FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
WANTED_TEXT = ("general.name", "general.architecture", "general.license")


class _Truncated(Exception):
    pass


class _Stream:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise _Truncated()
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8", "replace")

    def skip_string(self) -> None:
        self.fh.seek(self.unpack("Q"), 1)

    def value(self, kind: int, keep: bool) -> Any:
        if kind in FIXED:
            return self.unpack(FIXED[kind])
        if kind == STRING:
            if keep:
                return self.string()
            self.skip_string()
            return None
        if kind == ARRAY:
            item, count = self.unpack("I"), self.unpack("Q")
            if item in FIXED:
                self.fh.seek(struct.calcsize(FIXED[item]) * count, 1)
            else:
                for _ in range(count):
                    self.value(item, False)
            return None
        raise ValueError(f"unknown GGUF value type {kind}")


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


def _read_header(path: Path) -> tuple[dict[str, Any], list[tuple[str, list[int], int, int]], int]:
    """(metadata without arrays, tensors as (name, dims, type, offset), data section start)."""
    with path.open("rb", buffering=1 << 20) as fh:
        s = _Stream(fh)
        s.take(4)
        version = s.unpack("I")
        if version not in (2, 3):
            raise PackError(f"{path} is GGUF version {version}; llamapyz reads versions 2 and 3")
        n_tensors, n_kv = s.unpack("Q"), s.unpack("Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = s.string()
            kind = s.unpack("I")
            keep = key in WANTED_TEXT or key.endswith((".context_length", "alignment", "file_type"))
            meta[key] = s.value(kind, keep)
        tensors = []
        for _ in range(n_tensors):
            name = s.string()
            dims = [s.unpack("Q") for _ in range(s.unpack("I"))]
            tensors.append((name, dims, s.unpack("I"), s.unpack("Q")))
        align = int(meta.get("general.alignment") or 32)
        start = (fh.tell() + align - 1) // align * align
    return meta, tensors, start


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
    size = path.stat().st_size
    try:
        meta, tensors, start = _read_header(path)
        end = start
        counts: Counter[str] = Counter()
        parameters = 0
        for _name, dims, kind, offset in tensors:
            qtype = gguf.GGMLQuantizationType(kind)
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            elements = 1
            for d in dims:
                elements *= d
            parameters += elements
            end = max(end, start + offset + elements // block * type_size)
            if len(dims) >= 2:
                counts[qtype.name] += 1
    except _Truncated:
        raise PackError(f"{path} is truncated: it ends inside its header") from None
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise PackError(f"{path} is not a readable GGUF file (damaged header: {exc})") from None
    if end > size:
        raise PackError(f"{path} is truncated: its tensors need {end} bytes, the file has {size}")
    if not tensors:
        raise PackError(f"{path} holds no tensors: it is not a model")

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
        "file_size": size,
    }

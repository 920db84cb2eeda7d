"""The single-file layout: shebang, padding, the GGUF at an aligned offset, then a zipapp.

Both the packager (which writes it) and the runtime (which reads it) use this module, so
`pack inspect` reads a .pyz without executing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

ALIGNMENT = 64 * 1024
MANIFEST_NAME = "llamapyz.json"
MANIFEST_FORMAT = 1
# The file starts as a POSIX sh script: it finds a Python, refuses a file whose zip is gone
# (Python would otherwise try to run the binary as source), then runs the zipapp. sh reads
# line by line and never reaches the GGUF after `exec`/`exit`; `python3 FILE` skips it.
PREAMBLE = b"""#!/bin/sh
# llamapyz: a language model in one file (sh preamble, GGUF weights, Python zipapp).
for py in "${LLAMAPYZ_PYTHON:-python3}" python3 python3.13 python3.12 python3.11 python3.10 python3.9; do
  command -v "$py" >/dev/null 2>&1 || continue
  exec "$py" -I -c 'import sys, zipfile
p = sys.argv[1]
if not zipfile.is_zipfile(p):
    sys.exit(p + " is damaged or truncated: the runtime at its end is missing; copy or build it again")
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(p, run_name="__main__")' "$0" "$@"
done
echo "$0: needs Python 3.9 or newer (python3), and none was found on PATH" >&2
exit 127
"""
GGUF_MAGIC = b"GGUF"
CHUNK = 8 * 1024 * 1024


class ArchiveError(Exception):
    """A .pyz that cannot be read as a llamapyz file."""


def align_up(offset: int, alignment: int = ALIGNMENT) -> int:
    return (offset + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Weights:
    """Where the embedded GGUF lies inside the .pyz."""

    offset: int
    size: int
    sha256: str
    filename: str

    def to_json(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
            "filename": self.filename,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Weights:
        return cls(
            offset=int(data["offset"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            filename=str(data.get("filename", "")),
        )


@dataclass(frozen=True)
class Manifest:
    """What `pack build` records about a .pyz: the weights, the model's facts, provenance."""

    weights: Optional[Weights]
    model: dict[str, Any]
    args: list[str]
    build: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)  # chat template, system prompt …

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "weights": self.weights.to_json() if self.weights else None,
            "model": self.model,
            "args": self.args,
            "defaults": self.defaults,
            "build": self.build,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        weights = data.get("weights")
        return cls(
            weights=Weights.from_json(weights) if weights else None,
            model=dict(data.get("model") or {}),
            args=[str(a) for a in data.get("args") or []],
            build=dict(data.get("build") or {}),
            defaults=dict(data.get("defaults") or {}),
        )


def read_manifest(path: Path) -> Manifest:
    """Read a .pyz's manifest from its zip, checking that the weights lie inside the file."""
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(MANIFEST_NAME)
    except FileNotFoundError:
        raise ArchiveError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ArchiveError(f"{path} is a directory, not a .pyz file") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path} is not a llamapyz file or is damaged ({exc})") from None
    except KeyError:
        raise ArchiveError(
            f"{path} is a zip file but not a llamapyz file (no {MANIFEST_NAME})"
        ) from None
    try:
        manifest = Manifest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"{path} has a damaged manifest ({exc})") from None
    weights = manifest.weights
    if weights is not None:
        size = path.stat().st_size
        if weights.offset % ALIGNMENT or weights.offset + weights.size > size:
            raise ArchiveError(
                f"{path} is damaged: its manifest places the weights at bytes "
                f"{weights.offset}-{weights.offset + weights.size}, but the file has {size} bytes"
            )
        with path.open("rb") as fh:
            fh.seek(weights.offset)
            if fh.read(4) != GGUF_MAGIC:
                raise ArchiveError(f"{path} is damaged: no GGUF at offset {weights.offset}")
    return manifest


def hash_range(
    path: Path, offset: int, size: int, progress: Optional[Callable[[int], None]] = None
) -> str:
    """sha256 of `size` bytes of `path` starting at `offset`, read in chunks."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = size
    with path.open("rb", buffering=0) as fh:
        fh.seek(offset)
        while left:
            n = fh.readinto(view[: min(CHUNK, left)])
            if not n:
                raise ArchiveError(f"{path} ends {left} bytes before the end of its weights")
            digest.update(view[:n])
            left -= n
            if progress:
                progress(n)
    return digest.hexdigest()


def write_padding(out: BinaryIO, upto: int) -> None:
    """Write zeros from the current position up to the absolute offset `upto`."""
    gap = upto - out.tell()
    if gap < 0:
        raise ValueError("padding target lies behind the write position")
    out.write(bytes(gap))


def file_size(fh: BinaryIO) -> int:
    return os.fstat(fh.fileno()).st_size

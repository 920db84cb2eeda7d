"""The single-file layout: shebang, padding, the GGUFs at aligned offsets, then a zipapp.

The model's GGUF comes first, at 64 KiB; a draft model and a vision projector, where the file
carries them, follow it, each at the next 64 KiB boundary; the zip comes last, so its own
offsets stay small. The manifest lists every GGUF by role with its offset, size and sha256.
Both the packager (which writes it) and the runtime (which reads it) use this module, so
`pack inspect` reads a .pyz without executing it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

ALIGNMENT = 64 * 1024
MANIFEST_NAME = "llamapyz.json"
MANIFEST_FORMAT = 2  # 2: `ggufs`, every GGUF by role (1: the model's `weights` alone)
# The roles a GGUF plays in the file, in the order they are laid out, and how messages name them
ROLES = ("model", "draft", "projector")
ROLE_NAMES = {"model": "weights", "draft": "draft model", "projector": "vision projector"}
# The file starts as a POSIX sh script: it refuses a file cut short, finds a Python, and
# execs it on a small launcher that checks the Python version and platform and that the zip
# is still there (Python would otherwise try to run the binary as source), then runs the
# zipapp. sh reads line by line and never reaches the GGUF after `exec`/`exit`; `python3
# FILE` skips all this (the zip's own boot module checks the version then).
PREAMBLE_TEMPLATE = """#!/bin/sh
# llamapyz: a language model in one file (sh preamble, GGUF weights, Python zipapp).
test "$(wc -c <"$0" 2>/dev/null || echo 0)" -gt 65536 || { echo "$0 is damaged or truncated: the model and runtime after its header are missing; copy or build it again" >&2; exit 1; }
for py in "${LLAMAPYZ_PYTHON:-python3}" python3 @NAMES@; do
  command -v "$py" >/dev/null 2>&1 || continue
  exec "$py" -I -c 'import os, sys
ok = @TUPLES@
p = sys.argv[1]
if sys.version_info[:2] not in ok:
    if not os.environ.get("LLAMAPYZ_PYTHON_TRIED"):
        for d in os.environ.get("PATH", "").split(os.pathsep):
            for v in reversed(ok):
                c = os.path.join(d, "python%d.%d" % v)
                if d and os.access(c, os.X_OK):
                    os.environ.update(LLAMAPYZ_PYTHON=c, LLAMAPYZ_PYTHON_TRIED="1")
                    os.execv("/bin/sh", ["/bin/sh", p] + sys.argv[2:])
    sys.exit("%s needs CPython %s; found Python %d.%d.%d at %s" % ((p, "@SHOWN@") + tuple(sys.version_info[:3]) + (sys.executable,)))
import platform
if not sys.platform.startswith("linux") or platform.machine() not in @MACHINES@:
    sys.exit("%s runs on @WHERE@; this is %s %s" % (p, sys.platform, platform.machine()))
import zipfile
if not zipfile.is_zipfile(p):
    sys.exit(p + " is damaged or truncated: the runtime at its end is missing; copy or build it again")
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(p, run_name="__main__")' "$0" "$@"
done
echo "$0: needs CPython @SHOWN@ (python3), and none was found on PATH" >&2
exit 127
"""


def preamble(pythons: list[str], machines: Optional[list[str]] = None) -> bytes:
    """The sh preamble for a file that runs on CPython `pythons` (e.g. ["3.9", "3.13"]) and
    the architectures `machines` (platform.machine()'s names; default x86-64)."""
    versions = sorted(tuple(int(x) for x in v.split(".")) for v in pythons)
    machines = sorted(machines or ["x86_64"], reverse=True)
    return (
        PREAMBLE_TEMPLATE.replace(
            "@NAMES@", " ".join(f"python{a}.{b}" for a, b in reversed(versions))
        )
        .replace("@TUPLES@", repr(tuple(versions)))
        .replace("@SHOWN@", ", ".join(f"{a}.{b}" for a, b in versions))
        .replace("@MACHINES@", "(" + "".join(f'"{m}", ' for m in machines) + ")")  # no ' in sh
        .replace("@WHERE@", describe(machines))
        .encode()
    )


def describe(machines: list[str]) -> str:
    """["x86_64", "aarch64"] -> "Linux x86-64, Linux arm64"."""
    from runtime.file.boot import MACHINES

    return ", ".join(MACHINES.get(m, m) for m in sorted(machines, reverse=True))


GGUF_MAGIC = b"GGUF"
CHUNK = 8 * 1024 * 1024


class ArchiveError(Exception):
    """A .pyz that cannot be read as a llamapyz file."""


def align_up(offset: int, alignment: int = ALIGNMENT) -> int:
    return (offset + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class Weights:
    """Where one embedded GGUF lies inside the .pyz, and the role it plays there."""

    offset: int
    size: int
    sha256: str
    filename: str
    role: str = "model"
    facts: dict[str, Any] = field(default_factory=dict)  # a draft's or projector's, read at build

    @property
    def what(self) -> str:
        """How messages name it: "the weights", "the draft model", "the vision projector"."""
        return "the " + ROLE_NAMES.get(self.role, self.role)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
            "filename": self.filename,
        }
        if self.facts:
            data["facts"] = self.facts
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], role: str = "model") -> Weights:
        return cls(
            offset=int(data["offset"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            filename=str(data.get("filename", "")),
            role=str(data.get("role", role)),
            facts=dict(data.get("facts") or {}),
        )


@dataclass(frozen=True)
class Manifest:
    """What `pack build` records about a .pyz: its GGUFs, the model's facts, provenance."""

    ggufs: tuple[Weights, ...]
    model: dict[str, Any]
    args: list[str]
    build: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)  # chat template, system prompt …

    @property
    def weights(self) -> Optional[Weights]:
        """The model's GGUF, or None for the bare runtime."""
        return self.gguf("model")

    def gguf(self, role: str) -> Optional[Weights]:
        """The GGUF that plays `role` ("model", "draft", "projector"), if the file carries one."""
        return next((g for g in self.ggufs if g.role == role), None)

    def to_json(self) -> dict[str, Any]:
        weights = self.weights
        return {
            "format": MANIFEST_FORMAT,
            # the model's entry again, where a runtime of format 1 looks for it (`-m new.pyz`)
            "weights": weights.to_json() if weights else None,
            "ggufs": [{"role": g.role, **g.to_json()} for g in self.ggufs],
            "model": self.model,
            "args": self.args,
            "defaults": self.defaults,
            "build": self.build,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if "ggufs" in data:
            ggufs = tuple(Weights.from_json(g) for g in data["ggufs"] or [])
        else:  # format 1: the model's GGUF alone
            weights = data.get("weights")
            ggufs = (Weights.from_json(weights),) if weights else ()
        roles = [g.role for g in ggufs]
        if len(set(roles)) != len(roles):
            raise ValueError(f"a role appears twice among {roles}")
        return cls(
            ggufs=ggufs,
            model=dict(data.get("model") or {}),
            args=[str(a) for a in data.get("args") or []],
            build=dict(data.get("build") or {}),
            defaults=dict(data.get("defaults") or {}),
        )


def read_manifest(path: Path) -> Manifest:
    """Read a .pyz's manifest from its zip, checking that each GGUF lies inside the file."""
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
    if manifest.ggufs:
        size = path.stat().st_size
        with path.open("rb") as fh:
            for g in manifest.ggufs:
                if g.offset % ALIGNMENT or g.offset + g.size > size:
                    raise ArchiveError(
                        f"{path} is damaged: its manifest places {g.what} at bytes "
                        f"{g.offset}-{g.offset + g.size}, but the file has {size} bytes"
                    )
                fh.seek(g.offset)
                if fh.read(4) != GGUF_MAGIC:
                    raise ArchiveError(f"{path} is damaged: no GGUF at offset {g.offset}")
    return manifest


def locate(path: Path, role: str) -> Optional[Weights]:
    """Where the GGUF playing `role` lies in the .pyz at `path` (offset, size), or None."""
    return read_manifest(path).gguf(role)


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
                raise ArchiveError(f"{path} ends {left} bytes before the end of its GGUF")
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

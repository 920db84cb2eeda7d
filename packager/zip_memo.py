"""The runtime zip an earlier build made, found again by a cheap stamp of what it is made from,
so that a build of an unchanged environment skips reading its thousands of files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from runtime.file.jsonfile import write_atomic


def stamp(layout: int, pythons: list[str]) -> str:
    """What the runtime zip is made from, cheaply: the folders distributions are installed
    in (pip adds, removes or renames a folder there for each install or upgrade), the
    runtime's and the packager's own files, this Python, the target Pythons and the zip's
    `layout` (runtime_zip.FORMAT)."""
    h = hashlib.sha256(f"{layout} {sys.version} {sys.executable} {pythons}".encode())
    for entry in sys.path:
        with contextlib.suppress(OSError):
            h.update(f"{entry}\0{os.stat(entry or '.').st_mtime_ns}\n".encode())
    for package in ("runtime", "packager"):
        root = Path(__file__).resolve().parent.parent / package
        # Every room's modules and the chat page's files, not only the top level's.
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".py", ".html", ".js") or "__pycache__" in path.parts:
                continue
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _path(cache: Path) -> Path:
    return cache / "build" / "runtime-memo.json"


def recall(cache: Path, stamp: str) -> Optional[dict[str, Any]]:
    """What an earlier build remembered for the same stamp (the runtime zip's path and facts),
    if its zip is still there."""
    try:
        data: dict[str, Any] = json.loads(_path(cache).read_text())
        if data.pop("stamp") != stamp or not Path(data["path"]).is_file():
            return None
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember(cache: Path, stamp: str, facts: dict[str, Any]) -> None:
    write_atomic(_path(cache), {"stamp": stamp, **facts})

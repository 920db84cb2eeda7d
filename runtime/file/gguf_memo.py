"""The GGUFs that passed the check, remembered in the cache so that later starts skip it.

A pass is keyed by the file's identity as the kernel reports it (device, inode, size,
modification and change times: a write or a replacement changes them), where the GGUF lies
in it, and the check's version. Only passes are kept: a refused file is checked each time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime.file.boot import cache_dir
from runtime.file.gguf_check import CHECK_VERSION, check
from runtime.file.jsonfile import write_atomic

FORMAT = 1
KEEP = 64  # entries; the oldest go first


def _memo() -> Path:
    return cache_dir() / "gguf-checked.json"


def _key(path: Path, offset: int, size: int) -> str:
    st = os.stat(path)
    return (
        f"v{CHECK_VERSION}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:"
        f"{st.st_ctime_ns}:{offset}:{size}"
    )


def _load() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(_memo().read_text())
        if data.get("format") == FORMAT and isinstance(data.get("passed"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"format": FORMAT, "passed": {}}


def check_once(path: Path, offset: int, size: int, label: str) -> bool:
    """Check the GGUF at `offset` in `path` unless it passed before; True when it was checked
    now. Raises GGUFError (or OSError from stat) for a file that does not pass."""
    key = _key(path, offset, size)
    data = _load()
    passed: dict[str, Any] = data["passed"]
    if key in passed:
        return False
    check(path, offset, size, label)
    passed[key] = str(path)
    for old in list(passed)[:-KEEP]:
        del passed[old]
    write_atomic(_memo(), data)
    return True

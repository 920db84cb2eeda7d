"""What earlier builds learned about a GGUF file — its sha256 and its header's facts — kept in
the build cache, so that packaging the same file again runs at the speed of a copy.

An entry is keyed by the file's identity as the kernel reports it: device, inode, size,
modification and change times (git's index works the same way). Writing to the file, or
replacing it, changes the change time, which no user can set back; and a file that changed
less than `SETTLED_S` before it was hashed is not remembered, so that a write landing in the
same clock tick as the hash cannot hide.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from runtime.file.jsonfile import write_atomic

FORMAT = 2  # 2: facts come from the checked header (runtime.file.gguf_check)
SETTLED_S = 2.0
KEEP = 64  # entries; the oldest go first


def _path(cache: Path) -> Path:
    return cache / "build" / "sources.json"


def identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load(cache: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(_path(cache).read_text())
        if data.get("format") == FORMAT and isinstance(data.get("files"), dict):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"format": FORMAT, "files": {}}


def recall(cache: Path, st: os.stat_result) -> Optional[dict[str, Any]]:
    """The remembered {"sha256", "facts"} of the file whose stat is `st`, or None."""
    entry = _load(cache)["files"].get(identity(st))
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and "facts" in entry:
        return entry
    return None


def remember(
    cache: Path, source: Path, before: os.stat_result, sha256: str, facts: dict[str, Any]
) -> None:
    """Keep what was learned, if `source` did not change since `before` (taken before it was
    read) and had settled by then. A cache that cannot be written costs only speed."""
    try:
        now = source.stat()
    except OSError:
        return
    key = identity(now)
    if key != identity(before) or time.time() - now.st_ctime < SETTLED_S:
        return
    data = _load(cache)
    files: dict[str, Any] = data["files"]
    files.pop(key, None)  # put back last: the newest entries are kept
    files[key] = {"path": str(source), "sha256": sha256, "facts": facts}
    for old in list(files)[:-KEEP]:
        del files[old]
    write_atomic(_path(cache), data)

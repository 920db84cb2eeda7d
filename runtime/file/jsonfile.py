"""Small JSON files in the cache (choices, memos), written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: Any) -> bool:
    """`data` as JSON at `path`, through a temporary file and a rename, so that a reader never
    sees half a file. False when it cannot be written: a cache that cannot be written only
    costs the work of finding the same thing again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True

"""`--clean-cache`: remove what earlier builds left in the cache, keeping what this file uses."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from runtime.file.boot import cache_dir, in_use


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def current_extraction() -> Optional[Path]:
    """The extraction this process runs from (…/runtimes/cpXY/NAME_BUILD), if any."""
    extraction = Path(__file__).resolve().parents[3]  # runtime/file/cleanup.py, site-packages
    return extraction if extraction.parent.parent.name == "runtimes" else None


def clean() -> tuple[int, int, int]:
    """(entries removed, bytes freed, bytes left) in the cache."""
    root = cache_dir()
    keep = current_extraction()
    removed = freed = 0
    folders = [root / "build"]
    if (root / "runtimes").is_dir():
        folders += [p for p in (root / "runtimes").iterdir() if p.is_dir()]
    for folder in folders:
        for entry in folder.iterdir() if folder.is_dir() else []:
            if keep is not None and (entry == keep or entry.name == f".{keep.name}_lock"):
                continue
            if entry.is_dir() and in_use(entry):
                continue  # another process runs from it (a server, say)
            freed += size_of(entry)
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    left = size_of(root) if root.exists() else 0
    return removed, freed, left

"""What runs first inside a .pyz, before shiv extracts anything: choose the cache, remember
the archive's path, then hand over to shiv's bootstrap.

The packager copies this file to the zip's root as `_llamapyz_boot.py`, so it imports only
the standard library and stays valid on every Python the runtime supports.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

ARCHIVE: Optional[Path] = None


def cache_dir() -> Path:
    """`$LLAMAPYZ_CACHE`, else `$XDG_CACHE_HOME/llamapyz`, else `~/.cache/llamapyz`."""
    explicit = os.environ.get("LLAMAPYZ_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llamapyz"


def archive() -> Optional[Path]:
    """The .pyz this process runs from, or None outside one."""
    boot = sys.modules.get("_llamapyz_boot")
    found = getattr(boot, "ARCHIVE", None)
    return found if isinstance(found, Path) else None


def main() -> None:
    global ARCHIVE
    ARCHIVE = Path(sys.argv[0]).resolve()
    if "SHIV_ROOT" not in os.environ:
        os.environ["SHIV_ROOT"] = str(cache_dir() / "runtimes")
        os.environ["LLAMAPYZ_SHIV_ROOT_SET"] = "1"
    import _bootstrap  # type: ignore[import-not-found]  # shiv's, at the zip's root

    _bootstrap.bootstrap()

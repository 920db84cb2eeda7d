"""Put the chat page's Markdown renderer, `marked` from the npm registry, beside the page.

`make install` runs this: `npm pack` fetches the pinned release once into the dev cache
(~/.cache/llamapyz-dev/npm, or $LLAMAPYZ_DEV_CACHE/npm); its browser build is copied to
runtime/serve/web/marked.js (git-ignored), which the server inlines into the page and the
packager ships inside every .pyz. Prints the path it wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "18.2.1"
MEMBER = "package/lib/marked.umd.js"
ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "runtime" / "serve" / "web" / "marked.js"


def cache() -> Path:
    base = os.environ.get("LLAMAPYZ_DEV_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "llamapyz-dev") / "npm"


def fetch() -> Path:
    folder = cache()
    tarball = folder / f"marked-{VERSION}.tgz"
    if not tarball.is_file():
        if shutil.which("npm") is None:
            sys.exit("fetch_marked: npm is not installed (apt-get install npm)")
        folder.mkdir(parents=True, exist_ok=True)
        # npm checks the tarball against the registry's integrity hash as it downloads.
        done = subprocess.run(
            ["npm", "pack", f"marked@{VERSION}", "--pack-destination", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not tarball.is_file():
            sys.exit(f"fetch_marked: npm pack marked@{VERSION} failed: {done.stderr.strip()}")
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            sys.exit(f"fetch_marked: {tarball} has no {MEMBER}")
        data = member.read()
    if not TARGET.is_file() or TARGET.read_bytes() != data:
        tmp = TARGET.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(TARGET)
    return TARGET


if __name__ == "__main__":
    print(fetch())

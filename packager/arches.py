"""The CPU architectures a .pyz carries: Linux x86-64 and arm64, each with its own llama.cpp.

The runtime's Python is shared; what is compiled for one architecture lies in the zip under
`native/<machine>/` (runtime.file.boot.NATIVE), the same paths it has under site-packages, so
two architectures' `llama_cpp/lib/libllama.so` never collide. The builder's own architecture
comes from the installed engine wheel; the other from a cross build that `make install` runs
(scripts/build-arm64.sh), copied into the build environment's `llamapyz-arm64` folder.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from packager.errors import PackError
from runtime.file.boot import MACHINES

ARCHES = ("x86_64", "aarch64")
CHOICES = ("all", *ARCHES)
# llama.cpp's folders under site-packages: what lies there is one architecture's.
NATIVE_FOLDERS = ("llama_cpp/lib/", "bin/")


def host() -> str:
    return platform.machine()


def parse(text: str) -> list[str]:
    """`all` -> every architecture, else the one named (`x86_64`, `aarch64`)."""
    if text == "all":
        return list(ARCHES)
    if text not in ARCHES:
        raise PackError(f"--arch {text}: give one of {', '.join(CHOICES)}")
    return [text]


def is_native(arc: str) -> bool:
    """A file of llama.cpp's, built for one architecture (not an extension module: those
    carry their architecture in their own name)."""
    return arc.startswith(NATIVE_FOLDERS)


def cross_build_dir() -> Path:
    """Where `make install` puts the arm64 libraries (scripts/build-arm64.sh's output):
    $LLAMAPYZ_ARM64_DIR, else the build environment's llamapyz-arm64 folder."""
    explicit = os.environ.get("LLAMAPYZ_ARM64_DIR")
    return Path(explicit) if explicit else Path(sys.prefix) / "llamapyz-arm64"


def cross_files(arch: str, wanted: bool) -> list[tuple[str, Path]]:
    """(path under site-packages, source) of the cross-built libraries for `arch`. A file
    built for every architecture by default goes without them when they are not built (the
    caller says so); asked for by name (`wanted`), their absence is an error."""
    folder = cross_build_dir()
    if not (folder / "llama_cpp" / "lib" / "libllama.so").is_file():
        if wanted:
            raise PackError(
                f"--arch {arch}: the {MACHINES[arch]} libraries are not built ({folder} has no "
                "llama_cpp/lib/libllama.so): run `make install` or scripts/build-arm64.sh"
            )
        return []
    return sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.is_file() and is_native(p.relative_to(folder).as_posix())
    )


def variants(files: list[tuple[str, Path]]) -> list[str]:
    """The CPU variant names in one architecture's native files."""
    return sorted(
        Path(arc).name[len("libggml-cpu-") : -len(".so")]
        for arc, _ in files
        if Path(arc).name.startswith("libggml-cpu-")
    )

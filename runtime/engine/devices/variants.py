"""Where the CPU backend variants lie: extracted beside llama.cpp's libraries, or still packed
in the .pyz (a first start extracts only the one it chooses, `runtime.engine.devices.cpu`)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import zipfile
from pathlib import Path

from runtime.file.boot import PACKED_VARIANTS, VARIANT_PREFIX, variant_member

PREFIX = VARIANT_PREFIX


class CpuError(Exception):
    """No CPU variant can run here, or the one asked for does not exist."""


def variant_dirs() -> list[Path]:
    """Where the variant libraries may lie: beside libllama, or in site-packages/bin."""
    from runtime.engine.decoding import model as engine

    lib = engine.lib_dir()
    return [lib, lib.parent.parent / "bin"]


def available() -> dict[str, Path]:
    """Variant name -> library path, for every variant shipped. A variant still packed in
    the .pyz has the path it is extracted to once it is wanted (`extracted`)."""
    found: dict[str, Path] = {}
    for directory in variant_dirs():
        if directory.is_dir():
            for path in [*sorted(directory.glob(PREFIX + "*.so")), *sorted(_packed(directory))]:
                found.setdefault(path.name[len(PREFIX) : -len(".so")], path)
    return found


def _packed(directory: Path) -> dict[Path, int]:
    """The CPU variants the first start left in the .pyz: path -> size."""
    return {p: n for p, n in _listing(directory).items() if p.name.startswith(PREFIX)}


@functools.cache
def _listing(directory: Path) -> dict[Path, int]:
    """The native libraries the first start left in the .pyz (boot.PACKED_VARIANTS): CPU
    variants, GPU backends and their libraries; path -> size. Read once: the listing does
    not change while a process runs."""
    try:
        listing = json.loads((directory / PACKED_VARIANTS).read_text())
        return {directory / name: int(size) for name, size in listing.items() if "/" not in name}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def native(name: str) -> Path | None:
    """A library the bundle carries beside the CPU variants (a GPU backend, CUDA's own
    libraries), extracted or still packed; None when it carries none."""
    for directory in variant_dirs():
        path = directory / name
        if path.exists() or path in _listing(directory):
            return path
    built = gpu_build_dir() / name  # outside a .pyz: what `make install` built
    return built if built.exists() else None


def gpu_build_dir() -> Path:
    """Where `make install` puts the GPU backends it built, for `pack build` and for runs
    outside a .pyz: $LLAMAPYZ_GPU_DIR, else the build environment's llamapyz-gpu folder."""
    explicit = os.environ.get("LLAMAPYZ_GPU_DIR")
    return Path(explicit) if explicit else Path(sys.prefix) / "llamapyz-gpu"


def _packed_bytes(path: Path) -> bytes:
    """A packed variant's library, read from the .pyz this process runs from."""
    from runtime.file.boot import archive

    pyz = archive()
    if pyz is None:
        raise CpuError(f"{path.name} is neither extracted nor in a .pyz")
    member = variant_member(path.name)
    try:
        return _open_zip(pyz).read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise CpuError(f"cannot read {member} from {pyz} ({exc})") from None
    except RuntimeError:  # zipfile's word for a compression this Python was built without
        raise CpuError(
            f"{path.name} is packed with LZMA and this Python has no lzma module"
        ) from None


@functools.lru_cache(maxsize=1)
def _open_zip(pyz: Path) -> zipfile.ZipFile:
    """The .pyz's zip, read once: its directory lists a few thousand files."""
    return zipfile.ZipFile(pyz)


def extracted(path: Path) -> Path:
    """`path`, extracted from the .pyz first if the variant is still packed there."""
    if path.exists():
        return path
    data = _packed_bytes(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # whole or not at all, even with another copy doing the same
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CpuError(f"cannot extract {path.name} to {path.parent} ({exc.strerror})") from None
    return path


def size(path: Path) -> int:
    """The library's size, extracted or not."""
    try:
        return path.stat().st_size
    except OSError:
        return _listing(path.parent).get(path, 0)


_memfds: list[int] = []


def load(path: Path) -> ctypes.CDLL:
    """The variant's library, loaded from disk, or from memory while it is still packed."""
    return ctypes.CDLL(loadable(path))


def loadable(path: Path) -> str:
    """A path the dynamic loader can open for `path`: itself, or a copy in memory while the
    library is still packed (nothing written to disk)."""
    if path.exists():
        return str(path)
    fd = os.memfd_create(path.name)
    # Left open: the dynamic loader knows a library by its path, and a closed fd's number
    # (so its /proc path) would come back for the next variant.
    _memfds.append(fd)
    with open(fd, "wb", closefd=False) as fh:
        fh.write(_packed_bytes(path))
    return f"/proc/self/fd/{fd}"

"""Compiled extension modules for the other CPython versions a .pyz should run on.

The runtime's pure-Python dependencies run on any supported CPython; only their compiled
parts (pydantic-core's, markupsafe's) are tied to one ABI and one architecture. Python picks
an extension module by its file name (`_pydantic_core.cpython-39-x86_64-linux-gnu.so`), so
the files for every ABI and architecture can lie side by side in one package folder: we add
each other one's files from that version's manylinux wheel, fetched once with pip into the
build cache (the boot extracts only its own Python's and machine's).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packager.errors import PackError

SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")
MANYLINUX = ("manylinux2014_{}", "manylinux_2_17_{}", "manylinux_2_28_{}")
EXT = re.compile(r"\.cpython-(3\d+)-(x86_64|aarch64)-linux-gnu\.so$")


def parse_versions(text: str) -> list[str]:
    """`3.9,3.10` -> ["3.9", "3.10"], refusing versions the runtime does not support."""
    wanted = [v.strip() for v in text.split(",") if v.strip()]
    for v in wanted:
        if v not in SUPPORTED:
            raise PackError(f"--python {v}: llamapyz runs on CPython {', '.join(SUPPORTED)}")
    if not wanted:
        raise PackError("--python needs at least one version, e.g. 3.11")
    return sorted(set(wanted), key=lambda v: tuple(int(x) for x in v.split(".")))


def own_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _wheel(cache: Path, dist: str, version: str, python: str, machine: str) -> Path:
    folder = cache / "build" / ("wheels" if machine == "x86_64" else f"wheels-{machine}")
    tag = python.replace(".", "")
    pattern = f"{dist.replace('-', '_').lower()}-{version}-cp{tag}-cp{tag}-*.whl"
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(pattern.split("*")[0])]
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", python, "--implementation", "cp", "--abi", f"cp{tag}",
        *[arg for p in MANYLINUX for arg in ("--platform", p.format(machine))],
        "-d", str(folder), f"{dist}=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(pattern.split("*")[0])]
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise PackError(f"cannot fetch {dist} {version} for Python {python} on {machine} ({last})")
    return found[0]


def extension_files(
    cache: Path, compiled: dict[str, str], pythons: list[str], machine: str
) -> list[tuple[str, Path]]:
    """(path under site-packages, file) for `machine`'s extension modules of the `compiled`
    distributions (name -> version) for `pythons`, but the ones installed here, extracted from
    their wheels into the cache."""
    import platform
    from concurrent.futures import ThreadPoolExecutor

    wanted = [
        (dist, version, python)
        for dist, version in sorted(compiled.items())
        for python in pythons
        if not (python == own_version() and machine == platform.machine())
    ]
    # Each fetch is a pip process waiting on the index, most of a first build's time: a few at once.
    with ThreadPoolExecutor(max_workers=4) as pool:
        wheels = list(pool.map(lambda w: _wheel(cache, w[0], w[1], w[2], machine), wanted))
    extra: list[tuple[str, Path]] = []
    for wheel in wheels:
        out = cache / "build" / "abi" / wheel.stem
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if EXT.search(name):
                    target = out / name
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(zf.read(name))
                    extra.append((name, target))
    return extra

"""The C and C++ runtime versions a shared library needs, read from its ELF version-needs
section (what `readelf -V` prints), so that a build records the oldest glibc and libstdc++ its
native files run with, and the file can say so in one sentence where they are older."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Optional

SHT_GNU_VERNEED = 0x6FFFFFFE


def needed_versions(path: Path) -> set[str]:
    """The symbol versions `path` needs (`GLIBC_2.34`, `GLIBCXX_3.4.30`, …); none when it is not
    a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return set()
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    found: set[str] = set()
    for _name, kind, _flags, _addr, offset, _size, link, info, _align, _entsize in sections:
        if kind != SHT_GNU_VERNEED:
            continue
        strings = sections[link][4]
        entry = offset
        for _ in range(info):  # sh_info: the number of Verneed entries
            _version, count, _file, aux, following = struct.unpack_from("<HHIII", data, entry)
            at = entry + aux
            for _ in range(count):
                _hash, _flags2, _other, name, step = struct.unpack_from("<IHHII", data, at)
                end = data.index(b"\0", strings + name)
                found.add(data[strings + name : end].decode("ascii", "replace"))
                at += step
            entry += following
    return found


def _newest(versions: set[str], prefix: str) -> Optional[str]:
    numbers = [v[len(prefix) :] for v in versions if v.startswith(prefix)]
    numbers = [n for n in numbers if n.replace(".", "").isdigit()]
    return max(numbers, key=lambda n: tuple(int(x) for x in n.split(".")), default=None)


def floor(paths: list[Path]) -> dict[str, str]:
    """The newest glibc and libstdc++ (GLIBCXX) versions any of `paths` needs:
    {"glibc": "2.34", "glibcxx": "3.4.30"}, without the keys none of them names."""
    versions: set[str] = set()
    for path in paths:
        versions |= needed_versions(path)
    found = {"glibc": _newest(versions, "GLIBC_"), "glibcxx": _newest(versions, "GLIBCXX_")}
    return {k: v for k, v in found.items() if v is not None}

"""Finds the GGUF stored inside a llamafile (or any zip), so `-m` can load it in place."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Optional

from runtime.file.archive import GGUF_MAGIC
from runtime.sources.source import ModelSource

LOCAL_HEADER = b"PK\x03\x04"
LOCAL_HEADER_SIZE = 30
# llama.cpp maps the tensors straight from the file, and the GGUF aligns its tensor data to 32
# bytes from its own start, so the GGUF itself must start on a 32-byte boundary of the file.
DATA_ALIGNMENT = 32
_METHODS = {
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


class LlamafileError(Exception):
    """A zip holds a GGUF that cannot be loaded in place."""


def _is_projector(name: str) -> bool:
    return "mmproj" in Path(name).name.lower()


def _choose(path: Path, members: list[zipfile.ZipInfo]) -> Optional[zipfile.ZipInfo]:
    """The model among the .gguf members: the largest that is not a multimodal projector."""
    ggufs = [m for m in members if not m.is_dir() and m.filename.lower().endswith(".gguf")]
    if not ggufs:
        return None
    models = [m for m in ggufs if not _is_projector(m.filename)]
    if not models:
        names = ", ".join(m.filename for m in ggufs)
        raise LlamafileError(f"{path} holds only a multimodal projector ({names}), not a model")
    return max(models, key=lambda m: m.file_size)


def _choose_projector(members: list[zipfile.ZipInfo]) -> Optional[zipfile.ZipInfo]:
    found = [
        m for m in members if m.filename.lower().endswith(".gguf") and _is_projector(m.filename)
    ]
    return found[0] if found else None


def find_gguf_member(path: Path, projector: bool = False) -> Optional[ModelSource]:
    """Where the GGUF stored in the zip at `path` lies in the file (its `*mmproj*.gguf` member,
    with `projector`); None if the zip has none."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            member = _choose_projector(members) if projector else _choose(path, members)
    except zipfile.BadZipFile as exc:
        raise LlamafileError(f"{path} is not a readable zip file ({exc})") from None
    except OSError as exc:
        raise LlamafileError(f"cannot read {path} ({exc.strerror or exc})") from None
    if member is None:
        return None
    name = member.filename
    if member.compress_type != zipfile.ZIP_STORED:
        method = _METHODS.get(member.compress_type, f"method {member.compress_type}")
        raise LlamafileError(
            f"{path} holds {name} compressed ({method}); llamafile needs it stored: "
            f"add it again uncompressed (zip -0, or llamafile's zipalign)"
        )
    if member.flag_bits & 0x1:
        raise LlamafileError(f"{path} holds {name} encrypted; it cannot be loaded in place")
    # zipfile has already added any bytes prepended to the zip (an executable, for a
    # llamafile) to header_offset, so it is an offset in the file.
    try:
        with path.open("rb") as fh:
            fh.seek(member.header_offset)
            header = fh.read(LOCAL_HEADER_SIZE)
            if len(header) < LOCAL_HEADER_SIZE or header[:4] != LOCAL_HEADER:
                raise LlamafileError(
                    f"{path} is damaged: no local header for {name} at byte {member.header_offset}"
                )
            # The local header's name and extra field may differ in length from the central
            # directory's, so the data offset comes from the local header itself.
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = member.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len
            fh.seek(offset)
            head = fh.read(4)
            file_size = path.stat().st_size
    except OSError as exc:
        raise LlamafileError(f"cannot read {path} ({exc.strerror or exc})") from None
    if offset + member.file_size > file_size:
        raise LlamafileError(
            f"{path} is damaged: {name} would end at byte {offset + member.file_size}, "
            f"but the file has {file_size} bytes"
        )
    if head != GGUF_MAGIC:
        raise LlamafileError(
            f"{path} holds {name}, which is not a GGUF file "
            f"(it starts with {head!r}, not {GGUF_MAGIC!r})"
        )
    if offset % DATA_ALIGNMENT and not projector:  # a projector is read, not mapped
        raise LlamafileError(
            f"{path} holds {name} at byte {offset}, which is not a multiple of {DATA_ALIGNMENT}; "
            "llama.cpp cannot map it in place: align it with llamafile's zipalign"
        )
    return ModelSource(
        path=path, offset=offset, size=member.file_size, label=f"{path.name} ({name})"
    )

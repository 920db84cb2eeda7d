"""`-m` on a llamafile: the GGUF stored in a zip that follows an executable, loaded in place."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from runtime.sources.llamafile import LlamafileError, find_gguf_member

ROOT = Path(__file__).resolve().parent.parent
# What a llamafile starts with: an executable (here a few bytes of one), then its zip.
STUB = b"MZqFpD='\n\x7fELF\x02\x01\x01" + bytes(range(256)) * 3 + b"#!/bin/sh\n"
ALIGN_ID = 0xD935  # the extra-field id Android's zipalign pads with; readers skip unknown ids

Member = tuple[str, bytes, int]  # name, data, compression


def write_zip(
    path: Path,
    members: list[Member],
    *,
    prefix: bytes = STUB,
    align: int = 64,
    appended: bool = False,
) -> Path:
    """`prefix` then a zip of `members`, each member's data aligned to `align` bytes in the file.

    With `appended`, the zip is built on its own and then appended (`cat stub zip`), so its
    offsets count from the zip's start; otherwise they count from the file's start, as in a
    llamafile made by zipalign.
    """
    with path.open("wb") as fh:
        fh.write(prefix)
        target: io.BytesIO | io.BufferedWriter = io.BytesIO() if appended else fh
        base = len(prefix) if appended else 0
        with zipfile.ZipFile(target, "w") as zf:
            for name, data, method in members:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 6))
                info.compress_type = method
                if align > 1:
                    data_at = base + target.tell() + 30 + len(name.encode())
                    pad = -data_at % align
                    if pad and pad < 4:
                        pad += align
                    if pad:
                        info.extra = struct.pack("<HH", ALIGN_ID, pad - 4) + bytes(pad - 4)
                zf.writestr(info, data)
        if appended:
            assert isinstance(target, io.BytesIO)
            fh.write(target.getvalue())
    return path


@pytest.fixture(scope="module")
def gguf_bytes(tiny_gguf: Path) -> bytes:
    return tiny_gguf.read_bytes()


@pytest.mark.parametrize("appended", [False, True], ids=["zipalign-offsets", "appended-zip"])
def test_stored_member_offset_points_at_the_exact_gguf(
    tmp_path: Path, gguf_bytes: bytes, appended: bool
) -> None:
    path = write_zip(
        tmp_path / "tiny.llamafile",
        [(".args", b"-c 0\n...\n", zipfile.ZIP_DEFLATED), ("tiny.gguf", gguf_bytes, 0)],
        appended=appended,
    )
    src = find_gguf_member(path)
    assert src is not None
    assert src.path == path
    assert src.size == len(gguf_bytes)
    assert src.offset % 64 == 0 and src.offset > len(STUB)
    assert src.label == "tiny.llamafile (tiny.gguf)"
    with path.open("rb") as fh:
        fh.seek(src.offset)
        assert fh.read(src.size) == gguf_bytes


def test_member_in_a_folder(tmp_path: Path, gguf_bytes: bytes) -> None:
    path = write_zip(tmp_path / "m.llamafile", [("models/Tiny-F32.GGUF", gguf_bytes, 0)])
    src = find_gguf_member(path)
    assert src is not None and src.label == "m.llamafile (models/Tiny-F32.GGUF)"
    assert path.read_bytes()[src.offset : src.offset + src.size] == gguf_bytes


def test_largest_model_wins_and_projector_is_never_chosen(
    tmp_path: Path, gguf_bytes: bytes
) -> None:
    small = gguf_bytes[:4] + b"small"
    projector = gguf_bytes + bytes(4096)  # the largest member, but a projector
    path = write_zip(
        tmp_path / "llava.llamafile",
        [
            ("small.gguf", small, 0),
            ("llava-v1.5-7b-mmproj-Q8_0.gguf", projector, 0),
            ("llava-v1.5-7b-Q8_0.gguf", gguf_bytes, 0),
        ],
    )
    src = find_gguf_member(path)
    assert src is not None and src.label == "llava.llamafile (llava-v1.5-7b-Q8_0.gguf)"
    assert src.size == len(gguf_bytes)


def test_only_a_projector(tmp_path: Path, gguf_bytes: bytes) -> None:
    path = write_zip(tmp_path / "p.llamafile", [("mmproj-f16.gguf", gguf_bytes, 0)])
    with pytest.raises(LlamafileError) as info:
        find_gguf_member(path)
    assert str(info.value) == (
        f"{path} holds only a multimodal projector (mmproj-f16.gguf), not a model"
    )


def test_no_gguf_member_is_none(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "plain.zip",
        [(".args", b"-m x.gguf\n", 0), ("README.txt", b"hi", zipfile.ZIP_DEFLATED)],
    )
    assert find_gguf_member(path) is None
    empty = write_zip(tmp_path / "empty.zip", [])
    assert find_gguf_member(empty) is None


def test_deflated_member_is_refused(tmp_path: Path, gguf_bytes: bytes) -> None:
    path = write_zip(tmp_path / "z.llamafile", [("tiny.gguf", gguf_bytes, zipfile.ZIP_DEFLATED)])
    with pytest.raises(LlamafileError) as info:
        find_gguf_member(path)
    assert str(info.value) == (
        f"{path} holds tiny.gguf compressed (deflate); llamafile needs it stored: "
        "add it again uncompressed (zip -0, or llamafile's zipalign)"
    )


def test_misaligned_member_is_refused(tmp_path: Path, gguf_bytes: bytes) -> None:
    path = write_zip(tmp_path / "m.llamafile", [("tiny.gguf", gguf_bytes, 0)], align=1)
    offset = len(STUB) + 30 + len("tiny.gguf")
    assert offset % 32  # the layout this test needs
    with pytest.raises(LlamafileError) as info:
        find_gguf_member(path)
    assert str(info.value) == (
        f"{path} holds tiny.gguf at byte {offset}, which is not a multiple of 32; llama.cpp "
        "cannot map it in place: align it with llamafile's zipalign"
    )


def test_member_that_is_not_gguf(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "n.llamafile", [("notes.gguf", b"hello, world", 0)])
    with pytest.raises(LlamafileError) as info:
        find_gguf_member(path)
    assert str(info.value) == (
        f"{path} holds notes.gguf, which is not a GGUF file (it starts with b'hell', not b'GGUF')"
    )


def test_not_a_zip(tmp_path: Path, tiny_gguf: Path) -> None:
    with pytest.raises(LlamafileError, match=r"is not a readable zip file"):
        find_gguf_member(tiny_gguf)
    with pytest.raises(LlamafileError, match=r"^cannot read .*missing\.llamafile"):
        find_gguf_member(tmp_path / "missing.llamafile")


GENERATE = """
import sys
from pathlib import Path
from runtime.engine.devices import cpu
from runtime.engine.decoding import model as engine
from runtime.sources.llamafile import find_gguf_member
from runtime.sources.source import ModelSource

engine.set_verbose(False)
engine.start_backend(cpu.choose().path)
p = Path(sys.argv[2])
src = find_gguf_member(p) if sys.argv[1] == "member" else ModelSource(p, 0, p.stat().st_size, "x")
print(src.offset, file=sys.stderr)
m = engine.Model(src, n_ctx=256, n_threads=2)
print("".join(m.generate(m.tokenize("the quick brown fox"), 8, engine.Sampling(temp=0))))
"""


def generate(how: str, path: Path) -> tuple[str, int]:
    # conftest points LLAMAPYZ_CACHE at a temporary folder, which the child inherits.
    result = subprocess.run(
        [sys.executable, "-c", GENERATE, how, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, int(result.stderr.split()[-1])


@pytest.mark.slow
def test_member_runs_token_for_token_like_the_plain_gguf(
    tmp_path: Path, tiny_gguf: Path, gguf_bytes: bytes
) -> None:
    path = write_zip(tmp_path / "tiny.llamafile", [("tiny.gguf", gguf_bytes, 0)], align=32)
    plain, plain_offset = generate("plain", tiny_gguf)
    member, member_offset = generate("member", path)
    assert plain_offset == 0 and member_offset > 0  # the FILE* path, in place in the zip
    assert plain.strip() and len(plain.split()) >= 3
    assert member == plain

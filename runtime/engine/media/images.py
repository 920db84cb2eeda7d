"""An image's bytes checked before anything decodes them: the format sniffed by its magic bytes
(what mtmd's stb_image reads: JPEG, PNG, BMP, GIF, binary PNM), its size in bytes and its pixels
(read from the header) under a cap. Bytes in, a `Checked` or an `ImageError` out; the CLI and the
server (for base64 and data: URLs) use the same checks. Standard library only."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from runtime.engine import settings

READABLE = "JPEG, PNG, BMP, GIF or PNM"
# Formats known by their magic but not readable by mtmd's decoder (stb_image) as built here.
UNREADABLE = {
    b"RIFF": "WebP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x00\x0c": "JPEG XL",
}


class ImageError(Exception):
    """An image that will not be decoded: unknown, unsupported, damaged, or too large."""


@dataclass(frozen=True)
class Checked:
    data: bytes
    format: str  # "PNG", "JPEG", …
    width: int
    height: int


def check(
    data: bytes,
    name: str,
    max_bytes: int = settings.IMAGE_MAX_BYTES,
    max_pixels: int = settings.IMAGE_MAX_PIXELS,
) -> Checked:
    """`data`, named `name` in messages, once its format and size pass; nothing is decoded."""
    if len(data) > max_bytes:
        raise ImageError(
            f"{name} is {len(data) / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB an image may be"
        )
    fmt, size = sniff(data, name)
    if size is None:
        raise ImageError(f"{name} is a damaged {fmt} file (its header gives no image size)")
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} is a damaged {fmt} file (it says {width} x {height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width} x {height} pixels, over the {max_pixels / 1e6:.0f} megapixels "
            "an image may have"
        )
    return Checked(data, fmt, width, height)


def sniff(data: bytes, name: str) -> tuple[str, tuple[int, int] | None]:
    """The format by its magic bytes and (width, height) from its header, if it gives them."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return "PNG", None
        w, h = struct.unpack(">II", data[16:24])
        return "PNG", (w, h)
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG", _jpeg_size(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            return "GIF", None
        w, h = struct.unpack("<HH", data[6:10])
        return "GIF", (w, h)
    if data[:2] == b"BM":
        if len(data) < 26:
            return "BMP", None
        w, h = struct.unpack("<ii", data[18:26])
        return "BMP", (w, abs(h))  # a negative height: rows top to bottom
    if data[:2] in (b"P5", b"P6"):
        return "PNM", _pnm_size(data)
    for magic, fmt in UNREADABLE.items():
        if data[: len(magic)] == magic and (fmt != "WebP" or data[8:12] == b"WEBP"):
            raise ImageError(f"{name} is a {fmt} image, which cannot be read: give {READABLE}")
    if not data:
        raise ImageError(f"{name} is empty, not an image")
    raise ImageError(
        f"{name} is not an image that can be read (it starts with {data[:8]!r}): give {READABLE}"
    )


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG's markers to its start-of-frame, which holds the size."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # padding
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers with no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if at + 9 > len(data):
                return None
            h, w = struct.unpack(">HH", data[at + 5 : at + 9])
            return w, h
        at += 2 + length
    return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    """Binary PGM/PPM: the magic, then width and height as text, comments allowed."""
    fields: list[int] = []
    at = 2
    head = data[:1024]
    while len(fields) < 2 and at < len(head):
        c = head[at : at + 1]
        if c == b"#":
            end = head.find(b"\n", at)
            at = len(head) if end < 0 else end + 1
        elif c.isspace():
            at += 1
        elif c.isdigit():
            end = at
            while end < len(head) and head[end : end + 1].isdigit():
                end += 1
            fields.append(int(head[at:end]))
            at = end
        else:
            return None
    return (fields[0], fields[1]) if len(fields) == 2 else None


def read(path: str, max_bytes: int = settings.IMAGE_MAX_BYTES) -> Checked:
    """The image file at `path`, its size checked before it is read."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise ImageError(
                f"{path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB an image may be"
            )
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path} ({exc.strerror or exc})") from None
    return check(data, path, max_bytes)

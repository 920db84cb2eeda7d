"""Images in requests, whichever dialect sends them: a data: URL or raw base64, a file:// URL
under --media-path, an http(s) URL with --allow-remote-media (fetched with a size and a time
cap); their bytes checked by engine/media/images.py (magic bytes, bytes, pixels) before anything
decodes them, and the prompt of text and images tokenized by the model's projector. Every
refusal is a 400 naming the problem; the dialects only say where each image stood."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from runtime.engine import settings
from runtime.engine.media import images
from runtime.engine.media.vision import NO_PROJECTOR, Image, VisionError
from runtime.serve.errors import APIError

CHUNK = 1 << 16


@dataclass(frozen=True)
class Policy:
    """Where an image URL may point besides data: (the server's flags)."""

    allow_remote: bool = False  # --allow-remote-media
    media_path: Optional[Path] = None  # --media-path


def bad(message: str, param: str, code: str = "invalid_image") -> APIError:
    return APIError(400, message, code, param)


def marker(state: Any, where: str, param: str) -> str:
    """The text that stands for an image in a prompt; a 400 where the model has no projector."""
    if state.vision is None:
        raise bad(f"{where}: {NO_PROJECTOR}", param, "no_vision")
    return str(state.vision.marker)


def image(state: Any, source: str, where: str, param: str) -> Image:
    """The image `source` gives (a URL or base64), its bytes checked; named `where`."""
    policy = state.media or Policy()
    if source.startswith("data:"):
        head, comma, payload = source.partition(",")
        if not comma or not head.endswith(";base64"):
            raise bad(f"{where}: give a data: URL as data:image/png;base64,DATA", param)
        data = decode(payload, where, param)
    elif "://" in source[:10]:
        scheme = source.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            data = fetch(source, where, param, policy)
        elif scheme == "file":
            data = read(source, where, param, policy)
        else:
            raise bad(f"{where}: {scheme}:// URLs are not read; give a data: URL or base64", param)
    else:
        data = decode(source, where, param)
    try:
        return Image(where, images.check(data, where))
    except images.ImageError as exc:
        raise bad(str(exc), param) from None


def decode(text: str, where: str, param: str) -> bytes:
    """Base64 (whitespace allowed) to bytes, too long refused before it is decoded."""
    packed = "".join(text.split())
    if len(packed) * 3 // 4 > settings.IMAGE_MAX_BYTES:
        raise bad(
            f"{where} is {len(packed) * 3 / 4e6:.1f} MB, over the "
            f"{settings.IMAGE_MAX_BYTES / 1e6:.0f} MB an image may be",
            param,
        )
    try:
        return base64.b64decode(packed, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{where}: is not valid base64 (nor a data: URL)", param) from None


def read(url: str, where: str, param: str, policy: Policy) -> bytes:
    """A file:// URL's bytes, where the file lies under --media-path."""
    from urllib.parse import unquote, urlparse

    if policy.media_path is None:
        raise bad(f"{where}: file:// URLs are read only under --media-path DIR", param)
    root = policy.media_path.resolve()
    path = Path(unquote(urlparse(url).path)).resolve()
    if path != root and root not in path.parents:
        raise bad(f"{where}: {path} is not under --media-path {root}", param)
    try:
        return images.read(str(path)).data
    except images.ImageError as exc:
        raise bad(f"{where}: {exc}", param) from None


def fetch(url: str, where: str, param: str, policy: Policy) -> bytes:
    """An http(s) URL's bytes, with --allow-remote-media: at most IMAGE_MAX_BYTES, within
    MEDIA_FETCH_SECONDS in all (a server that sends a byte now and then included: the fetch
    runs on a thread of its own, waited for that long)."""
    if not policy.allow_remote:
        raise bad(
            f"{where}: remote image URLs are not fetched unless the server runs with "
            "--allow-remote-media; send the image as a data: URL",
            param,
            "remote_media",
        )
    seconds = settings.MEDIA_FETCH_SECONDS
    too_slow = bad(f"{where}: {url} took over {seconds:.0f} s to fetch", param)
    got: list[Any] = []
    deadline = time.monotonic() + seconds
    worker = threading.Thread(
        target=lambda: got.append(_get(url, where, param, deadline, too_slow)),
        name="llamapyz-media",
        daemon=True,
    )
    worker.start()
    worker.join(seconds)
    if not got:
        raise too_slow
    if isinstance(got[0], APIError):
        raise got[0]
    return bytes(got[0])


def _get(url: str, where: str, param: str, deadline: float, too_slow: APIError) -> Any:
    """The body at `url` read until `deadline`, or the APIError that refuses it."""
    import urllib.error
    import urllib.request

    cap = settings.IMAGE_MAX_BYTES
    too_large = bad(f"{where}: {url} is over the {cap / 1e6:.0f} MB an image may be", param)
    try:
        left = max(0.1, deadline - time.monotonic())
        with urllib.request.urlopen(url, timeout=left) as reply:  # noqa: S310 (http(s) only)
            if int(reply.headers.get("content-length") or 0) > cap:
                return too_large
            data = bytearray()
            while time.monotonic() < deadline:
                part = reply.read1(CHUNK)  # what has come, not a whole CHUNK
                if not part:
                    return data
                data += part
                if len(data) > cap:
                    return too_large
            return too_slow
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            return too_slow
        return bad(f"{where}: could not fetch {url} ({reason})", param)


def tokens(state: Any, text: str, seen: list[Image], param: str) -> list[int]:
    """`text` tokenized, with `seen` where its markers are (an engine.media.vision.Prompt then)."""
    if not seen:
        return list(state.model.tokenize(text))
    if state.vision is None:
        raise bad(NO_PROJECTOR, param, "no_vision")
    typed = text.count(state.vision.marker) - len(seen)  # beyond those standing for `seen`
    if typed:
        raise bad(
            f"{param}: the text holds {state.vision.marker}, which stands for an image in a "
            "prompt with images; leave it out of the text",
            param,
        )
    try:
        prompt: list[int] = state.vision.prompt(text, seen)
    except VisionError as exc:
        code = "context_length_exceeded" if "more than the context" in str(exc) else "invalid_image"
        raise bad(str(exc), param, code) from None
    if prompt and prompt[-1] < 0:  # a stand-in: the image gives no logits to sample from
        raise bad(f"{param}: the prompt ends with an image; give text after it", param)
    return prompt

"""What the vision rows measure with: a model and a projector written for it, fresh pictures,
and a client that streams a chat reply and times its first token.

No vision model can be downloaded here, so the projector has random weights
(scripts/tiny_vision.py, the tests' writer): gemma3's, a SigLIP ViT whose image the model reads
with non-causal attention, sized so that encoding an image is a good part of the time to its
first token. Its output is as wide as the model's embeddings, which is all mtmd asks of a pair.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks.context import Context, script
from benchmarks.procs import BenchError, run
from benchmarks.rows_server import OPENER, REQUEST_TIMEOUT_S, Server


@dataclass(frozen=True)
class Shape:
    """The projector's encoder: the image side and patch in pixels, the ViT's blocks."""

    image: int
    patch: int
    width: int
    ff: int
    layers: int
    heads: int
    merge: int  # patches average-pooled merge x merge into one image token

    @property
    def tokens(self) -> int:
        return (self.image // self.patch // self.merge) ** 2

    def describe(self) -> str:
        side = self.image // self.patch
        return (
            f"random-weight gemma3 projector: {self.image} px in {side} x {side} patches, "
            f"{self.layers} ViT blocks {self.width} wide, pooled {self.merge} x {self.merge} "
            f"into {self.tokens} image tokens"
        )


# SigLIP's patch and gemma3's kind of pooling at half gemma3's image side; 384-wide blocks
# (SigLIP's are 1152, 27 of them: tens of seconds an image on two cores).
SHAPE = Shape(image=448, patch=14, width=384, ff=1536, layers=4, heads=6, merge=2)
# A smoke run's: 16 image tokens, and still a projector (13 MB) larger than libmtmd, so that
# the disk row can tell a copy of it from the library's extraction.
QUICK_SHAPE = Shape(image=64, patch=8, width=256, ff=1024, layers=4, heads=4, merge=2)


@dataclass(frozen=True)
class Pair:
    """The text model, its projector, and the .pyz that carries both."""

    model: Path
    projector: Path
    pyz: Path
    shape: Shape

    def describe(self) -> str:
        return f"{self.model.name} with a {self.shape.describe()}"


def embedding_width(model: Path) -> int:
    """The model's embedding length, which the projector's output must match."""
    from runtime.file.gguf_check import check

    meta = check(model).meta
    width = meta.get(f"{meta.get('general.architecture')}.embedding_length")
    if not isinstance(width, int):
        raise BenchError(f"{model} names no embedding length")
    return width


def make_pair(ctx: Context, model: Path, shape: Shape) -> Pair:
    """Write the projector for `model` and pack both into one .pyz (untimed)."""
    projector = ctx.work / "vision-projector.gguf"
    script("tiny_vision").write_tiny_projector(
        projector,
        width=embedding_width(model),
        kind="gemma3",
        image=shape.image,
        patch=shape.patch,
        vit_width=shape.width,
        vit_ff=shape.ff,
        vit_layers=shape.layers,
        vit_heads=shape.heads,
        merge=shape.merge,
    )
    pyz = ctx.work / f"{model.stem}-vision.pyz"
    ctx.log(f"building {pyz.name}: {model.name} with its projector ...")
    run([*ctx.pack, "build", str(model), "--mmproj", str(projector), "-o", str(pyz)], ctx.env)
    return Pair(model, projector, pyz, shape)


class Pictures:
    """Random PNGs of one size, each its own: a counter stamped into the first row, so that no
    server finds a picture's embeddings or tokens from an earlier request."""

    def __init__(self, side: int, seed: int = 3) -> None:
        self._tiny = script("tiny_vision")
        self._rows: list[bytes] = self._tiny.random_rows(side, side, seed)
        self.made = 0

    def fresh(self) -> bytes:
        self.made += 1
        stamp = self.made.to_bytes(8, "big")
        first = stamp + self._rows[0][len(stamp) :]
        png: bytes = self._tiny.encode_image("png", [first, *self._rows[1:]])
        return png


def image_message(png: bytes, text: str) -> list[dict[str, Any]]:
    """One user message's parts: the picture as an OpenAI data: URL, then the text."""
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]


def chat_body(server: Server, content: Any, max_tokens: int) -> bytes:
    """A streamed /v1/chat/completions request, encoded before any clock starts."""
    body = {
        "model": server.model_id,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return json.dumps(body).encode()


@dataclass
class Streamed:
    """One streamed reply, as its client saw it."""

    first_s: float  # from sending the request to the first chunk with text (or the end)
    wall_s: float
    tokens: int  # usage.completion_tokens (both servers send it with include_usage)
    text: str
    prompt_tokens: Optional[int]
    prompt_ms: Optional[float]  # the server's own timings, where it reports them
    chunks: int  # the chunks that carried text


def stream_chat(
    server: Server, body: bytes, on_text: Optional[Callable[[int], None]] = None
) -> Streamed:
    """Send `body`, read the server-sent events to [DONE]; time the first token's chunk.
    `on_text` is given the length of each chunk's text as it comes."""
    req = urllib.request.Request(
        f"{server.base}/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    first: Optional[float] = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        with OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as resp:
            for line in resp:
                data = line.strip().removeprefix(b"data:").strip()
                if not line.startswith(b"data:") or not data:
                    continue
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise BenchError(f"{server.name}: the stream failed: {event['error']}")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") or delta.get("reasoning_content") or ""
                    text.append(piece)
                    if piece and on_text is not None:
                        on_text(len(piece))
                    # A reply whose first token is its end has no text: its last chunk it is.
                    if first is None and (piece or choice.get("finish_reason")):
                        first = time.perf_counter() - start
                usage = event.get("usage") or usage
                timings = event.get("timings") or timings
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        raise BenchError(f"{server.name}: /v1/chat/completions: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"{server.name}: /v1/chat/completions failed ({exc})") from None
    wall = time.perf_counter() - start
    if first is None:
        raise BenchError(f"{server.name}: the reply streamed no token")
    return Streamed(
        first,
        wall,
        int(usage.get("completion_tokens") or sum(1 for t in text if t)),
        "".join(text),
        usage.get("prompt_tokens"),
        timings.get("prompt_ms"),
        sum(1 for t in text if t),
    )

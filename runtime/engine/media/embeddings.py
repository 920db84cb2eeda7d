"""Recent images' embeddings, kept in memory: what the projector's encoder made of an image
(mtmd_encode_chunk's output), keyed by the sha256 of its bytes that mtmd gives its chunk. The
same image in another sequence, or in a sequence that has since held another prompt, then skips
the encoder: only its embeddings are decoded into the sequence. A sequence that still holds the
image needs neither (the prefix cache, engine/media/vision.py's `Prompt.keep`).

The least recently used go first once the kept embeddings pass `capacity` bytes
(settings.IMAGE_EMBED_CACHE_BYTES); an image larger than that is not kept. Used from the one
thread that drives the model (the server's engine thread), like the model itself.
"""

from __future__ import annotations

import ctypes
import time
from collections import OrderedDict
from typing import Any, Optional

from runtime.engine import backend


class Embeddings:
    """Embeddings of recent images, least recently used first out, within `capacity` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bytes = 0
        self.encoded = 0  # images the encoder ran for
        self.reused = 0  # images whose kept embeddings were decoded instead
        self._kept: OrderedDict[tuple[bytes, int], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def of(self, M: Any, mctx: Any, chunk: Any, width: int) -> Optional[Any]:
        """The embeddings of image `chunk` (`width` floats a token): kept ones, else the
        encoder's (kept for next time); None where the encoder fails."""
        ident = M.mtmd_input_chunk_get_id(chunk) or b""
        n = int(M.mtmd_input_chunk_get_n_tokens(chunk)) * width
        key = (ident, n)
        kept = self._kept.get(key) if ident else None
        tokens = f"{n // width} tokens"
        if kept is not None:
            self._kept.move_to_end(key)
            self.reused += 1
            backend.log(f"image: {tokens}, its embeddings kept from before (not encoded)")
            return kept
        began = time.perf_counter()
        if M.mtmd_encode_chunk(mctx, chunk) != 0:
            return None
        self.encoded += 1
        backend.log(f"image: {tokens}, encoded in {1000 * (time.perf_counter() - began):.0f} ms")
        out = (ctypes.c_float * n)()
        ctypes.memmove(out, M.mtmd_get_output_embd(mctx), ctypes.sizeof(out))
        if ident and ctypes.sizeof(out) <= self.capacity:
            self._kept[key] = out
            self.bytes += ctypes.sizeof(out)
            while self.bytes > self.capacity:
                _, old = self._kept.popitem(last=False)
                self.bytes -= ctypes.sizeof(old)
        return out

"""Images through the model's vision projector: llama.cpp's multimodal library (libmtmd, bound
by llama-cpp-python's `mtmd_cpp`) loaded beside the model; a prompt whose text holds mtmd's
marker where each image goes, tokenized into text and image chunks; and their decoding into a
sequence of the model's memory, reusing what it already holds (an image is keyed by the sha256
of its pixels, so the next chat turn decodes no image again).

mtmd_init_from_file takes a path only. A projector embedded in a .pyz is copied into a memfd
(memory, not disk: the kernel copies it, `os.sendfile`) and handed over as /proc/self/fd/N; mtmd
reads its tensors into its own buffers, and the memfd is closed once it has loaded. A projector
that is a file of its own is opened where it is.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from runtime.engine import backend, settings
from runtime.engine.backend import EngineError, bindings, forget_log, last_log_error, lib_dir
from runtime.engine.media.embeddings import Embeddings
from runtime.engine.media.images import Checked
from runtime.sources.source import ModelSource

NO_PROJECTOR = "this model has no vision projector; pack it with --mmproj or pass --mmproj"


class VisionError(EngineError):
    """An image or a projector the model cannot use."""


def mtmd() -> Any:
    """`llama_cpp.mtmd_cpp` (libmtmd's bindings), loaded into the same link chain as libllama:
    libmtmd's libllama.so.0 and libggml.so.0 resolve to the copies already loaded. A .pyz
    keeps libmtmd beside the CPU variants until the first image, which extracts it."""
    bindings()
    if "llama_cpp.mtmd_cpp" not in sys.modules and not (lib_dir() / "libmtmd.so").exists():
        from runtime.engine.devices import variants

        carried = variants.native("libmtmd.so")
        if carried is None:
            raise VisionError("this file carries no libmtmd, llama.cpp's multimodal library")
        try:
            os.environ["MTMD_CPP_LIB"] = str(variants.extracted(carried).parent)
        except variants.CpuError as exc:
            raise VisionError(str(exc)) from None
    try:
        return importlib.import_module("llama_cpp.mtmd_cpp")
    except (OSError, RuntimeError, FileNotFoundError, ImportError) as exc:
        raise VisionError(f"cannot load llama.cpp's multimodal library libmtmd ({exc})") from None


@dataclass
class Image:
    """A checked image and the name messages give it (its path, or "image 2")."""

    name: str
    checked: Checked


def _first_line(text: str) -> str:
    """mtmd's reason, without the hint lines it logs after it."""
    return text.strip().splitlines()[0] if text.strip() else ""


def _projector_path(source: ModelSource) -> tuple[str, Optional[int]]:
    """A path mtmd can open for the projector, and the memfd behind it (None: the file itself)."""
    if source.offset == 0 and source.path.stat().st_size == source.size:
        return str(source.path), None
    fd = os.memfd_create("mmproj", os.MFD_CLOEXEC)
    try:
        with source.path.open("rb") as fh:
            at, left = source.offset, source.size
            while left:
                sent = os.sendfile(fd, fh.fileno(), at, left)
                if sent == 0:
                    raise VisionError(f"{source.label} ends before the vision projector does")
                at, left = at + sent, left - sent
    except OSError as exc:
        os.close(fd)
        raise VisionError(f"cannot read the vision projector in {source.label} ({exc})") from None
    except BaseException:
        os.close(fd)
        raise
    return f"/proc/self/fd/{fd}", fd


class Vision:
    """A projector loaded for a model: turns text with markers and images into a `Prompt`."""

    def __init__(
        self, llm: Any, source: ModelSource, *, device: Optional[int] = None, n_threads: int = 1
    ) -> None:
        M = mtmd()
        self._M = M
        self.llm = llm
        self.source = source
        if backend._log_callback is not None:  # mtmd's log joins llama.cpp's (--verbose)
            M.mtmd_helper_log_set(backend._log_callback, ctypes.c_void_p())
        params = M.mtmd_context_params_default()
        params.use_gpu = device is not None
        params.device = device
        params.n_threads = n_threads
        params.print_timings = False
        path, fd = _projector_path(source)
        forget_log()
        try:
            self._ctx = M.mtmd_init_from_file(path.encode(), llm._model, params)
        finally:
            if fd is not None:
                os.close(fd)  # mtmd has read the tensors into its own buffers
        if not self._ctx:
            detail = _first_line(last_log_error())
            raise VisionError(
                f"the vision projector in {source.label} could not be loaded"
                + (f": {detail}" if detail else "")
            )
        if not M.mtmd_support_vision(self._ctx):
            self.close()
            raise VisionError(f"{source.label} is a projector for audio, not for images")
        self.marker: str = M.mtmd_default_marker().decode()
        self.embeddings = Embeddings(settings.IMAGE_EMBED_CACHE_BYTES)
        self.on_gpu = device is not None
        backend.log(f"vision projector: {source.label}, on the {'GPU' if self.on_gpu else 'CPU'}")

    def prompt(self, text: str, images: list[Image], fits: bool = True) -> Prompt:
        """`text` (with one marker per image, where it goes) and `images`, tokenized; refused
        (`fits`) when they take more tokens than the context holds."""
        M = self._M
        if text.count(self.marker) != len(images):
            raise VisionError(
                f"the prompt has {text.count(self.marker)} image markers for {len(images)} images"
            )
        bitmaps = []
        try:
            for image in images:
                data = image.checked.data
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                forget_log()
                bitmap = M.mtmd_helper_bitmap_init_from_buf(self._ctx, buf, len(data), False)
                if not bitmap:
                    detail = _first_line(last_log_error())
                    raise VisionError(
                        f"{image.name} could not be decoded as {image.checked.format}"
                        + (f" ({detail})" if detail else "")
                    )
                bitmaps.append(bitmap)
            chunks = M.mtmd_input_chunks_init()
            raw = text.encode("utf-8")
            part = M.mtmd_input_text(raw, len(raw), True, True)
            array = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = M.mtmd_tokenize(self._ctx, chunks, ctypes.byref(part), array, len(bitmaps))
        finally:
            for bitmap in bitmaps:
                M.mtmd_bitmap_free(bitmap)
        if rc != 0:
            M.mtmd_input_chunks_free(chunks)
            raise VisionError(f"mtmd could not tokenize the prompt with its images (code {rc})")
        prompt = Prompt(self, chunks)
        n_ctx = self.llm.n_ctx
        if fits and len(prompt) >= n_ctx:
            raise VisionError(
                f"the prompt is {len(prompt)} tokens ({prompt.image_tokens} of them for "
                f"{len(images)} image{'s' if len(images) > 1 else ''}), more than the context "
                f"of {n_ctx} holds (raise -c)"
            )
        return prompt

    def close(self) -> None:
        if self._ctx:
            self._M.mtmd_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> Vision:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Span:
    """One chunk of a prompt: where its tokens start in the prompt and its positions begin."""

    start: int
    n_tokens: int
    pos: int
    n_pos: int
    chunk: Any
    image: bool


class Prompt(list[int]):
    """A prompt with images: a token list for everything that counts tokens and compares
    prefixes (an image's tokens are stand-ins drawn from its hash: negative, never a real
    token), and its chunks, which `prefill` decodes. Model.generate takes it as a prompt."""

    def __init__(self, vision: Vision, chunks: Any) -> None:
        M = vision._M
        C = bindings()
        self.vision = vision
        self.spans: list[Span] = []
        key: list[int] = []
        pos = 0
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            image = M.mtmd_input_chunk_get_type(chunk) != M.MTMD_INPUT_CHUNK_TYPE_TEXT
            if image:
                n = int(M.mtmd_input_chunk_get_n_tokens(chunk))
                ident = M.mtmd_input_chunk_get_id(chunk) or b""  # the sha256 of its pixels
                base = int.from_bytes(hashlib.sha256(ident).digest()[:4], "little")
                key += [-1 - ((base + j) & 0x3FFFFFFF) for j in range(n)]
            else:
                count = ctypes.c_size_t(0)
                ptr = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                n = int(count.value)
                key += [int(ptr[j]) for j in range(n)]
            n_pos = int(M.mtmd_input_chunk_get_n_pos(chunk))
            self.spans.append(Span(len(key) - n, n, pos, n_pos, chunk, image))
            pos += n_pos
        super().__init__(key)
        self.images = sum(s.image for s in self.spans)
        self.image_tokens = sum(s.n_tokens for s in self.spans if s.image)
        self._chunks = chunks
        weakref.finalize(self, M.mtmd_input_chunks_free, chunks)
        self._C = C

    def prefill(self, llm: Any) -> None:
        """Decode into the model's one sequence what its memory does not hold of this prompt."""
        llm._cached = prefill(llm, self, llm._cached, 0)

    def image_at(self, index: int) -> Optional[Span]:
        """The image whose tokens start at `index`, if one does."""
        return next((s for s in self.spans if s.image and s.start == index), None)

    def keep(self, n: int) -> int:
        """The longest prefix of at most `n` tokens that does not end inside an image."""
        inside = next(
            (s for s in self.spans if s.image and s.start < n < s.start + s.n_tokens), None
        )
        return inside.start if inside else n

    def text_until(self, index: int) -> int:
        """Where the text from `index` ends: the next image's first token, or the end."""
        return next((s.start for s in self.spans if s.image and s.start >= index), len(self))

    def pos_at(self, index: int) -> int:
        """The position of token `index` (an image may take fewer positions than tokens: M-RoPE)."""
        for s in self.spans:
            if s.start <= index < s.start + s.n_tokens:
                return s.pos + (index - s.start if not s.image else 0)
        last = self.spans[-1] if self.spans else None
        return last.pos + last.n_pos if last else 0


def prefill(llm: Any, prompt: Prompt, cached: list[int], seq: int) -> list[int]:
    """Decode into sequence `seq` of `llm`'s memory the part of `prompt` that `cached` (what the
    sequence holds, as prompt tokens) lacks; an image is decoded whole or not at all. Returns
    what the sequence holds afterwards (the prompt)."""
    C = bindings()
    key = list(prompt)
    common = 0
    for a, b in zip(cached, key):
        if a != b:
            break
        common += 1
    keep = prompt.keep(min(common, len(key) - 1))  # the last token again, for its logits
    memory = C.llama_get_memory(llm._ctx)
    C.llama_memory_seq_rm(memory, seq, prompt.pos_at(keep) if keep else -1, -1)
    at = keep
    while at < len(key):
        n = decode_image(llm, prompt, at, seq)
        if not n:
            n = prompt.text_until(at) - at
            _decode_text(llm, key[at : at + n], prompt.pos_at(at), seq)
        at += n
    return key


def decode_image(llm: Any, prompt: Prompt, index: int, seq: int) -> int:
    """Encode the image whose tokens start at `index` of `prompt` (or take its kept
    embeddings: engine/media/embeddings.py) and decode it into sequence `seq` at its positions, out
    of band (its own batches; non-causal attention where the model wants it); the number of
    its tokens, 0 where no image starts there. The seam for the
    server's scheduler: a slot whose pending tokens begin with an image calls it, then goes on
    with `prompt.text_until` tokens in the shared batch, at `prompt.pos_at` positions."""
    span = prompt.image_at(index)
    if span is None:
        return 0
    C, M, seen = bindings(), prompt.vision._M, prompt.vision
    embd = seen.embeddings.of(M, seen._ctx, span.chunk, C.llama_model_n_embd_inp(llm._model))
    if embd is None:
        raise VisionError("the vision projector failed to encode an image")
    new_pos = C.llama_pos(0)
    rc = M.mtmd_helper_decode_image_chunk(
        seen._ctx, llm._ctx, span.chunk, embd, span.pos, seq, llm.n_batch, ctypes.byref(new_pos),
        M.mtmd_helper_post_decode_callback(), None,
    )  # fmt: skip
    if rc != 0:
        raise VisionError(f"llama.cpp failed to decode an image (code {rc})")
    return span.n_tokens


def _decode_text(llm: Any, tokens: list[int], pos: int, seq: int) -> None:
    """Decode `tokens` at positions from `pos` in sequence `seq`; logits for the last only."""
    C = bindings()
    for start in range(0, len(tokens), llm.n_batch):
        part = tokens[start : start + llm.n_batch]
        batch = C.llama_batch_init(len(part), 0, 1)
        try:
            for j, token in enumerate(part):
                batch.token[j] = token
                batch.pos[j] = pos + start + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = start + j == len(tokens) - 1
            batch.n_tokens = len(part)
            rc = C.llama_decode(llm._ctx, batch)
        finally:
            C.llama_batch_free(batch)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to evaluate the prompt (code {rc})")


def read_images(paths: tuple[str, ...]) -> list[Image]:
    """`--image` files, each checked (format, bytes, pixels) before anything decodes it."""
    from runtime.engine.media import images

    try:
        return [Image(p, images.read(p)) for p in paths]
    except images.ImageError as exc:
        raise VisionError(str(exc)) from None


def open_for(
    llm: Any, projector: Optional[ModelSource], devices: list[Any], n_threads: int
) -> Optional[Vision]:
    """The projector loaded beside `llm`, on the first of the model's GPU `devices` (the CPU
    where there are none); None without a projector."""
    if projector is None:
        return None
    return Vision(
        llm, projector, device=devices[0].handle if devices else None, n_threads=n_threads
    )


def one_shot(vision: Vision, text: str, images: list[Image]) -> Prompt:
    """`-p TEXT --image FILE…`: the images go where TEXT has mtmd's marker, else before it
    (one marker each, as llama.cpp's mtmd-cli puts them)."""
    if vision.marker not in text:
        text = vision.marker * len(images) + text
    return vision.prompt(text, images)


def inputs(
    spec: Optional[str], model: Optional[str], paths: tuple[str, ...], archive: Optional[Path]
) -> tuple[Optional[ModelSource], list[Image]]:
    """The projector (`--mmproj`, else the model's own) and the `--image` files, checked; an
    image with no projector to see it is refused before the model loads."""
    from runtime.sources import resolve

    try:
        projector = resolve.projector(spec, model, archive)
    except resolve.WeightsError as exc:
        raise VisionError(str(exc)) from None
    if paths and projector is None:
        raise VisionError(NO_PROJECTOR)
    return projector, read_images(paths)


def counted(prompt: list[int]) -> str:
    """ " (16 for 1 image)" after a prompt's token count, for a prompt with images."""
    if not isinstance(prompt, Prompt):
        return ""
    return f" ({prompt.image_tokens} for {prompt.images} image{'s' if prompt.images > 1 else ''})"

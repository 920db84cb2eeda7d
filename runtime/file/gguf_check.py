"""Checks a GGUF before llama.cpp sees it: what its reader or its tokenizer would choke on.

A C++ exception or a failed assert inside llama.cpp cannot be caught from Python: a SentencePiece
vocabulary without its byte tokens, say, ends the whole process (`std::out_of_range`) the first
time a prompt holds a character outside it. So the header is walked once, in order, through a
read-only map of the file (only the header's pages are touched; nothing is allocated from a
length before that length is checked against the bytes left), and the first problem found is
one sentence naming the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

CHECK_VERSION = 1  # bump when a check is added: remembered passes are then checked again
GGUF_MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS
NO_TOKEN = (0xFFFFFFFF, -1)  # LLAMA_TOKEN_NULL, as converters write "none"
# GGUF value types of a fixed size, by their struct format
FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
# ggml tensor types: (elements per block, bytes per block); tests compare it with gguf-py's
TYPE_SIZES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip
# tokenizer.ggml.model values whose tokenizer falls back on byte tokens (llama.cpp's SPM)
BYTE_FALLBACK = ("llama",)
BPE = ("gpt2",)
NO_VOCAB = ("none", "no_vocab")

_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_FIXED = {kind: struct.Struct("<" + fmt) for kind, fmt in FIXED.items()}

Scalar = Union[int, float, bool, str]


class GGUFError(Exception):
    """A GGUF file that llama.cpp cannot load safely; the message names it and the first problem."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    kind: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass
class Header:
    """What the check read: scalar metadata, arrays as (item type, count), tensors."""

    version: int
    meta: dict[str, Scalar] = field(default_factory=dict)
    arrays: dict[str, tuple[int, int]] = field(default_factory=dict)
    tensors: list[Tensor] = field(default_factory=list)
    data_start: int = 0  # from the start of the GGUF
    size: int = 0


def check(
    path: Path, offset: int = 0, size: Optional[int] = None, label: Optional[str] = None
) -> Header:
    """Check the GGUF of `size` bytes at `offset` in `path` (all of it by default)."""
    name = label or str(path)
    try:
        with open(path, "rb") as fh:
            total = os.fstat(fh.fileno()).st_size
            size = total - offset if size is None else size
            if offset + size > total:
                raise GGUFError(f"{name} is truncated: it has {total - offset} of its {size} bytes")
            if size < 24:
                raise GGUFError(f"{name} is truncated: it ends inside its header")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _Walk(mm, offset, size, name).run()
    except OSError as exc:
        raise GGUFError(f"cannot read {name} ({exc.strerror or exc})") from None


class _Walk:
    def __init__(self, mm: mmap.mmap, base: int, size: int, label: str) -> None:
        self.mm = mm
        self.base = base
        self.pos = base
        self.end = base + size
        self.label = label
        self.tokens: set[bytes] = set()  # the vocabulary's byte-fallback candidates

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.label}: {_printable(problem)}")

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self.fail(
                f"{what} at byte {self.pos - self.base} needs {n} bytes, but only "
                f"{self.end - self.pos} are left: the file is truncated or its header damaged"
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        value: int = _U32(self.mm, self.pos)[0]
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        value: int = _U64(self.mm, self.pos)[0]
        self.pos += 8
        return value

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = self.mm[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", "replace")

    def name(self, what: str) -> tuple[str, str]:
        """A key or tensor name, and how a message shows it (short, printable)."""
        text = self.string(what)
        return text, (text if len(text) <= 64 else text[:64] + "...")

    def run(self) -> Header:
        if self.mm[self.pos : self.pos + 4] != GGUF_MAGIC:
            raise self.fail(
                f"not a GGUF file (it starts with {self.mm[self.pos : self.pos + 4]!r})"
            )
        self.pos += 4
        version = self.u32("the version")
        if version not in (2, 3):
            raise self.fail(f"GGUF version {version}; llama.cpp reads versions 2 and 3")
        header = Header(version=version, size=self.end - self.base)
        n_tensors = self.u64("the tensor count")
        n_kv = self.u64("the metadata count")
        left = self.end - self.pos
        if n_kv * 13 > left or n_tensors * 24 > left:
            raise self.fail(
                f"its header claims {n_kv} metadata entries and {n_tensors} tensors, "
                f"more than its {header.size} bytes can hold"
            )
        for _ in range(n_kv):
            key, shown = self.name("a metadata key")
            if key in header.meta or key in header.arrays:
                raise self.fail(f"the metadata key {shown!r} appears twice")
            self.value(header, key, shown, self.u32(f"the type of {shown}"))
        names: set[str] = set()
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name, shown = self.name("a tensor name")
            if name in names:
                raise self.fail(f"the tensor {shown!r} appears twice")
            names.add(name)
            name = shown  # tensors are named in messages only, past here
            n_dims = self.u32(f"the dimensions of {name}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.fail(f"the tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} work)")
            dims = tuple(self.u64(f"a dimension of {name}") for _ in range(n_dims))
            raw.append((name, dims, self.u32(f"the type of {name}"), self.u64(f"{name}'s offset")))
        alignment = header.meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(f"general.alignment is {alignment!r}, not a power of two")
        header.data_start = -(-(self.pos - self.base) // alignment) * alignment
        header.tensors = [self.tensor(header, alignment, *t) for t in raw]
        _check_layout(self, header)
        _check_vocab(self, header)
        return header

    def value(self, header: Header, key: str, shown: str, kind: int) -> None:
        if kind in _FIXED:
            fmt = _FIXED[kind]
            self.need(fmt.size, shown)
            header.meta[key] = fmt.unpack_from(self.mm, self.pos)[0]
            self.pos += fmt.size
        elif kind == STRING:
            header.meta[key] = self.string(shown)
        elif kind == ARRAY:
            item = self.u32(f"the item type of {shown}")
            count = self.u64(f"the length of {shown}")
            header.arrays[key] = (item, count)
            if item in _FIXED:
                self.need(count * _FIXED[item].size, f"the {count} items of {shown}")
                self.pos += count * _FIXED[item].size
            elif item == STRING:
                self.need(count * 8, f"the {count} strings of {shown}")
                self.strings(count, shown, collect=key == "tokenizer.ggml.tokens")
            elif item == ARRAY:
                raise self.fail(f"{shown} is an array of arrays, which llama.cpp cannot read")
            else:
                raise self.fail(f"{shown} is an array of unknown type {item}")
        else:
            raise self.fail(f"the metadata value {shown} has unknown type {kind}")

    def strings(self, count: int, key: str, collect: bool) -> None:
        """Step over `count` strings; for the vocabulary, note the byte-fallback tokens."""
        mm, pos, end, tokens = self.mm, self.pos, self.end, self.tokens
        for i in range(count):
            if end - pos < 8:
                break
            n = _U64(mm, pos)[0]
            pos += 8
            if n > end - pos:
                self.pos = pos
                raise self.fail(
                    f"string {i} of {key} claims {n} bytes, more than the {end - pos} left"
                )
            if collect and (n == 1 or (n == 6 and mm[pos : pos + 3] == b"<0x")):
                tokens.add(mm[pos : pos + n])
            pos += n
        else:
            self.pos = pos
            return
        self.pos = pos
        self.need(8, f"the rest of {key}")

    def tensor(
        self, header: Header, alignment: int, name: str, dims: tuple[int, ...], kind: int, at: int
    ) -> Tensor:
        if kind not in TYPE_SIZES:
            raise self.fail(f"the tensor {name} has unknown type {kind}")
        block, type_size = TYPE_SIZES[kind]
        elements = 1
        for d in dims:
            elements *= d
        if any(d >= 1 << 62 for d in dims) or elements >= 1 << 62:
            raise self.fail(f"the tensor {name} claims {elements} elements")
        if dims[0] % block:
            raise self.fail(
                f"the tensor {name}'s rows of {dims[0]} do not divide into blocks of {block}"
            )
        if at % alignment:
            raise self.fail(f"the tensor {name} starts at {at}, not a multiple of {alignment}")
        return Tensor(name, dims, kind, at, elements // block * type_size)


def _check_layout(walk: _Walk, header: Header) -> None:
    """Every tensor inside the file, none overlapping the next."""
    room = header.size - header.data_start
    previous: Optional[Tensor] = None
    for t in sorted(header.tensors, key=lambda t: (t.offset, t.nbytes)):
        if t.offset + t.nbytes > room:
            raise GGUFError(
                f"{walk.label} is truncated: the tensor {t.name} needs bytes "
                f"{header.data_start + t.offset}-{header.data_start + t.offset + t.nbytes}, "
                f"past the end of the file ({header.size} bytes)"
            )
        if previous is not None and t.offset < previous.offset + previous.nbytes:
            raise walk.fail(f"the tensors {previous.name} and {t.name} overlap")
        previous = t


def _check_vocab(walk: _Walk, header: Header) -> None:
    """The vocabulary's arrays agree, its tokenizer can spell any text, its ids are in range."""
    meta, arrays = header.meta, header.arrays
    model = meta.get("tokenizer.ggml.model")
    tokens = arrays.get("tokenizer.ggml.tokens")
    if tokens is None:
        if isinstance(model, str) and model not in NO_VOCAB:
            raise walk.fail(f"it names the tokenizer {model!r} but has no tokenizer.ggml.tokens")
        return
    if tokens[0] != STRING:
        raise walk.fail("tokenizer.ggml.tokens is not a list of strings")
    n_vocab = tokens[1]
    if n_vocab == 0:
        raise walk.fail("its vocabulary (tokenizer.ggml.tokens) is empty")
    for key, what in (("tokenizer.ggml.scores", "scores"), ("tokenizer.ggml.token_type", "types")):
        found = arrays.get(key)
        if found is None:
            continue
        if found[0] not in FIXED or _FIXED[found[0]].size != 4:
            raise walk.fail(f"{key} holds items of type {found[0]}, not 4-byte numbers")
        if found[1] != n_vocab:
            raise walk.fail(f"its vocabulary has {n_vocab} tokens but {found[1]} {what} ({key})")
    if model in BYTE_FALLBACK:
        missing = [
            f"<0x{b:02X}>"
            for b in range(256)
            if f"<0x{b:02X}>".encode() not in walk.tokens and bytes([b]) not in walk.tokens
        ]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise walk.fail(
                "its SentencePiece vocabulary lacks byte tokens (<0x00>...<0xFF>; "
                f"missing {missing[0]}{more}), so llama.cpp would crash on text outside it"
            )
    if model in BPE:
        merges = arrays.get("tokenizer.ggml.merges")
        if merges is None or merges[1] == 0 or merges[0] != STRING:
            raise walk.fail("its BPE vocabulary has no merges (tokenizer.ggml.merges)")
    for key, value in meta.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            if isinstance(value, bool) or not isinstance(value, int) or value in NO_TOKEN:
                continue
            if not 0 <= value < n_vocab:
                raise walk.fail(f"{key} is {value}, outside its vocabulary of {n_vocab} tokens")
    for t in header.tensors:
        is_vocab = t.name in ("token_embd.weight", "output.weight") and len(t.dims) >= 2
        if is_vocab and t.dims[1] != n_vocab:
            raise walk.fail(
                f"the tensor {t.name} is for {t.dims[1]} tokens, but the vocabulary has {n_vocab}"
            )


def _printable(text: str) -> str:
    """`text` with what a terminal would act on (newlines, escapes) written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

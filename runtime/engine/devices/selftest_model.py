"""Writes a tiny llama GGUF (Q4_0 weights) with no dependencies, for the CPU self-test.

Its matrices are quantized and wide enough to take the kernels that crash on some CPUs
(AMX, repacked Q4_0), so a variant that survives it survives a real model.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
from pathlib import Path

N_EMBD = 256
N_HEAD = 4
N_FF = 512
N_LAYER = 1
CONTEXT = 128
ALIGN = 32
Q4_0 = 2
F32 = 0
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "and",
    "then",
    "runs",
    "far",
    "away",
]


BYTES = range(3, 3 + 256)  # the byte tokens' ids


def _vocab() -> tuple[list[str], list[int]]:
    # All 256 byte tokens: without them llama.cpp's tokenizer throws on a character it
    # cannot spell (and the validator refuses the file).
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = ["\u2581" + w for w in WORDS] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = list(dict.fromkeys(pieces))
    while len(tokens) + len(pieces) < 384:
        pieces.append(f"\u2581w{len(pieces)}")
    tokens += pieces
    types += [1] * len(pieces)
    return tokens, types


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<Q", len(data)) + data


def _kv_u32(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", 4, value)


def _kv_f32(key: str, value: float) -> bytes:
    return _string(key) + struct.pack("<If", 6, value)


def _kv_str(key: str, value: str) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def _q4_0(rows: int, cols: int, rng: random.Random, zero: range = range(0)) -> bytes:
    """Random Q4_0 rows; the rows in `zero` have a scale of 0 (their dot products are 0)."""
    scale, none = struct.pack("<e", 0.02), struct.pack("<e", 0.0)
    per_row = cols // 32
    return b"".join(
        (none if r in zero else scale) + rng.randbytes(16)
        for r in range(rows)
        for _ in range(per_row)
    )


def write(path: Path) -> None:
    """Write the self-test model to `path` atomically."""
    rng = random.Random(7)
    tokens, types = _vocab()
    n_vocab = len(tokens)
    kvs = [
        _kv_str("general.architecture", "llama"),
        _kv_str("general.name", "llamapyz-selftest"),
        _kv_u32("llama.context_length", CONTEXT),
        _kv_u32("llama.embedding_length", N_EMBD),
        _kv_u32("llama.block_count", N_LAYER),
        _kv_u32("llama.feed_forward_length", N_FF),
        _kv_u32("llama.attention.head_count", N_HEAD),
        _kv_u32("llama.attention.head_count_kv", N_HEAD),
        _kv_u32("llama.rope.dimension_count", N_EMBD // N_HEAD),
        _kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
        _kv_str("tokenizer.ggml.model", "llama"),
        _string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, n_vocab)
        + b"".join(_string(t) for t in tokens),
        _string("tokenizer.ggml.scores")
        + struct.pack("<IIQ", 9, 6, n_vocab)
        + struct.pack(f"<{n_vocab}f", *(-float(i) for i in range(n_vocab))),
        _string("tokenizer.ggml.token_type")
        + struct.pack("<IIQ", 9, 5, n_vocab)
        + struct.pack(f"<{n_vocab}i", *types),
        _kv_u32("tokenizer.ggml.unknown_token_id", 0),
        _kv_u32("tokenizer.ggml.bos_token_id", 1),
        _kv_u32("tokenizer.ggml.eos_token_id", 2),
    ]
    ones = struct.pack(f"<{N_EMBD}f", *([1.0] * N_EMBD))
    tensors: list[tuple[str, tuple[int, ...], int, bytes]] = [
        ("token_embd.weight", (N_EMBD, n_vocab), Q4_0, _q4_0(n_vocab, N_EMBD, rng)),
        ("output_norm.weight", (N_EMBD,), F32, ones),
        # the byte tokens' logits are 0, below the likeliest word's: text stays readable
        ("output.weight", (N_EMBD, n_vocab), Q4_0, _q4_0(n_vocab, N_EMBD, rng, BYTES)),
    ]
    for i in range(N_LAYER):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (N_EMBD,), F32, ones),
            (p + "ffn_norm.weight", (N_EMBD,), F32, ones),
        ]
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors.append(
                (p + name + ".weight", (N_EMBD, N_EMBD), Q4_0, _q4_0(N_EMBD, N_EMBD, rng))
            )
        for name in ("ffn_gate", "ffn_up"):
            tensors.append((p + name + ".weight", (N_EMBD, N_FF), Q4_0, _q4_0(N_FF, N_EMBD, rng)))
        tensors.append((p + "ffn_down.weight", (N_FF, N_EMBD), Q4_0, _q4_0(N_EMBD, N_FF, rng)))

    infos = b""
    offset = 0
    for name, dims, ggml_type, data in tensors:
        infos += _string(name) + struct.pack("<I", len(dims))
        infos += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset)
        offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
    header += bytes(-len(header) % ALIGN)
    body = b"".join(data + bytes(-len(data) % ALIGN) for _, _, _, data in tensors)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".selftest-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header + body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

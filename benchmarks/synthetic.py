"""Synthetic GGUF files of a given size for the build rows: valid GGUF, not a runnable model.

They carry a 32,000-token vocabulary, as Llama 2 and Mistral GGUFs do, because `pack build`
reads the header and a real model's header is mostly its vocabulary; random tensor bytes
stand in for the weights. Written once, tensor by tensor, and kept in the bench cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

FORMAT = 2  # bump when the layout changes, to rewrite cached files
N_VOCAB = 32_000
ROW_BYTES = 8192  # one row: 4096 F16 or 2048 F32 values
MAX_TENSOR_ROWS = 8192  # 64 MiB tensors keep the writer's memory flat
HEADER_BYTES = 800_000  # about what the vocabulary takes; the tensors fill the rest of `size`


def label(size: int) -> str:
    """'100 MB', '1 GB', '4 MB' (decimal units, as `pack` prints them)."""
    if size >= 1_000_000_000:
        return f"{size / 1e9:g} GB"
    return f"{size / 1e6:g} MB"


def path_for(cache: Path, size: int) -> Path:
    return cache / f"synthetic-v{FORMAT}-{size}.gguf"


def _tensors(size: int) -> Iterator[tuple[str, int, bool]]:
    """(name, rows, is_f16) for tensors that fill a `size`-byte file, rounded up to a row."""
    rows_left = max(1, -(-(size - HEADER_BYTES) // ROW_BYTES))
    index = 0
    while rows_left:
        rows = min(rows_left, MAX_TENSOR_ROWS)
        yield f"blk.{index}.ffn_down.weight", rows, index % 2 == 0
        rows_left -= rows
        index += 1


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    tokens += [f"\u2581w{i}" for i in range(N_VOCAB - len(tokens))]
    types += [1] * (N_VOCAB - len(types))
    scores = [-float(i) for i in range(N_VOCAB)]
    return tokens, scores, types


def write(path: Path, size: int) -> None:
    """Write a GGUF with about `size` bytes of tensor data to `path`, atomically."""
    import gguf
    import numpy as np

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        plan = list(_tensors(size))
        writer.add_name("llamapyz-bench-synthetic")
        writer.add_context_length(4096)
        writer.add_embedding_length(4096)
        writer.add_block_count(len(plan))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        tokens, scores, types = _vocab()
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        for name, rows, f16 in plan:
            dtype = np.dtype(np.float16 if f16 else np.float32)
            shape = (rows, ROW_BYTES // dtype.itemsize)
            writer.add_tensor_info(name, shape, dtype, rows * ROW_BYTES)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, rows, f16 in plan:
            dtype = np.dtype(np.float16 if f16 else np.float32)
            data = np.frombuffer(os.urandom(rows * ROW_BYTES), dtype=dtype)
            writer.write_tensor_data(data.reshape(rows, ROW_BYTES // dtype.itemsize))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def ensure(cache: Path, size: int) -> Path:
    """The cached synthetic GGUF of `size` bytes, written first if missing."""
    path = path_for(cache, size)
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        write(path, size)
    return path

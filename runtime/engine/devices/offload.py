"""How many layers go to the GPU: the GGUF's own tensor sizes per layer, the KV cache of the
chosen context, the compute buffers and a margin, against the devices' free memory; and
what is written into llama_model_params for it.

llama.cpp offloads the last `n_gpu_layers` of the model's n_layer + 1 units: the repeating
blocks, then the output layer (the input embedding always stays on the CPU).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

MiB = 2**20
MARGIN = 256 * MiB  # drivers' own allocations, fragmentation; Ollama's estimates without one OOM
_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class LayoutError(Exception):
    """The GGUF's header could not be read for the layer estimate."""


@dataclass(frozen=True)
class Layout:
    """What the estimate needs from a GGUF: bytes per unit, and the KV cache's shape."""

    units: list[int]  # bytes of blk.0 .. blk.{n-1}, then the output layer
    n_layer: int
    kv_per_token: int  # bytes of K and V (f16) per token and layer
    n_vocab: int
    n_embd: int
    n_ctx_train: int


def read_layout(path: Path, offset: int, size: int) -> Layout:
    """The per-layer sizes of the GGUF at `offset` in `path` (`size` bytes long)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return _parse(fh, offset, size)
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise LayoutError(f"cannot read the tensor layout of {path} ({exc})") from None


def _parse(fh: Any, offset: int, size: int) -> Layout:
    def take(fmt: str) -> Any:
        n = struct.calcsize("<" + fmt)
        data = fh.read(n)
        if len(data) != n:
            raise EOFError("the header ends early")
        return struct.unpack("<" + fmt, data)[0]

    def text() -> str:
        return bytes(fh.read(take("Q"))).decode("utf-8", "replace")

    if fh.read(4) != b"GGUF" or take("I") < 2:
        raise ValueError("not a GGUF v2+ file")
    n_tensors, n_kv = take("Q"), take("Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key, kind = text(), take("I")
        if kind in _FIXED:
            meta[key] = take(_FIXED[kind])
        elif kind == 8:
            meta[key] = text()
        elif kind == 9:
            item, n = take("I"), take("Q")
            if item in _FIXED:
                values = struct.unpack(
                    f"<{n}{_FIXED[item]}", fh.read(struct.calcsize(_FIXED[item]) * n)
                )
                meta[key] = max(values) if values and key.endswith("head_count_kv") else n
            elif item == 8:
                for _ in range(n):
                    fh.seek(take("Q"), 1)
                meta[key] = n
            else:
                raise ValueError(f"unknown array type in {key}")
        else:
            raise ValueError(f"unknown value type in {key}")
    tensors: list[tuple[str, int]] = []
    for _ in range(n_tensors):
        name = text()
        fh.seek(8 * take("I") + 4, 1)  # dims, type
        tensors.append((name, take("Q")))
    align = int(meta.get("general.alignment", 32))
    data_start = fh.tell() - offset
    data_start += -data_start % align
    ends = sorted(o for _, o in tensors) + [size - data_start]
    span = {o: ends[i + 1] - o for i, o in enumerate(ends[:-1])}
    arch = str(meta.get("general.architecture", ""))
    n_layer = int(meta.get(f"{arch}.block_count", 0))
    if n_layer < 1:
        raise ValueError("no block_count")
    units = [0] * (n_layer + 1)
    has_output = any(n == "output.weight" for n, _ in tensors)
    for name, off in tensors:
        if name.startswith("blk."):
            index = int(name.split(".")[1])
            if index < n_layer:
                units[index] += span.get(off, 0)
        elif name.startswith("output") or (name == "token_embd.weight" and not has_output):
            units[n_layer] += span.get(off, 0)  # a tied output layer copies token_embd
    n_embd = int(meta.get(f"{arch}.embedding_length", 0))
    n_head = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    k_len = int(meta.get(f"{arch}.attention.key_length", n_embd // n_head))
    v_len = int(meta.get(f"{arch}.attention.value_length", n_embd // n_head))
    n_vocab = int(meta.get("tokenizer.ggml.tokens", 32000))
    n_ctx_train = int(meta.get(f"{arch}.context_length", 4096))
    return Layout(units, n_layer, 2 * n_head_kv * (k_len + v_len), n_vocab, n_embd, n_ctx_train)


def fitting(layout: Layout, free: int, n_ctx: int, n_batch: int) -> tuple[int, int]:
    """(units that fit in `free` bytes, bytes they need): whole units from the end, each with
    its KV cache, after the compute buffers and the margin."""
    compute = n_batch * (layout.n_vocab + 16 * layout.n_embd) * 4
    budget = free - MARGIN - compute
    used = 0
    count = 0
    for i in range(len(layout.units) - 1, -1, -1):
        need = layout.units[i] + (layout.kv_per_token * n_ctx if i < layout.n_layer else 0)
        if used + need > budget:
            break
        used += need
        count += 1
    return count, used + compute


@dataclass
class GpuOffload:
    """What `apply` writes into llama_model_params: the devices (a NULL-terminated
    ggml_backend_dev_t array), layers, split mode, main GPU and tensor split. Hold it as long
    as the model: llama.cpp keeps pointers to the arrays."""

    devices: Any
    n_gpu_layers: int
    split_mode: int
    main_gpu: int
    tensor_split: Any = None

    def apply(self, params: Any) -> None:
        params.devices = ctypes.cast(self.devices, ctypes.c_void_p).value
        params.n_gpu_layers = self.n_gpu_layers
        params.split_mode = self.split_mode
        params.main_gpu = self.main_gpu
        if self.tensor_split is not None:
            params.tensor_split = ctypes.cast(self.tensor_split, ctypes.POINTER(ctypes.c_float))


def make_offload(
    handles: list[int],
    n_gpu_layers: int,
    split_mode: int = 1,
    main_gpu: int = 0,
    weights: Optional[list[float]] = None,
) -> GpuOffload:
    """The offload over `handles` (none: everything on the CPU, no device used at all)."""
    array = (ctypes.c_void_p * (len(handles) + 1))(*handles, None)
    split = None
    if weights:
        split = (ctypes.c_float * max(16, len(weights)))(*weights)
    return GpuOffload(array, n_gpu_layers if handles else 0, split_mode, main_gpu, split)

"""What a loaded model is, as llama.cpp reads it: metadata, size, parameters, special tokens."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Optional

# File types by general.file_type (llama.cpp's LLAMA_FTYPE_*), as Ollama names quantizations.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
}


@dataclass(frozen=True)
class Fim:
    """The fill-in-the-middle tokens: prefix, suffix, middle."""

    pre: int
    suf: int
    mid: int


def metadata(model: Any) -> dict[str, Any]:
    """The GGUF's metadata, numbers as numbers; arrays (the vocabulary) left out."""
    C, handle = model._C, model._model
    out: dict[str, Any] = {}
    for i in range(int(C.llama_model_meta_count(handle))):
        key = _string(lambda buf, n, i=i: C.llama_model_meta_key_by_index(handle, i, buf, n))
        value = _string(lambda buf, n, i=i: C.llama_model_meta_val_str_by_index(handle, i, buf, n))
        if value.startswith("arr["):
            continue
        out[key] = _number(value)
    return dict(sorted(out.items()))


def n_params(model: Any) -> int:
    return int(model._C.llama_model_n_params(model._model))


def n_bytes(model: Any) -> int:
    """The size of the weights in memory."""
    return int(model._C.llama_model_size(model._model))


def quantization(model: Any) -> str:
    kind = model.meta("general.file_type")
    if kind is not None and kind.isdigit():
        return FILE_TYPES.get(int(kind), f"type {kind}")
    return "unknown"


def size_label(count: int) -> str:
    """A parameter count the way Ollama shows it: 134.52M, 8.0B."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}".rstrip("0").rstrip(".") + suffix
    return str(count)


def fim(model: Any) -> Optional[Fim]:
    """The model's fill-in-the-middle tokens, or None when it has none."""
    C, vocab = model._C, model._vocab
    ids = [int(C.llama_vocab_fim_pre(vocab)), int(C.llama_vocab_fim_suf(vocab))]
    ids.append(int(C.llama_vocab_fim_mid(vocab)))
    if min(ids) < 0:
        return None
    return Fim(*ids)


def has_token(model: Any, text: str) -> bool:
    """Whether `text` is one token of the vocabulary (a special marker such as <think>)."""
    tokens = model.tokenize(text, add_special=False)
    return len(tokens) == 1 and model.token_text(tokens[0]) == text


def _string(call: Any) -> str:
    buf = ctypes.create_string_buffer(256)
    n = int(call(buf, len(buf)))
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        call(buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    if value in ("true", "false"):
        return value == "true"
    return value

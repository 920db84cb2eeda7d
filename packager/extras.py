"""The further GGUFs a file carries beside the model — a draft model, a vision projector — and
the checks that each fits the model, made at build: a mismatch is one sentence then, not a
failure at the first draft or the first image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from packager.errors import PackError
from runtime.engine.decoding.draft import (  # llama.cpp's rule
    VOCAB_CHECK_START,
    VOCAB_MAX_DIFFERENCE,
)
from runtime.file import gguf_check

TOKENS = "tokenizer.ggml.tokens"
# Where a projector's output width is read (tools/mtmd/clip.cpp, clip_n_mmproj_embd): the tensor
# and the dimension mtmd reads it from, by clip.projector_type. `clip.vision.projection_dim` is
# not it: LLaVA's converter writes CLIP's own projection there (768 beside a 4096-wide model).
OUTPUT_WIDTH = {
    "mlp": ("mm.2.weight", 1),
    "qwen2vl_merger": ("mm.2.bias", 0),
    "qwen2.5vl_merger": ("mm.2.bias", 0),
    "gemma3": ("mm.input_projection.weight", 0),
    "idefics3": ("mm.model.fc.weight", 1),
}


def header(path: Path) -> gguf_check.Header:
    """The streaming GGUF check of `path`, its header as read."""
    try:
        return gguf_check.check(path)
    except gguf_check.GGUFError as exc:
        raise PackError(str(exc)) from None


def check_draft(model: Path, draft: Path) -> None:
    """Refuse a draft whose vocabulary llama.cpp would not draft with for `model`."""
    why = _vocab_mismatch(model, header(model), draft, header(draft))
    if why:
        raise PackError(f"{draft} cannot be the draft model of {model}: {why}")


def _vocab_mismatch(
    model: Path, m: gguf_check.Header, draft: Path, d: gguf_check.Header
) -> Optional[str]:
    kind_m, kind_d = m.meta.get("tokenizer.ggml.model"), d.meta.get("tokenizer.ggml.model")
    if TOKENS not in d.arrays:
        return "it has no vocabulary (tokenizer.ggml.tokens)"
    if TOKENS not in m.arrays:
        return "the model has no vocabulary (tokenizer.ggml.tokens)"
    if kind_m != kind_d:
        return f"its tokenizer is {kind_d!r}, the model's is {kind_m!r} (tokenizer.ggml.model)"
    for key, name in (("bos_token_id", "BOS"), ("eos_token_id", "EOS")):
        id_m, id_d = m.meta.get(f"tokenizer.ggml.{key}"), d.meta.get(f"tokenizer.ggml.{key}")
        if id_m != id_d:
            return f"its {name} token is {id_d}, the model's is {id_m}"
    n_m, n_d = m.arrays[TOKENS][1], d.arrays[TOKENS][1]
    if abs(n_m - n_d) > VOCAB_MAX_DIFFERENCE:
        return (
            f"its vocabulary has {n_d} tokens, the model's {n_m}; llama.cpp drafts only "
            f"with vocabularies at most {VOCAB_MAX_DIFFERENCE} tokens apart"
        )
    texts_m, texts_d = _token_texts(model), _token_texts(draft)
    for i in range(VOCAB_CHECK_START, min(n_m, n_d)):
        if texts_m(i) != texts_d(i):
            return f"token {i} is {texts_d(i)!r} in it but {texts_m(i)!r} in the model"
    return None


def _token_texts(path: Path) -> Any:
    """token id -> its text as bytes, read through gguf's memory map (nothing is copied whole)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields[TOKENS]
    parts, data = field.parts, field.data
    return lambda i: parts[data[i]].tobytes()


def check_projector(model: Path, projector: Path) -> dict[str, Any]:
    """Refuse what mtmd could not use with `model`; the projector's facts for the manifest."""
    m, p = header(model), header(projector)
    arch = m.meta.get("general.architecture")
    merged = sorted(k for k in (*m.meta, *m.arrays) if k.startswith(f"{arch}.vision."))
    if merged:
        raise PackError(
            f"{model} has its vision tower merged into the model GGUF ({merged[0]}), which "
            "llama.cpp cannot read images with: pack the text model and its own projector"
        )
    kind = p.meta.get("general.architecture")
    if kind != "clip":
        raise PackError(
            f"{projector} is not a vision projector: its general.architecture is {kind!r}, "
            "not 'clip'"
        )
    if p.meta.get("clip.has_vision_encoder") is not True:
        raise PackError(
            f"{projector} is not a vision projector: it has no vision encoder "
            "(clip.has_vision_encoder)"
        )
    ptype = p.meta.get("clip.projector_type") or p.meta.get("clip.vision.projector_type")
    width = _output_width(p, ptype)
    n_embd = m.meta.get(f"{arch}.embedding_length")
    if width is not None and isinstance(n_embd, int) and width != n_embd:
        raise PackError(  # mtmd's own words, at build rather than at the first image
            f"{projector} does not fit {model}: mismatch between text model "
            f"(n_embd = {n_embd}) and mmproj (n_embd = {width})"
        )
    facts = {
        "name": p.meta.get("general.name") or projector.stem,
        "projector_type": ptype,
        "image_size": p.meta.get("clip.vision.image_size"),
        "output_width": width,
    }
    return {k: v for k, v in facts.items() if v is not None}


def _output_width(p: gguf_check.Header, ptype: object) -> Optional[int]:
    rule = OUTPUT_WIDTH.get(ptype) if isinstance(ptype, str) else None
    if rule is None:
        return None  # a type read here by no rule: mtmd checks it when it loads
    name, dim = rule
    tensor = next((t for t in p.tensors if t.name == name), None)
    return tensor.dims[dim] if tensor is not None and len(tensor.dims) > dim else None

"""A small vision projector with random weights (gguf.GGUFWriter) and pictures written in pure
Python: the stand-ins the tests and the benchmarks use for a vision model, since none can be
downloaded here. Run as a script, it writes a projector for a model:

    python scripts/tiny_vision.py MODEL.gguf proj.gguf [--kind gemma3] [--image 448 --patch 14]
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

KINDS = ("mlp", "gemma3", "qwen2vl")
# the projector_type each kind writes (clip-impl.h's names)
PROJECTOR_TYPES = {"mlp": "mlp", "gemma3": "gemma3", "qwen2vl": "qwen2vl_merger"}


def write_tiny_projector(
    path: Path,
    *,
    width: int = 64,
    architecture: str = "clip",
    image: int = 32,
    patch: int = 8,
    seed: int = 7,
    kind: str = "mlp",
    vit_width: int = 32,
    vit_ff: int = 64,
    vit_layers: int = 2,
    vit_heads: int = 2,
    merge: int = 2,
) -> Path:
    """A small mlp vision projector (LLaVA's shape: a 2-block ViT, of which llava runs the first,
    and a 2-layer MLP) with random weights, whose output is `width` wide and which makes
    (image / patch)**2 tokens of an image. The keys, their GGUF types and the tensors are those
    the vendored tools/mtmd/clip.cpp reads (a wrong type aborts); the real libmtmd loads it.
    `kind="gemma3"`: gemma3's (SigLIP's ViT, all its blocks run, no class embedding; the patches
    average-pooled `merge` x `merge` (2 or 4), RMS-normed and projected: (image / patch /
    merge)**2 tokens), whose image tokens the model reads with non-causal attention, between
    <start_of_image> and <end_of_image> text. `kind="qwen2vl"`: Qwen2-VL's (no position
    embeddings: its ViT ropes each patch by row and column; two patch convolutions, one per
    frame of a video, both over a still image; each 2 x 2 patches merged by an MLP), which
    resizes an image to a multiple of 2 `patch` keeping its shape and makes one token per 2 x 2
    patches, between <|vision_start|> and <|vision_end|> text; beside a model with M-RoPE
    (`rope.dimension_sections`) its tokens take max(columns, rows) positions, not one each.
    The `vit_*` sizes set the encoder's work."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_layer = vit_width, vit_ff, vit_layers
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny-projector")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", PROJECTOR_TYPES[kind])
    if kind == "gemma3":
        writer.add_uint32("clip.vision.projector.scale_factor", merge)
    writer.add_uint32("clip.vision.image_size", image)
    writer.add_uint32("clip.vision.patch_size", patch)
    writer.add_uint32("clip.vision.embedding_length", n_embd)
    writer.add_uint32("clip.vision.feed_forward_length", n_ff)
    writer.add_uint32("clip.vision.block_count", n_layer)
    writer.add_uint32("clip.vision.attention.head_count", vit_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_uint32("clip.vision.projection_dim", width)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    writer.add_bool("clip.use_gelu", True)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    n_patches = (image // patch) ** 2
    mlp, qwen = kind == "mlp", kind == "qwen2vl"
    writer.add_tensor("v.patch_embd.weight", weight(n_embd, 3, patch, patch).astype(np.float16))
    if qwen:
        writer.add_tensor(
            "v.patch_embd.weight.1", weight(n_embd, 3, patch, patch).astype(np.float16)
        )
    else:
        writer.add_tensor("v.position_embd.weight", weight(n_patches + mlp, n_embd))
    if mlp:
        writer.add_tensor("v.class_embd", weight(n_embd))
    for i in range(n_layer):  # llava runs all but the last: the first block is a real ViT layer
        b = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(b + name + ".weight", weight(n_embd, n_embd))
            writer.add_tensor(b + name + ".bias", weight(n_embd))
        for name in ("ln1", "ln2"):
            writer.add_tensor(b + name + ".weight", np.ones(n_embd, dtype=np.float32))
            writer.add_tensor(b + name + ".bias", np.zeros(n_embd, dtype=np.float32))
        writer.add_tensor(b + "ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(b + "ffn_up.bias", weight(n_ff))
        writer.add_tensor(b + "ffn_down.weight", weight(n_embd, n_ff))
        writer.add_tensor(b + "ffn_down.bias", weight(n_embd))
    ln = "pre_ln" if mlp else "post_ln"
    writer.add_tensor(f"v.{ln}.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor(f"v.{ln}.bias", np.zeros(n_embd, dtype=np.float32))
    if qwen:  # the merger: 2 x 2 patches side by side, through an MLP
        writer.add_tensor("mm.0.weight", weight(4 * n_embd, 4 * n_embd))
        writer.add_tensor("mm.0.bias", weight(4 * n_embd))
        writer.add_tensor("mm.2.weight", weight(width, 4 * n_embd))
        writer.add_tensor("mm.2.bias", weight(width))
    elif mlp:
        writer.add_tensor("mm.0.weight", weight(width, n_embd))
        writer.add_tensor("mm.0.bias", weight(width))
        writer.add_tensor("mm.2.weight", weight(width, width))
        writer.add_tensor("mm.2.bias", weight(width))
    else:
        writer.add_tensor("mm.soft_emb_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor("mm.input_projection.weight", weight(n_embd, width))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def random_rows(width: int, height: int, seed: int = 1) -> list[bytes]:
    """Rows of random RGB pixels, `width * 3` bytes each."""
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(width * 3)) for _ in range(height)]


def encode_image(kind: str, rows: list[bytes]) -> bytes:
    """RGB rows as a picture file: "ppm", "bmp" or "png" (zlib)."""
    width, height = len(rows[0]) // 3, len(rows)
    if kind == "ppm":
        return b"P6\n# a comment\n%d %d\n255\n" % (width, height) + b"".join(rows)
    if kind == "bmp":  # bottom-up rows of BGR, each padded to 4 bytes
        pad = b"\0" * (-width * 3 % 4)
        pixels = b"".join(
            bytes(r[i : i + 3][::-1]) for r in reversed(rows) for i in range(0, width * 3, 3)
        )
        stride = width * 3
        body = b"".join(pixels[y * stride : (y + 1) * stride] + pad for y in range(height))
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 14 + 40 + len(body), 0, 0, 54) + info + body
    assert kind == "png"

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\0" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
    return png + chunk(b"IEND", b"")


def image_bytes(kind: str, width: int = 40, height: int = 30, seed: int = 1) -> bytes:
    """A picture of random pixels, written in pure Python: "ppm", "bmp" or "png" (zlib)."""
    return encode_image(kind, random_rows(width, height, seed))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tiny_vision.py",
        description="Write a random-weight vision projector for MODEL: its answers are noise, "
        "but every path an image takes runs.",
    )
    p.add_argument("model", type=Path, help="The text model whose embedding width it matches.")
    p.add_argument("output", type=Path, help="Where to write the projector GGUF.")
    p.add_argument("--kind", choices=KINDS, default="gemma3", help="Default: gemma3.")
    p.add_argument("--image", type=int, default=224, help="Image side in pixels (default 224).")
    p.add_argument("--patch", type=int, default=14, help="Patch side in pixels (default 14).")
    args = p.parse_args(argv)
    from runtime.file.gguf_check import check

    meta = check(args.model).meta
    width = meta.get(f"{meta.get('general.architecture')}.embedding_length")
    if not isinstance(width, int):
        p.error(f"{args.model} names no embedding length")
    write_tiny_projector(
        args.output, width=width, image=args.image, patch=args.patch, kind=args.kind
    )
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

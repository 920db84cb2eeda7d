"""Ollama's model store: names to manifests, manifests to blobs, and the model's Modelfile settings.

The store (`ollama pull` writes it) is `manifests/<host>/<namespace>/<model>/<tag>`, a JSON
manifest per name, and `blobs/sha256-<hex>`, one file per layer, named by its digest. The
model layer is a plain GGUF, so it loads in place like any other file.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from runtime.file.archive import GGUF_MAGIC, ArchiveError, hash_range
from runtime.sources.ollama_names import HOST, MEDIA_PREFIX, MODEL, NAMESPACE, TAG
from runtime.sources.ollama_names import ModelRef as ModelRef
from runtime.sources.ollama_names import OllamaError as OllamaError
from runtime.sources.ollama_names import parse_name as parse_name
from runtime.sources.source import ModelSource

SERVICE_ROOT = Path("/usr/share/ollama/.ollama/models")
MAX_SUGGESTIONS = 5
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")  # as a user may type it
_LAYER_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")  # as Ollama writes it in a manifest


@dataclass(frozen=True)
class OllamaModel:
    """A resolved Ollama model: its GGUF and the settings its Modelfile gave it."""

    ref: ModelRef
    manifest_path: Path
    source: ModelSource
    digest: str
    params: dict[str, Any] = field(default_factory=dict)
    system: Optional[str] = None
    template: Optional[str] = None
    license: Optional[str] = None
    other_layers: list[str] = field(default_factory=list)
    projector: Optional[ModelSource] = None  # its vision projector layer, where it has one


@dataclass(frozen=True)
class ListedModel:
    """One runnable model in the store, as `ollama list` shows it."""

    ref: ModelRef
    size: int
    modified: float  # the manifest's mtime, seconds since the epoch

    @property
    def name(self) -> str:
        return self.ref.display

    @property
    def spec(self) -> str:
        return self.ref.spec


@dataclass(frozen=True)
class _Layer:
    kind: str
    digest: str
    hex: str
    size: int


def store_root(env: Optional[Mapping[str, str]] = None) -> Path:
    """Ollama's model store: `$OLLAMA_MODELS`, else `~/.ollama/models`, else the service's store."""
    env = os.environ if env is None else env
    candidates: list[Path] = []
    if env.get("OLLAMA_MODELS"):
        candidates.append(Path(env["OLLAMA_MODELS"]).expanduser())
    home = env.get("HOME")
    candidates.append((Path(home) if home else Path.home()) / ".ollama" / "models")
    candidates.append(SERVICE_ROOT)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise OllamaError(f"no Ollama model store found (looked in {looked}; set OLLAMA_MODELS)")


def _manifest_refs(root: Path) -> list[tuple[ModelRef, Path]]:
    """Every well-named manifest under `root`, as Ollama lays them out."""
    found: list[tuple[ModelRef, Path]] = []
    base = root / "manifests"
    if not base.is_dir():
        return found
    for path in sorted(base.glob("*/*/*/*")):
        host, namespace, model, tag = path.relative_to(base).parts
        ok = (
            HOST.fullmatch(host)
            and NAMESPACE.fullmatch(namespace)
            and MODEL.fullmatch(model)
            and TAG.fullmatch(tag)
        )
        if ok and path.is_file():
            found.append((ModelRef(host, namespace, model, tag), path))
    return found


def _not_found(ref: ModelRef, root: Path, known: list[ModelRef]) -> OllamaError:
    where = f"{ref.spec} is not in the Ollama store at {root}"
    if not known:
        return OllamaError(
            f"{where} (it holds no models; fetch one with `ollama pull {ref.display}`)"
        )

    def similarity(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()

    # The model's name counts first: `smol:2b` is closer to `smol:1b` than to `qwen:2b`.
    def closeness(other: ModelRef) -> tuple[float, float]:
        return (similarity(ref.model, other.model), similarity(ref.display, other.display))

    ranked = sorted(known, key=closeness, reverse=True)
    shown = ", ".join(r.spec for r in ranked[:MAX_SUGGESTIONS])
    more = len(ranked) - MAX_SUGGESTIONS
    return OllamaError(
        f"{where}; the closest it has: {shown}"
        + (f" (and {more} more: see `ollama list`)" if more > 0 else "")
    )


def _find_manifest(ref: ModelRef, root: Path) -> tuple[ModelRef, Path]:
    path = ref.manifest_path(root)
    if path.is_file():
        return ref, path
    # Ollama compares names without case, and some versions wrote manifests lower-cased.
    known = _manifest_refs(root)
    folded = tuple(p.lower() for p in ref.parts)
    for other, other_path in known:
        if tuple(p.lower() for p in other.parts) == folded:
            return other, other_path
    raise _not_found(ref, root, [r for r, _ in known])


def _read_manifest(ref: ModelRef, path: Path) -> tuple[list[_Layer], dict[str, Any]]:
    """The manifest's layers, checked, and its config descriptor."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise OllamaError(f"cannot read the manifest of {ref.spec} ({exc.strerror})") from None
    except ValueError as exc:
        raise OllamaError(
            f"the manifest of {ref.spec} ({path}) is not valid JSON ({exc})"
        ) from None
    raw_layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(raw_layers, list):
        raise OllamaError(f"the manifest of {ref.spec} ({path}) has no list of layers")
    layers: list[_Layer] = []
    for i, raw in enumerate(raw_layers):
        if not isinstance(raw, dict):
            raise OllamaError(f"layer {i} of the manifest of {ref.spec} ({path}) is not an object")
        media, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
        if not isinstance(media, str) or not isinstance(size, int) or isinstance(size, bool):
            raise OllamaError(
                f"layer {i} of the manifest of {ref.spec} ({path}) lacks a mediaType or a size"
            )
        match = _LAYER_DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if match is None:
            raise OllamaError(
                f"layer {i} of the manifest of {ref.spec} ({path}) has a bad digest {digest!r} "
                f"(expected sha256:<64 hex digits>)"
            )
        kind = media[len(MEDIA_PREFIX) :] if media.startswith(MEDIA_PREFIX) else media
        layers.append(_Layer(kind, match.group(0), match.group(1), size))
    config = data.get("config")
    return layers, config if isinstance(config, dict) else {}


def _blob(root: Path, hex_digest: str) -> Path:
    return root / "blobs" / f"sha256-{hex_digest}"


def _check_blob(ref: ModelRef, root: Path, layer: _Layer, verify: bool) -> Path:
    """The layer's blob, checked against the manifest's size and, with `verify`, its digest."""
    path = _blob(root, layer.hex)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise OllamaError(
            f"the {layer.kind} layer of {ref.spec} is missing from the store "
            f"({path}); fetch it again with `ollama pull {ref.display}`"
        ) from None
    if size != layer.size:
        raise OllamaError(
            f"the {layer.kind} layer of {ref.spec} ({path}) has {size} bytes, but its manifest "
            f"says {layer.size}; fetch it again with `ollama pull {ref.display}`"
        )
    if verify:
        try:
            actual = hash_range(path, 0, size)
        except (ArchiveError, OSError) as exc:
            raise OllamaError(f"cannot read {path} to verify it ({exc})") from None
        if actual != layer.hex:
            raise OllamaError(
                f"the {layer.kind} layer of {ref.spec} ({path}) is damaged: its sha256 is "
                f"{actual}, not {layer.hex}; fetch it again with `ollama pull {ref.display}`"
            )
    return path


def _check_gguf(path: Path, what: str) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise OllamaError(f"cannot read {what} ({path}): {exc.strerror}") from None
    if head != GGUF_MAGIC:
        raise OllamaError(
            f"{what} ({path}) is not a GGUF model (it starts with {head!r}, not {GGUF_MAGIC!r})"
        )


def _text(ref: ModelRef, layer: _Layer, path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise OllamaError(
            f"the {layer.kind} layer of {ref.spec} ({path}) is not UTF-8 text"
        ) from None


def _no_model_layer(ref: ModelRef, root: Path, layers: list[_Layer], config: Any) -> OllamaError:
    """Why a manifest without a model layer cannot run here, as precisely as the store tells."""
    digest = config.get("digest") if isinstance(config, dict) else None
    match = _LAYER_DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is not None:
        try:
            settings = json.loads(_blob(root, match.group(1)).read_bytes())
        except (OSError, ValueError):
            settings = None
        if isinstance(settings, dict) and settings.get("remote_host"):
            return OllamaError(
                f"{ref.spec} is an Ollama cloud model (served by {settings['remote_host']}); "
                f"it has no weights on this machine"
            )
    kinds = sorted({layer.kind for layer in layers})
    return OllamaError(
        f"{ref.spec} has no GGUF model layer (its layers: {', '.join(kinds) or 'none'})"
    )


def resolve(
    name: Union[str, ModelRef],
    root: Optional[Path] = None,
    verify: bool = False,
    verify_model: bool = True,
) -> OllamaModel:
    """The GGUF and Modelfile settings of the Ollama model `name`, checked against its manifest;
    with `verify`, every blob's sha256 too, except the model's when `verify_model` is False
    (`pack build` checks that one while it copies it)."""
    ref = parse_name(name) if isinstance(name, str) else name
    root = store_root() if root is None else root
    ref, manifest_path = _find_manifest(ref, root)
    layers, config = _read_manifest(ref, manifest_path)
    # A manifest may list several model layers (recent Ollama keeps a split GGUF that way);
    # llamapyz loads one GGUF, so it takes the first and reports the others.
    model_layer: Optional[_Layer] = None
    texts: dict[str, list[str]] = {}
    params: dict[str, Any] = {}
    other: list[str] = []
    projector: Optional[ModelSource] = None
    for layer in layers:
        if layer.kind == "model" and model_layer is None:
            model_layer = layer
        elif layer.kind == "projector" and projector is None:
            path = _check_blob(ref, root, layer, verify)
            _check_gguf(path, f"the projector layer of {ref.spec}")
            projector = ModelSource(path, 0, layer.size, f"{ref.spec} (projector)", path.name)
        elif layer.kind in ("template", "prompt", "system", "license"):
            path = _check_blob(ref, root, layer, verify)
            # "prompt" is what early Ollama called the template layer.
            kind = "template" if layer.kind == "prompt" else layer.kind
            texts.setdefault(kind, []).append(_text(ref, layer, path))
        elif layer.kind == "params":
            path = _check_blob(ref, root, layer, verify)
            try:
                loaded = json.loads(path.read_bytes())
            except ValueError as exc:
                raise OllamaError(
                    f"the params layer of {ref.spec} ({path}) is not valid JSON ({exc})"
                ) from None
            if not isinstance(loaded, dict):
                raise OllamaError(
                    f"the params layer of {ref.spec} ({path}) is not a JSON object "
                    f"(it is a {type(loaded).__name__})"
                )
            params.update(loaded)
        else:
            other.append(layer.kind)
    if model_layer is None:
        raise _no_model_layer(ref, root, layers, config)
    blob = _check_blob(ref, root, model_layer, verify and verify_model)
    _check_gguf(blob, f"the model layer of {ref.spec}")
    source = ModelSource(path=blob, offset=0, size=model_layer.size, label=ref.spec)

    def last(kind: str) -> Optional[str]:
        values = texts.get(kind)
        return values[-1] if values else None

    licenses = texts.get("license")
    return OllamaModel(
        ref=ref,
        manifest_path=manifest_path,
        source=source,
        digest=model_layer.digest,
        params=params,
        system=last("system"),
        template=last("template"),
        # A model may carry several licenses (its own and its base model's): keep them all.
        license="\n\n".join(licenses) if licenses else None,
        other_layers=other,
        projector=projector,
    )


def resolve_digest(text: str, root: Optional[Path] = None) -> ModelSource:
    """The blob named by `sha256-<hex>` or `sha256:<hex>`, which must be a GGUF."""
    match = _DIGEST.fullmatch(text)
    if match is None:
        raise OllamaError(f"{text!r} is not a blob digest (expected sha256-<64 hex digits>)")
    root = store_root() if root is None else root
    hex_digest = match.group(1).lower()
    path = _blob(root, hex_digest)
    if not path.is_file():
        raise OllamaError(f"there is no blob sha256-{hex_digest} in the Ollama store at {root}")
    _check_gguf(path, f"blob sha256-{hex_digest}")
    return ModelSource(
        path=path, offset=0, size=path.stat().st_size, label=f"sha256-{hex_digest[:12]}"
    )


def list_models(root: Optional[Path] = None) -> list[ListedModel]:
    """The store's runnable models (those with a GGUF layer), sorted by name."""
    root = store_root() if root is None else root
    listed: list[ListedModel] = []
    for ref, path in _manifest_refs(root):
        # A damaged manifest, or one without weights (a cloud model), runs nothing here; resolve()
        # explains why when it is asked for by name.
        try:
            layers, _ = _read_manifest(ref, path)
            modified = path.stat().st_mtime
        except (OllamaError, OSError):
            continue
        sizes = [layer.size for layer in layers if layer.kind == "model"]
        if sizes:
            listed.append(ListedModel(ref=ref, size=sizes[0], modified=modified))
    return sorted(listed, key=lambda m: m.name)

"""Turns what the user asked for into an open model source: the embedded weights, a .gguf, the
weights of another .pyz or of a llamafile, an Ollama model by name, or an Ollama blob by digest."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Optional

from runtime.file import gguf_memo
from runtime.file.archive import (
    GGUF_MAGIC,
    MANIFEST_NAME,
    ROLE_NAMES,
    ArchiveError,
    read_manifest,
)
from runtime.file.gguf_check import GGUFError
from runtime.sources.source import ModelSource

DIGEST = re.compile(r"sha256[-:][0-9a-fA-F]{64}")
# What an Ollama name looks like when it is not a file: `name:tag`, `ns/name[:tag]`, …
OLLAMA_LIKE = re.compile(r"[A-Za-z0-9_][\w.\-]*(/[\w.\-]+){0,2}(:[\w.\-]+)?")


class WeightsError(Exception):
    """The requested weights cannot be found or are not a model."""


def embedded(pyz: Path, role: str = "model") -> ModelSource:
    """The GGUF playing `role` ("model", "draft", "projector") in the .pyz at `pyz`."""
    try:
        manifest = read_manifest(pyz)
    except ArchiveError as exc:
        raise WeightsError(str(exc)) from None
    w = manifest.gguf(role)
    if w is None:
        if role == "model":
            raise WeightsError(
                f"{pyz.name} carries no weights (built with --no-weights): give a model with -m"
            )
        raise WeightsError(f"{pyz.name} carries no {ROLE_NAMES.get(role, role)}")
    shown = w.filename if role == "model" else f"{role} {w.filename}"
    return ModelSource(
        path=pyz,
        offset=w.offset,
        size=w.size,
        label=f"{pyz.name} (embedded {shown})",
        filename=w.filename,
    )


def _zip_model(path: Path, spec: str) -> ModelSource:
    """A .pyz's embedded weights, or a llamafile's stored GGUF member."""
    from runtime.sources import llamafile  # the store readers load only when they are asked for

    with zipfile.ZipFile(path) as zf:
        ours = MANIFEST_NAME in zf.namelist()
    if ours:
        return embedded(path)
    try:
        found = llamafile.find_gguf_member(path)
    except llamafile.LlamafileError as exc:
        raise WeightsError(str(exc)) from None
    if found is None:
        raise WeightsError(f"{spec} is a zip file with no GGUF model in it")
    return found


def from_path(spec: str) -> ModelSource:
    """A GGUF file, the weights in another .pyz, or a llamafile's, named by `-m`."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise WeightsError(f"{spec} does not exist")
    if path.is_dir():
        raise WeightsError(f"{spec} is a directory, not a model file")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise WeightsError(f"cannot read {spec} ({exc.strerror})") from None
    if head == GGUF_MAGIC:
        return ModelSource(
            path=path.resolve(),
            offset=0,
            size=path.stat().st_size,
            label=str(spec),
            filename=path.name,
        )
    if zipfile.is_zipfile(path):
        return _zip_model(path.resolve(), spec)
    raise WeightsError(f"{spec} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")


def from_ollama(name: str, verify: bool = False) -> ModelSource:
    """An Ollama model by name, its params and system prompt as default flags."""
    from runtime.sources import ollama
    from runtime.sources.ollama_params import default_flags

    try:
        model = ollama.resolve(name, verify=verify)
        flags, _ignored = default_flags(model)
    except ollama.OllamaError as exc:
        raise WeightsError(str(exc)) from None
    s = model.source
    return ModelSource(
        path=s.path,
        offset=s.offset,
        size=s.size,
        label=s.label,
        filename=model.ref.display.replace(":", "-") + ".gguf",
        default_args=tuple(flags),
        license=model.license,
        name=model.ref.display,
    )


def from_digest(spec: str) -> ModelSource:
    from runtime.sources import ollama

    try:
        return ollama.resolve_digest(spec)
    except ollama.OllamaError as exc:
        raise WeightsError(str(exc)) from None


def from_spec(spec: str) -> ModelSource:
    """Whatever `-m` (or `pack build`) was given."""
    if spec.startswith("ollama:"):
        return from_ollama(spec[len("ollama:") :])
    if DIGEST.fullmatch(spec) and not Path(spec).exists():
        return from_digest(spec)
    missing = not Path(spec).expanduser().exists()
    if missing and OLLAMA_LIKE.fullmatch(spec) and not spec.endswith((".gguf", ".pyz")):
        # `-m llama3.2:1b`, as an Ollama user would type it.
        try:
            return from_ollama(spec)
        except WeightsError as exc:
            raise WeightsError(f"{spec} is not a file, nor an Ollama model: {exc}") from None
    return from_path(spec)


def checked(source: ModelSource) -> ModelSource:
    """`source`, once its GGUF passed the check (on its first use; remembered after)."""
    try:
        gguf_memo.check_once(source.path, source.offset, source.size, source.label)
    except GGUFError as exc:
        raise WeightsError(str(exc)) from None
    except OSError as exc:
        raise WeightsError(f"cannot read {source.label} ({exc.strerror or exc})") from None
    return source


def resolve(spec: Optional[str], archive: Optional[Path]) -> ModelSource:
    """`-m SPEC` when given, else the weights embedded in the running archive; checked before
    llama.cpp sees them, which cannot be stopped from taking the process down on a bad file."""
    if spec:
        return checked(from_spec(spec))
    if archive is None:
        raise WeightsError("no model: give one with -m MODEL.gguf")
    return checked(embedded(archive))


def projector(
    spec: Optional[str], model: Optional[str], archive: Optional[Path]
) -> Optional[ModelSource]:
    """The vision projector: `--mmproj SPEC` (a .gguf; the projector a .pyz, a llamafile or an
    Ollama model carries; "none": no projector), else the one carried with the model (by the
    running file, or by what `-m` names); None where there is none."""
    if spec is not None and spec.lower() == "none":
        return None
    if spec:
        path = Path(spec).expanduser()
        if path.is_file() and not zipfile.is_zipfile(path):
            return _is_projector(checked(from_path(spec)), spec)
        found = carried_projector(spec)
        if found is None:
            raise WeightsError(f"--mmproj {spec}: it carries no vision projector")
        return _is_projector(checked(found), spec)
    if model:
        found = carried_projector(model)
    elif archive is not None:
        found = carried_projector(str(archive))
    else:
        found = None
    return checked(found) if found is not None else None


def carried_projector(spec: str) -> Optional[ModelSource]:
    """The projector that the .pyz, llamafile or Ollama model `spec` carries, if any."""
    path = Path(spec).expanduser()
    if path.is_file():
        if not zipfile.is_zipfile(path):
            return None  # a GGUF is a model or a projector, never both
        if _ours(path):
            try:
                if read_manifest(path).gguf("projector") is None:
                    return None
            except ArchiveError as exc:
                raise WeightsError(str(exc)) from None
            return embedded(path.resolve(), "projector")
        from runtime.sources import llamafile

        try:
            return llamafile.find_gguf_member(path.resolve(), projector=True)
        except llamafile.LlamafileError as exc:
            raise WeightsError(str(exc)) from None
    name = spec[len("ollama:") :] if spec.startswith("ollama:") else spec
    if spec.startswith("ollama:") or (OLLAMA_LIKE.fullmatch(spec) and not DIGEST.fullmatch(spec)):
        from runtime.sources import ollama

        try:
            return ollama.resolve(name).projector
        except ollama.OllamaError as exc:
            raise WeightsError(str(exc)) from None
    return None


def _ours(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return MANIFEST_NAME in zf.namelist()


def _is_projector(source: ModelSource, spec: str) -> ModelSource:
    """`source`, once its header says it is a vision projector (mtmd would abort on a model)."""
    from runtime.file import gguf_check

    try:
        header = gguf_check.check(source.path, source.offset, source.size, source.label)
    except GGUFError as exc:
        raise WeightsError(str(exc)) from None
    kind = header.meta.get("general.architecture")
    if kind != "clip" or not header.meta.get("clip.has_vision_encoder"):
        raise WeightsError(
            f"--mmproj {spec} is not a vision projector (its general.architecture is {kind!r}"
            + (", with no vision encoder)" if kind == "clip" else ", not 'clip')")
        )
    return source


def draft_for(spec: Optional[str], model: ModelSource) -> Optional[ModelSource]:
    """`-md SPEC` when given, else the draft model packed beside `model` in its .pyz (or
    None: the model's file carries none); checked as `resolve` checks."""
    if spec:
        return checked(from_spec(spec))
    if model.offset == 0 or not zipfile.is_zipfile(model.path):
        return None
    try:
        found = read_manifest(model.path).gguf("draft")
    except ArchiveError:
        return None  # a llamafile, say: no draft of ours
    return None if found is None else checked(embedded(model.path, "draft"))

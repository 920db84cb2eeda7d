"""Turns what the user asked for into an open model source: embedded weights or `-m PATH`."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from runtime.archive import GGUF_MAGIC, ArchiveError, read_manifest


class WeightsError(Exception):
    """The requested weights cannot be found or are not a model."""


@dataclass(frozen=True)
class ModelSource:
    """A GGUF inside some file: the file, where the GGUF starts, how long it is."""

    path: Path
    offset: int
    size: int
    label: str
    filename: str = ""  # the GGUF's own file name, where it has one


def embedded(pyz: Path) -> ModelSource:
    """The weights carried by the .pyz at `pyz`."""
    try:
        manifest = read_manifest(pyz)
    except ArchiveError as exc:
        raise WeightsError(str(exc)) from None
    if manifest.weights is None:
        raise WeightsError(
            f"{pyz.name} carries no weights (built with --no-weights): give a model with -m"
        )
    w = manifest.weights
    return ModelSource(
        path=pyz, offset=w.offset, size=w.size, label=f"{pyz.name} (embedded {w.filename})"
    )


def from_path(spec: str) -> ModelSource:
    """A GGUF file, or the weights embedded in another .pyz, named by `-m`."""
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
        return embedded(path.resolve())
    raise WeightsError(f"{spec} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})")


def resolve(spec: Optional[str], archive: Optional[Path]) -> ModelSource:
    """`-m SPEC` when given, else the weights embedded in the running archive."""
    if spec:
        return from_path(spec)
    if archive is None:
        raise WeightsError("no model: give one with -m MODEL.gguf")
    return embedded(archive)

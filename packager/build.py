"""`pack build`: lay out shebang, padding, the GGUFs (streamed), then the runtime zipapp."""

from __future__ import annotations

import errno
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

from packager import extras, memo, runtime_zip
from packager.errors import PackError
from packager.gguf_facts import check_magic, read_facts
from runtime.file.archive import (
    ALIGNMENT,
    CHUNK,
    MANIFEST_NAME,
    Manifest,
    Weights,
    align_up,
    hash_range,
    preamble,
    write_padding,
)
from runtime.file.boot import cache_dir

PROGRESS_MIN_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class BuildResult:
    path: Path
    size: int
    manifest: Manifest

    @property
    def size_human(self) -> str:
        return human(self.size)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Interrupted(Exception):
    pass


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the build the way Ctrl-C does, so the temp file is removed."""

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Shifted:
    """A file seen from `base` on: the zip's own offsets stay small (no ZIP64 needed)."""

    def __init__(self, raw: BinaryIO, base: int) -> None:
        self.raw = raw
        self.base = base

    def tell(self) -> int:
        return self.raw.tell() - self.base

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            return self.raw.seek(offset + self.base) - self.base
        return self.raw.seek(offset, whence) - self.base

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def write(self, data: bytes) -> int:
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def truncate(self) -> int:
        return self.raw.truncate()

    def seekable(self) -> bool:
        return True


class _Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.show = total >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.show and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            pct = 100 * self.done // max(1, self.total)
            sys.stderr.write(
                f"\r{self.label}: {pct:3d}% ({human(self.done)} of {human(self.total)})"
            )
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _copy(src: Path, dst: BinaryIO, size: int, progress: Callable[[int], None]) -> None:
    """Copy `size` bytes of `src` to `dst`'s position, in the kernel where it can."""
    with src.open("rb", buffering=0) as fh:
        left = size
        use_range = hasattr(os, "copy_file_range")
        while left:
            n = 0
            if use_range:
                try:
                    n = os.copy_file_range(fh.fileno(), dst.fileno(), min(CHUNK, left))
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    use_range = False
                    continue
            else:
                data = fh.read(min(CHUNK, left))
                n = len(data)
                if n:
                    dst.write(data)
            if not n:
                raise PackError(f"{src} shrank while it was being copied")
            left -= n
            progress(n)


def _copy_and_hash(src: Path, dst: BinaryIO, size: int, progress: Callable[[int], None]) -> str:
    """Copy and sha256 at once: hashing runs on a second thread and core (hashlib drops the GIL)."""
    stop = threading.Event()
    result: dict[str, Any] = {}

    def check(_: int) -> None:
        if stop.is_set():
            raise _Interrupted()

    def worker() -> None:
        try:
            result["sha256"] = hash_range(src, 0, size, check)
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        _copy(src, dst, size, progress)
    finally:
        if sys.exc_info()[0] is not None:
            stop.set()
        thread.join()
    if "error" in result:
        raise result["error"]
    return str(result["sha256"])


@dataclass(frozen=True)
class Expected:
    """The sha256 the weights must have (an Ollama blob's name), and what to say if not."""

    sha256: str
    what: str  # "the model layer of ollama:x:latest (/path/to/blob)"
    remedy: str  # "fetch it again with `ollama pull x`"

    def check(self, actual: str) -> None:
        if actual != self.sha256:
            raise PackError(
                f"{self.what} is damaged: its sha256 is {actual}, not {self.sha256}; {self.remedy}"
            )


def _facts(model: Path, expected: Optional[Expected]) -> dict[str, Any]:
    """The header's facts; for a file with a known digest, a damaged copy is named as such."""
    try:
        return read_facts(model)
    except PackError:
        if expected is not None:
            expected.check(hash_range(model, 0, model.stat().st_size))
        raise


def _check_output(inputs: dict[str, Optional[Path]], output: Path) -> None:
    if output.exists() and output.is_dir():
        raise PackError(f"{output} is a directory: give a file name with -o")
    for role, given in inputs.items():
        if given and output.exists() and given.exists() and os.path.samefile(given, output):
            raise PackError(f"the output {output} is the input {role}: choose another -o")
    parent = output.parent
    if not parent.is_dir():
        raise PackError(f"cannot write {output}: the directory {parent} does not exist")


@dataclass
class _Input:
    """One GGUF to embed: what was learned of it before a byte of the output is written."""

    role: str
    path: Path
    filename: str
    before: os.stat_result
    known: Optional[dict[str, Any]]  # the memo's sha256 and facts, where it had them
    facts: dict[str, Any]  # its header's facts (read_facts)
    size: int
    expected: Optional[Expected] = None
    entry_facts: dict[str, Any] = field(default_factory=dict)  # kept in its manifest entry


def _take(
    role: str, path: Path, filename: str, expected: Optional[Expected], cache: Path
) -> _Input:
    check_magic(path)  # a missing file, a folder, not a GGUF: said plainly
    try:
        before = path.stat()
    except OSError as exc:
        raise PackError(f"cannot read {path}: {exc.strerror}") from None
    known = memo.recall(cache, before)
    if known is not None and expected is not None:
        expected.check(known["sha256"])
    facts = dict(known["facts"]) if known else _facts(path, expected)
    size = int(facts.pop("file_size"))
    return _Input(role, path, filename, before, known, facts, size, expected)


def _extra(role: str, path: Path, model: Path, cache: Path) -> _Input:
    """A draft model or a projector, checked against `model` (the streaming check runs too)."""
    part = _take(role, path, path.name, None, cache)
    if role == "draft":
        extras.check_draft(model, path)
        keep = ("name", "architecture", "parameters", "quantization")
        part.entry_facts = {k: part.facts[k] for k in keep if part.facts.get(k) is not None}
    else:
        part.entry_facts = extras.check_projector(model, path)
    return part


def _write_error(output: Path, exc: OSError) -> PackError:
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return PackError(
            f"cannot write {output}: {exc.strerror} (the disk is full or the file too large)"
        )
    return PackError(f"cannot write {output}: {exc.strerror or exc}")


def build_pyz(
    model: Optional[Path],
    output: Path,
    *,
    args: Optional[list[str]] = None,
    defaults: Optional[dict[str, Any]] = None,
    filename: Optional[str] = None,
    model_extra: Optional[dict[str, Any]] = None,
    pythons: Optional[list[str]] = None,
    cache: Optional[Path] = None,
    expected: Optional[Expected] = None,
    gpu: str = "default",
    draft: Optional[Path] = None,
    projector: Optional[Path] = None,
    machines: Optional[list[str]] = None,
) -> BuildResult:
    """Write `output`: the runtime, plus `model`'s weights unless `model` is None, and the
    `draft` model and vision `projector` where given, each checked against the model, for
    the architectures `machines` (default: every one built here; named: each must be).

    Each GGUF's sha256 is computed while it is copied, unless an earlier build of the same,
    unchanged file remembered it (`packager.memo`); `expected` is checked against the model's."""
    given = {"draft": draft, "projector": projector}
    wanted = [(role, path) for role, path in given.items() if path is not None]
    if wanted and model is None:
        raise PackError("a draft model or a projector needs a model to go with")
    _check_output({"model": model, **given}, output)
    cache = cache or cache_dir()
    inputs: list[_Input] = []
    if model is not None:
        inputs.append(_take("model", model, filename or model.name, expected, cache))
        inputs += [_extra(role, path, model, cache) for role, path in wanted]
    facts = dict(inputs[0].facts) if inputs else {}
    facts.update(model_extra or {})
    rz = runtime_zip.build(cache, pythons, gpu, machines, named=machines is not None)
    build_info = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": f"{sys.platform}-{platform.machine()}",
        "packages": rz.packages,
        "cpu_variants": rz.cpu_variants,
        "gpu_backends": rz.gpu_backends,
        "pythons": rz.pythons,
        "arches": rz.arches,
        "runtime_build_id": rz.build_id,
    }
    try:
        fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as exc:
        raise PackError(f"cannot write in {output.parent} ({exc.strerror})") from None
    tmp = Path(tmp_name)
    try:
        with _sigterm_interrupts(), open(fd, "w+b", buffering=0) as out:
            out.write(preamble(rz.pythons, list(rz.arches) or None))
            ggufs = []
            offset = ALIGNMENT
            for part in inputs:  # each GGUF at the next 64 KiB boundary, the zip after the last
                write_padding(out, offset)
                ggufs.append(_write_gguf(part, out, offset, output))
                out.seek(offset + part.size)
                offset = align_up(offset + part.size)
            if ggufs:
                write_padding(out, align_up(out.tell(), 16))
            manifest = Manifest(
                ggufs=tuple(ggufs),
                model=facts,
                args=list(args or []),
                build=build_info,
                defaults=dict(defaults or {}),
            )
            base = out.tell()
            _copy(rz.path, out, rz.path.stat().st_size, lambda n: None)
            with zipfile.ZipFile(_Shifted(out, base), "a") as zf:
                zinfo = zipfile.ZipInfo(MANIFEST_NAME, date_time=runtime_zip.ZIP_EPOCH)
                zinfo.external_attr = 0o100644 << 16
                zf.writestr(zinfo, json.dumps(manifest.to_json(), indent=1))
            end = out.seek(0, os.SEEK_END)
        mode = 0o777 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, output)
        for part, entry in zip(inputs, ggufs):
            if part.known is None:
                learned = dict(part.facts, file_size=part.size)
                memo.remember(cache, part.path, part.before, entry.sha256, learned)
    except (KeyboardInterrupt, _Interrupted):
        tmp.unlink(missing_ok=True)
        raise PackError(f"interrupted: {output} was not written") from None
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(output, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuildResult(path=output, size=end, manifest=manifest)


def _write_gguf(part: _Input, out: BinaryIO, offset: int, output: Path) -> Weights:
    """Copy one GGUF to `out` at `offset` (the position), hashing it unless the memo knows it."""
    label = f"writing {output.name}" if part.role == "model" else f"writing the {part.role}"
    progress = _Progress(label, part.size)
    if part.known is not None:
        _copy(part.path, out, part.size, progress)
        sha = str(part.known["sha256"])
    else:
        sha = _copy_and_hash(part.path, out, part.size, progress)
        if part.expected is not None:
            part.expected.check(sha)
    return Weights(
        offset=offset,
        size=part.size,
        sha256=sha,
        filename=part.filename,
        role=part.role,
        facts=part.entry_facts,
    )


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

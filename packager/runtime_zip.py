"""The runtime half of a .pyz: a shiv zipapp of the runtime and what it imports, built once.

Its files are copied from the build environment's installed distributions (no pip, no
network, no compiling), keeping only what the runtime uses. The zip is cached by the
identity of those files, so a build only appends it after the weights.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from packager.errors import PackError
from runtime.file.boot import NATIVE

ENTRY_POINT = "runtime.cli:run"
BOOT_MODULE = "_llamapyz_boot"
MAIN_PY = f"import {BOOT_MODULE}\n{BOOT_MODULE}.main()\n"
# Distributions the runtime imports, by distribution name; their own requirements (but not
# llama-cpp-python's: numpy and diskcache serve only its high-level modules) come along.
CORE_ROOTS = ("click", "llama_cpp_python", "typing_extensions", "jinja2")
# Only `--server` imports these: a .pyz extracts them the first time one is imported
# (runtime/file/boot.py, DEFERRED_LIST), so a first one-shot or chat start skips most files.
SERVER_ROOTS = ("fastapi", "uvicorn", "sse_starlette", "prometheus_client")
ROOTS = CORE_ROOTS + SERVER_ROOTS
NOT_FOLLOWED = {"llama_cpp_python"}
# llama-cpp-python's high-level modules import numpy; the runtime uses only the bindings.
LLAMA_CPP_MODULES = {
    "__init__.py",
    "llama_cpp.py",
    "_ctypes_extensions.py",
    "_ggml.py",
    "llama_grammar.py",
    "mtmd_cpp.py",  # images: libmtmd's bindings (runtime/engine/media/vision.py)
}
# The libraries the runtime loads; libmtmd (multimodal: images) links to libllama and libggml.
LIB_FAMILIES = ("libllama", "libggml", "libggml-base", "libmtmd")
# Loaded by file name (llama-cpp-python's loader), not as another library's dependency.
LOADED_BY_NAME = ("libllama", "libmtmd")
DIST_INFO_KEEP = re.compile(r"(METADATA|LICEN[CS]E.*|COPYING.*|top_level\.txt)$")
ZIP_EPOCH = (2020, 1, 1, 0, 0, 0)
FORMAT = 7  # bump when the zip's layout changes, to invalidate cached zips


@dataclass(frozen=True)
class RuntimeZip:
    path: Path
    build_id: str
    packages: dict[str, str]
    cpu_variants: list[str]  # the first architecture's (the builder's, when carried)
    pythons: list[str]
    gpu_backends: list[str]
    # machine -> {"cpu_variants": [...], "gpu_backends": [...], "floor": {"glibc": "2.34", …}},
    # for each architecture carried (packager/elf.py reads the floor)
    arches: dict[str, dict[str, Any]] = field(default_factory=dict)


def _dist_files(name: str) -> list[tuple[str, Path]]:
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise PackError(f"the build environment lacks {name}: run `make install`") from None
    chosen: list[tuple[str, Path]] = []
    libs: dict[str, list[str]] = {}
    for f in dist.files or []:
        rel = str(f)
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue
        parts = rel.split("/")
        if ".dist-info" in parts[0]:
            if len(parts) == 2 and DIST_INFO_KEEP.search(parts[1]) or parts[1:2] == ["licenses"]:
                chosen.append((rel, Path(str(dist.locate_file(f)))))
            continue
        if _normal(name) == "llama_cpp_python":
            if parts[0] == "llama_cpp" and len(parts) == 2:
                if parts[1] not in LLAMA_CPP_MODULES:
                    continue
            elif parts[:2] == ["llama_cpp", "lib"] and len(parts) == 3:
                family = parts[2].split(".so")[0]
                if family in LIB_FAMILIES:
                    libs.setdefault(family, []).append(parts[2])
                continue
            elif parts[0] == "bin" and len(parts) == 2:
                if not (parts[1].startswith("libggml-cpu-") or parts[1] == "libggml-rpc.so"):
                    continue
            else:
                continue
        chosen.append((rel, Path(str(dist.locate_file(f)))))
    for family, names in libs.items():
        # The wheel installs each library three times (.so, .so.0, .so.0.x.y): ship one.
        wanted = _shipped(family).rsplit("/", 1)[1]
        pick = wanted if wanted in names else sorted(names, key=len)[0]
        src = Path(str(dist.locate_file(f"llama_cpp/lib/{pick}")))
        chosen.append((_shipped(family).rsplit("/", 1)[0] + f"/{pick}", src))
    return chosen


def _shipped(family: str) -> str:
    """Where one of llama.cpp's libraries goes under site-packages, and the name it is looked
    up by: libllama.so for llama-cpp-python's loader, the soname (.so.0) for libraries that
    other libraries link to. libmtmd waits in the file beside the CPU variants until the first
    image (runtime/file/boot.py, runtime/engine/media/vision.py): a first start without one skips
    it."""
    name = f"{family}.so" if family in LOADED_BY_NAME else f"{family}.so.0"
    return f"bin/{name}" if family == "libmtmd" else f"llama_cpp/lib/{name}"


def _cross(arc: str) -> Optional[str]:
    """Where a cross-built file (laid out as the wheel installs it) is shipped: as the builder's
    own architecture ships the same library, or not at all."""
    name = arc.rsplit("/", 1)[-1]
    if not arc.startswith("llama_cpp/lib/"):
        return arc
    family = name.split(".so")[0]
    return _shipped(family) if family in LIB_FAMILIES else None


def _runtime_package() -> list[tuple[str, Path]]:
    import runtime

    root = Path(runtime.__file__).parent
    if not (root / "serve" / "web" / "marked.js").is_file():
        raise PackError(
            "the chat page's Markdown renderer runtime/serve/web/marked.js is missing: "
            "run `make install` (it runs scripts/fetch_marked.py)"
        )
    return [
        (f"runtime/{p.relative_to(root).as_posix()}", p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def bundled() -> list[str]:
    """The distributions to ship: ROOTS and what they require, as installed here."""
    return list(_closure(ROOTS))


def deferred() -> list[str]:
    """The distributions only the server needs."""
    core = {_normal(n) for n in _closure(CORE_ROOTS)}
    return [n for n in _closure(ROOTS) if _normal(n) not in core]


@functools.cache
def _closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    from importlib import metadata

    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if _normal(name) in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name in roots:
                raise PackError(f"the build environment lacks {name}: run `make install`") from None
            continue  # an optional requirement for another platform or Python
        seen[_normal(name)] = dist.metadata["Name"]
        if _normal(name) in NOT_FOLLOWED:
            continue
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    return tuple(sorted(seen.values(), key=_normal))


@dataclass(frozen=True)
class Collected:
    files: list[tuple[str, Path]]  # (path under site-packages, source file)
    compiled: dict[str, str]  # distributions with ABI-tagged extension modules -> version
    deferred: list[str]  # top-level names under site-packages that only the server needs


def collect() -> Collected:
    """Everything the runtime ships, and which of it to extract only for a server."""
    from importlib import metadata

    from packager.abis import EXT

    files = _runtime_package()
    compiled: dict[str, str] = {}
    later = {_normal(n) for n in deferred()}
    tops: set[str] = set()
    for name in bundled():
        own = _dist_files(name)
        if any(EXT.search(arc) for arc, _src in own):
            compiled[name] = metadata.version(name)
        if _normal(name) in later:
            tops |= {arc.split("/")[0] for arc, _src in own}
        files += own
    core_tops = {arc.split("/")[0] for arc, _src in files if arc.split("/")[0] not in tops}
    if tops & core_tops:  # a folder shared with a core distribution: extract it up front
        tops -= core_tops
    return Collected(sorted(files), compiled, sorted(tops))


def _key(files: list[tuple[str, Path]]) -> str:
    from importlib import metadata

    h = hashlib.sha256(f"{FORMAT} {metadata.version('shiv')}".encode())
    h.update(sys.version.encode())
    for arc, src in files:
        st = src.stat()
        h.update(f"{arc}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    boot = Path(__file__).resolve().parent.parent / "runtime" / "file" / "boot.py"
    h.update(boot.read_bytes())
    return h.hexdigest()[:20]


def _versions() -> dict[str, str]:
    from importlib import metadata

    import runtime

    found = {"llamapyz": runtime.__version__}
    for name in bundled():
        found[name] = metadata.version(name)
    return found


def build(
    cache: Path,
    pythons: Optional[list[str]] = None,
    gpu: str = "default",
    machines: Optional[list[str]] = None,
    named: bool = False,
) -> RuntimeZip:
    """The runtime zip for the current build environment, the CPython versions it should
    run on (default: all supported), the GPU backends (`--gpu`) and the architectures
    (default: every one built here; `named`: the caller asked for these, so each must be),
    from the cache or built now."""
    from packager import abis, arches, gpu_libs, zip_memo

    pythons = pythons or list(abis.SUPPORTED)
    machines = machines or list(arches.ARCHES)
    natives: dict[str, list[tuple[str, Path]]] = {}
    for machine in machines:
        if machine == arches.host():
            natives[machine] = gpu_libs.files(gpu)
        else:
            cross = [
                (shipped, src)
                for arc, src in arches.cross_files(machine, named)
                if (shipped := _cross(arc)) is not None
            ]
            if cross:
                natives[machine] = cross
    extra = [(f"{m} {a}", s) for m, files in natives.items() for a, s in files]
    stamp = zip_memo.stamp(
        FORMAT,
        pythons
        + sorted(natives)
        + [f"{a}:{s.stat().st_size}:{s.stat().st_mtime_ns}" for a, s in extra],
    )
    known = zip_memo.recall(cache, stamp)
    if known is not None:
        with contextlib.suppress(TypeError):
            return RuntimeZip(**dict(known, path=Path(known["path"])))
    rz = _build(cache, pythons, natives)
    zip_memo.remember(cache, stamp, dict(asdict(rz), path=str(rz.path)))
    return rz


def _build(
    cache: Path, pythons: list[str], natives: dict[str, list[tuple[str, Path]]]
) -> RuntimeZip:
    """`natives`: for each architecture to carry, its files beyond the installed engine's
    (the builder's: its GPU backends; another: its cross-built llama.cpp)."""
    from packager import abis, arches, elf, gpu_libs

    found = collect()
    host = arches.host()
    files: list[tuple[str, Path]] = []
    for arc, src in found.files:
        if arches.is_native(arc):
            if host in natives:
                files.append((f"{NATIVE}{host}/{arc}", src))
        elif not abis.EXT.search(arc) or host in natives:
            files.append((arc, src))
    carried: dict[str, dict[str, Any]] = {}
    for machine, extra in natives.items():
        files += [(f"{NATIVE}{machine}/{arc}", src) for arc, src in extra]
        files += abis.extension_files(cache, found.compiled, pythons, machine)
        own = [(arc, src) for arc, src in found.files if arches.is_native(arc)]
        mine = extra + (own if machine == host else [])
        carried[machine] = {
            "cpu_variants": arches.variants(mine),
            "gpu_backends": gpu_libs.backends(extra),
            "floor": elf.floor([src for _, src in mine]),
        }
    files.sort()
    first = carried[next(iter(carried))] if carried else {"cpu_variants": [], "gpu_backends": []}
    variants, gpus = first["cpu_variants"], first["gpu_backends"]
    key = _key(files + [(f"python {v}", Path(__file__)) for v in pythons])
    target = cache / "build" / f"runtime-{key}.zip"
    info = target.with_suffix(".json")
    if target.exists() and info.exists():
        try:
            build_id = json.loads(info.read_text())["build_id"]
            return RuntimeZip(target, build_id, _versions(), variants, pythons, gpus, carried)
        except (OSError, ValueError, KeyError):
            pass
    target.parent.mkdir(parents=True, exist_ok=True)
    build_id = _write(files, found.deferred, target)
    info.write_text(json.dumps({"build_id": build_id}))
    _prune(target.parent, keep=3)
    return RuntimeZip(target, build_id, _versions(), variants, pythons, gpus, carried)


def _prune(folder: Path, keep: int) -> None:
    """Drop all but the newest `keep` cached runtime zips: each edit of the runtime makes one."""
    zips = sorted(folder.glob("runtime-*.zip"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in zips[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


# Read only where used (a GPU, an image), never by zipimport or a plain first start: LZMA,
# a third of deflate's size for the Vulkan backend's shaders (29 MB: 9.0 MB -> 3.2 MB), at
# about twice deflate's time to unpack, once. CUDA's libraries stay deflated: LZMA would
# take minutes to pack their hundreds of MB.
LZMA_PREFIXES = ("libggml-vulkan", "libmtmd")


def _compression(member: str) -> int:
    base = member.rsplit("/", 1)[-1]
    return zipfile.ZIP_LZMA if base.startswith(LZMA_PREFIXES) else zipfile.ZIP_DEFLATED


def _write(files: list[tuple[str, Path]], deferred_tops: list[str], target: Path) -> str:
    from importlib import metadata

    from shiv import bootstrap
    from shiv.bootstrap.environment import Environment
    from shiv.builder import iter_package_files

    import runtime.file.boot

    contents = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".runtime-")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:

            def put(arcname: str, data: bytes, mode: int = 0o644) -> None:
                zinfo = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
                zinfo.compress_type = _compression(arcname)
                zinfo.external_attr = (0o100000 | mode) << 16
                zf.writestr(zinfo, data)

            for arc, src in files:
                data = src.read_bytes()
                contents.update(arc.encode() + b"\0" + data)
                member = arc if arc.startswith(NATIVE) else f"site-packages/{arc}"
                put(member, data, 0o755 if ".so" in arc else 0o644)
            for path, name in iter_package_files(bootstrap):
                put(f"_bootstrap/{name}", path.read_bytes())
            boot = Path(runtime.file.boot.__file__).read_bytes()
            listing = json.dumps(deferred_tops, indent=1).encode()
            # The boot module decides what an extraction holds, and the listing what it
            # leaves for later: another of either is another extraction.
            contents.update(b"boot\0" + boot + b"deferred\0" + listing)
            put(f"{BOOT_MODULE}.py", boot)
            put(runtime.file.boot.DEFERRED_LIST, listing)
            env = Environment(
                built_at=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                shiv_version=metadata.version("shiv"),
                build_id=contents.hexdigest(),
                entry_point=ENTRY_POINT,
                compile_pyc=False,  # Python writes the .pyc of what it imports; compiling all of it first doubles the first start
            )
            put("environment.json", env.to_json().encode())
            put("__main__.py", MAIN_PY.encode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return contents.hexdigest()

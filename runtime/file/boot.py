"""What runs first inside a .pyz, before shiv extracts anything: check the Python, choose the
cache (falling back to a temporary one when it cannot be written), extract the runtime there
with shiv's own functions, drop older extractions of this file, then hand over to shiv's
bootstrap. The packager copies this file to the zip's root as `_llamapyz_boot.py`, so it
imports only the standard library and stays valid on every Python the runtime supports."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

ARCHIVE: Optional[Path] = None
# What is compiled for one architecture (llama.cpp's libraries, CPU variants, GPU backends) lies
# under native/<machine>/ at its path under site-packages; extension modules, whose names say
# their architecture, lie in site-packages. The boot extracts only its own machine's.
NATIVE = "native/"
MACHINES = {"x86_64": "Linux x86-64", "aarch64": "Linux arm64"}  # platform.machine() -> name
VARIANT_FOLDER = "site-packages/bin/"  # in an extraction
VARIANT_PREFIX = "libggml-cpu-"
# GPU backends and CUDA's libraries: in VARIANT_FOLDER too, extracted only when a device is used
GPU_PREFIXES = ("libggml-vulkan", "libggml-cuda", "libcudart", "libcublas")
MEDIA_PREFIXES = ("libmtmd",)  # images: there too, extracted at the first image
PACKED_VARIANTS = "packed-variants.json"  # in VARIANT_FOLDER: file name -> size, left in the file
DEFERRED_LIST = "deferred.json"  # at the zip's root: site-packages entries only a server needs
DEFERRED_DONE = ".deferred-extracted"  # in site-packages, once those are extracted too
# A glibc floor -> the oldest distributions with it, for the sentence below it
DISTRIBUTIONS = {"2.27": "Ubuntu 18.04, Debian 10, RHEL 8 and later",
                 "2.34": "Debian 12, Ubuntu 22.04, RHEL 9, Fedora 36 and later"}  # fmt: skip


def cache_dir() -> Path:
    """`$LLAMAPYZ_CACHE`, else `$XDG_CACHE_HOME/llamapyz`, else `~/.cache/llamapyz`."""
    explicit = os.environ.get("LLAMAPYZ_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llamapyz"


def archive() -> Optional[Path]:
    """The .pyz this process runs from, or None outside one."""
    boot = sys.modules.get("_llamapyz_boot")
    found = getattr(boot, "ARCHIVE", None)
    return found if isinstance(found, Path) else None


THREADS = 0  # the process's OS threads when the boot began: more than 1 are an emulator's own


def boot_threads() -> int:
    """The OS threads this process had before any of the file's code ran (qemu-user adds one)."""
    found = getattr(sys.modules.get("_llamapyz_boot"), "THREADS", 0)
    return found if isinstance(found, int) and found > 0 else 1


def _check_python(zf: zipfile.ZipFile, path: Path) -> None:
    """`python3.8 model.pyz` skips the sh preamble's checks: make them here."""
    try:
        build = json.loads(zf.read("llamapyz.json"))["build"]
        pythons = build["pythons"]
    except (KeyError, ValueError, TypeError):
        return
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if pythons and here not in pythons:
        sys.exit(f"{path} needs CPython {', '.join(pythons)}; found Python "
                 f"{sys.version.split()[0]} at {sys.executable}")  # fmt: skip
    carried = build.get("arches")
    if isinstance(carried, dict) and carried and machine() not in carried:
        shown = ", ".join(MACHINES.get(m, m) for m in sorted(carried, reverse=True))
        sys.exit(f"{path} runs on {shown}; this is {MACHINES.get(machine(), 'Linux ' + machine())}")
    need = str(carried.get(machine(), {}).get("floor", {}).get("glibc", "")) if carried else ""
    # "glibc 2.31"; musl has none (its loader names what it lacks)
    have = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
    if _older((have or "").partition(" ")[2], need):
        where = f" ({DISTRIBUTIONS[need]})" if need in DISTRIBUTIONS else ""
        sys.exit(f"{path} needs glibc {need} or newer{where}; this system has {have}")


def _older(have: str, need: str) -> bool:
    """Whether version `have` ("2.31") is older than `need` ("2.34"); False for either unknown."""
    ok = have.replace(".", "").isdigit() and need.replace(".", "").isdigit()
    return ok and [int(x) for x in have.split(".")] < [int(x) for x in need.split(".")]


def _writable(root: Path) -> Optional[str]:
    """None when `root` can hold files, else why not."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=root, prefix=".probe-").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _fall_back(why: str) -> Path:
    """Use a temporary cache for this run, said once on stderr, removed at exit."""
    import atexit

    temp = Path(tempfile.mkdtemp(prefix="llamapyz-cache-"))
    atexit.register(shutil.rmtree, temp, True)
    sys.stderr.write(
        f"llamapyz: the cache {cache_dir()} cannot be used ({why}); using {temp} this time\n"
    )
    os.environ["LLAMAPYZ_CACHE"] = str(temp)
    return temp


def python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def machine() -> str:
    """This Python's architecture: under qemu-user the emulated one (not the sh's `uname -m`)."""
    return platform.machine()


def runtime_tag() -> str:
    """The extraction's folder under runtimes/: one per Python and architecture (`cp311`,
    `cp311-aarch64`), since each holds only its own compiled files."""
    return python_tag() if machine() == "x86_64" else f"{python_tag()}-{machine()}"


def variant_member(name: str) -> str:
    """The zip member of a packed library of this machine's (a CPU variant, a GPU backend)."""
    return f"{NATIVE}{machine()}/bin/{name}"


def _place(name: str) -> Optional[str]:
    """Where zip member `name` goes in an extraction (`site-packages/…`), or None when it is
    not for this process: another Python's or another architecture's compiled files."""
    own = f"{NATIVE}{machine()}/"
    if name.startswith(own):
        return "site-packages/" + name[len(own) :]
    if not name.startswith("site-packages/"):
        return None
    if ".cpython-" in name and name.endswith(".so"):
        tag = f".cpython-{python_tag()[2:]}-"
        return name if tag in name and f"-{machine()}-linux" in name else None
    return name


def _packed_variant(name: str) -> bool:
    """A CPU backend variant (left in the file until it is chosen, `runtime.engine.devices.cpu`),
    a GPU backend or library (until a device uses it, `runtime.engine.devices.gpu`), or libmtmd
    (until the first image, `runtime.engine.media.vision`)."""
    if not name.startswith(VARIANT_FOLDER) or ".so" not in name:
        return False
    base = name[len(VARIANT_FOLDER) :]
    return base.startswith(VARIANT_PREFIX) or base.startswith(GPU_PREFIXES + MEDIA_PREFIXES)


def _wanted(name: str) -> bool:
    """Extraction paths to write: all of this Python's and machine's but the CPU variants
    (a dozen, 19 MB, of which one is used) and the GPU backends."""
    return not name.endswith("/") and not _packed_variant(name)


def _placed(zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, str]]:
    """Each member for this process, with its path in the extraction."""
    return [(i, place) for i in zf.infolist() if (place := _place(i.filename)) is not None]


def _deferred_tops(zf: zipfile.ZipFile) -> set[str]:
    try:
        return set(json.loads(zf.read(DEFERRED_LIST)))
    except (KeyError, ValueError, TypeError):
        return set()


def _later(name: str, tops: set[str]) -> bool:
    """A member of a package only the server imports (`pydantic/...`, `fastapi-….dist-info/…`)."""
    parts = name.split("/", 2)
    return len(parts) > 2 and parts[1] in tops


def _extract(zf: zipfile.ZipFile, env: Any, root: Path, tops: set[str]) -> Path:
    """Extract site-packages for this Python, as shiv would (same place, same lock, same
    atomic move), but without the compiled modules of the other Pythons the file carries,
    the CPU variants (`runtime.engine.devices.cpu` takes the one it needs) and the server's packages
    (`_Deferred` extracts those when one is first imported)."""
    import compileall

    import _bootstrap  # type: ignore[import-not-found]  # shiv's, at the zip's root
    from _bootstrap.filelock import FileLock  # type: ignore[import-not-found]

    target: Path = _bootstrap.cache_path(zf, str(root), env.build_id)
    if (target / "site-packages").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / (target.name + ".tmp")
    with FileLock(str(target.parent / f".{target.name}_lock")):
        if (target / "site-packages").exists():  # another copy extracted it meanwhile
            return target
        try:
            members = _placed(zf)
            now = [(i, p) for i, p in members if _wanted(p) and not _later(p, tops)]
            _extract_members(zf, now, tmp)
            packed = {
                place[len(VARIANT_FOLDER) :]: i.file_size
                for i, place in members
                if _packed_variant(place)
            }
            if packed:
                listing = tmp / VARIANT_FOLDER / PACKED_VARIANTS
                listing.parent.mkdir(parents=True, exist_ok=True)
                listing.write_text(json.dumps(packed, indent=1))
            if env.compile_pyc:
                compileall.compile_dir(str(tmp), quiet=2, workers=env.compile_workers)
            shutil.move(str(tmp), str(target))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _drop_older(target)
    return target


def _extract_members(
    zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, str]], root: Path
) -> None:
    """Write each member at its path under `root`, on a few threads (zlib and the file system
    let go of the GIL), each reading through its own ZipFile: without bpo-42369's fix (Debian
    11's 3.9.2) a shared one tells the position another thread left, and reads come corrupt."""
    import threading

    for name in {os.path.dirname(place) for _, place in members}:
        if name.startswith("/") or ".." in name.split("/"):
            raise OSError(f"unsafe path in the archive: {name}")
        os.makedirs(root / name, exist_ok=True)
    queue = sorted(members, key=lambda m: m[0].file_size)  # largest first, popped from the end
    failed: list[BaseException] = []

    def work() -> None:
        try:
            with zipfile.ZipFile(zf.filename or "") as own:
                while not failed:
                    try:
                        member, place = queue.pop()
                    except IndexError:  # the other threads took the last ones
                        break
                    data = memoryview(own.read(member))
                    mode = (member.external_attr >> 16) & 0o777 or 0o644
                    fd = os.open(root / place, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                    try:
                        while data:
                            data = data[os.write(fd, data) :]
                    finally:
                        os.close(fd)
        except BaseException as exc:  # raised again below, on the calling thread
            failed.append(exc)

    threads = [threading.Thread(target=work) for _ in range(min(4, os.cpu_count() or 1) - 1)]
    for thread in threads:
        thread.start()
    work()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]


IN_USE = ".in-use"  # in an extraction: a shared lock on it for as long as a process runs from it
_HELD: list[int] = []


def _hold(target: Path) -> None:
    """Say that this process runs from `target`, until it exits (its children inherit it)."""
    import fcntl

    try:
        fd = os.open(target / IN_USE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        return  # a cache we cannot write to: nothing there will be dropped either
    _HELD.append(fd)


def in_use(extraction: Path) -> bool:
    """Whether a running process runs from `extraction` (another build of the same file, a
    server started before it was rebuilt): it must not be removed under that process."""
    import fcntl

    try:
        fd = os.open(extraction / IN_USE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _drop_older(current: Path) -> None:
    """Remove earlier builds' extractions of this same file (shiv keeps them forever), but not
    one that a running process still imports from."""
    name = current.name.rsplit("_", 1)[0]
    for other in current.parent.glob(f"{name}_*"):
        if other != current and other.is_dir() and not other.name.endswith(".tmp"):
            if in_use(other):
                continue
            shutil.rmtree(other, ignore_errors=True)
            (other.parent / f".{other.name}_lock").unlink(missing_ok=True)


class _Deferred:
    """An import hook: the first import of a server package extracts all of them."""

    def __init__(self, archive: Path, site: Path, tops: set[str]) -> None:
        self.archive = archive
        self.site = site
        self.tops = tops
        self.modules = {t.split(".")[0] for t in tops if not t.endswith(".dist-info")}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.modules:
            self.extract()
        return None  # the regular path finder finds it now

    def extract(self) -> None:
        import importlib

        from _bootstrap.filelock import FileLock

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        done = self.site / DEFERRED_DONE
        tmp = self.site.parent / f".deferred-{os.getpid()}"
        try:
            with FileLock(str(self.site.parent / ".deferred_lock")):
                if done.exists():
                    return
                with zipfile.ZipFile(self.archive) as zf:
                    members = [
                        (i, p) for i, p in _placed(zf) if _wanted(p) and _later(p, self.tops)
                    ]
                    _extract_members(zf, members, tmp)
                for entry in sorted((tmp / "site-packages").iterdir()):
                    if not (self.site / entry.name).exists():
                        os.rename(entry, self.site / entry.name)
                done.touch()
        except OSError as exc:
            sys.exit(f"{self.archive}: cannot extract its server packages ({exc.strerror or exc})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        importlib.invalidate_caches()


_DEFERRED: Optional[_Deferred] = None


def _defer(target: Path, tops: set[str]) -> None:
    global _DEFERRED
    site = target / "site-packages"
    if tops and ARCHIVE is not None and not (site / DEFERRED_DONE).exists():
        _DEFERRED = _Deferred(ARCHIVE, site, tops)
        sys.meta_path.insert(0, _DEFERRED)


def main() -> None:
    global ARCHIVE, THREADS
    THREADS = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0
    ARCHIVE = Path(sys.argv[0]).resolve()
    import _bootstrap
    from _bootstrap.environment import Environment  # type: ignore[import-not-found]

    with zipfile.ZipFile(ARCHIVE) as zf:
        _check_python(zf, ARCHIVE)
        env = Environment.from_json(zf.read("environment.json").decode())
        chosen = os.environ.get("SHIV_ROOT")
        # One extraction per Python and machine: each holds only its own compiled files.
        root = Path(chosen) if chosen else cache_dir() / "runtimes" / runtime_tag()
        tops = _deferred_tops(zf)
        why = _writable(root)
        if why is not None:
            root = _fall_back(why) / "runtimes" / runtime_tag()
        try:
            target = _extract(zf, env, root, tops)
        except OSError as exc:
            if os.environ.get("LLAMAPYZ_CACHE", "").startswith(tempfile.gettempdir()) and why:
                sys.exit(f"{ARCHIVE}: cannot extract its runtime ({exc.strerror or exc})")
            root = _fall_back(exc.strerror or str(exc)) / "runtimes" / runtime_tag()
            try:
                target = _extract(zf, env, root, tops)
            except OSError as again:
                sys.exit(f"{ARCHIVE}: cannot extract its runtime ({again.strerror or again})")
        _hold(target)
        _defer(target, tops)
    if not chosen:
        os.environ["SHIV_ROOT"] = str(root)
        os.environ["LLAMAPYZ_SHIV_ROOT_SET"] = "1"
    _bootstrap.bootstrap()

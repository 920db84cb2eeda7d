"""llama.cpp's native side: the bindings, its log and aborts, the CPU backend, libc.

With `runtime.engine.decoding.model`, the only modules that touch llama_cpp. We use
llama-cpp-python's ctypes bindings (`llama_cpp.llama_cpp`) and none of its high-level classes:
`llama_cpp/__init__.py` imports numpy, which the .pyz does not carry.
`tests/test_engine_bindings.py` fails if the bindings we lean on drift.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import os
import re
import sys
import tempfile
import time
import types
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional


class EngineError(Exception):
    """The engine could not load or run a model."""


_log_lines: deque[str] = deque(maxlen=200)
_log_verbose = False
_log_callback: Any = None  # keeps the ctypes callback alive for as long as llama.cpp holds it
_abort_callback: Any = None
_started = False


def bindings() -> Any:
    """`llama_cpp.llama_cpp` (the ctypes bindings), imported without the package's __init__."""
    module = sys.modules.get("llama_cpp.llama_cpp")
    if module is not None:
        return module
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise EngineError("llama-cpp-python is not installed")
        package = types.ModuleType("llama_cpp")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules["llama_cpp"] = package
    try:
        with _typing_extensions_stub():
            return importlib.import_module("llama_cpp.llama_cpp")
    except (OSError, RuntimeError, FileNotFoundError) as exc:
        older = re.search(r"version .(GLIBCXX_[0-9.]+). not found", str(exc))
        if older:  # RHEL 9, Amazon Linux 2023: glibc 2.34, but GCC 11's C++ runtime
            raise EngineError(
                f"this system's libstdc++.so.6 is older than llama.cpp needs: it lacks "
                f"{older[1]} (the C++ runtime of GCC 12 or newer)"
            ) from None
        raise EngineError(f"cannot load llama.cpp's shared library ({exc})") from None


@contextlib.contextmanager
def _typing_extensions_stub() -> Iterator[None]:
    """The bindings import typing_extensions for one name used only in annotations; the
    module is 3,000 lines to compile on a first start. Stand in for it while they import
    (a later real import, pydantic's, finds nothing cached)."""
    if "typing_extensions" in sys.modules:
        yield
        return
    import typing

    stub = types.ModuleType("typing_extensions")
    stub.TypeAlias = getattr(typing, "TypeAlias", object)  # type: ignore[attr-defined]
    sys.modules["typing_extensions"] = stub
    try:
        yield
    finally:
        if sys.modules.get("typing_extensions") is stub:
            del sys.modules["typing_extensions"]


def lib_dir() -> Path:
    """The directory holding libllama and libggml."""
    return Path(bindings().__file__).parent / "lib"


def set_verbose(verbose: bool) -> None:
    """Route llama.cpp's and ggml's log to stderr (verbose) or to a short memory for errors."""
    global _log_verbose, _log_callback
    _log_verbose = verbose
    if _log_callback is not None:
        return
    C = bindings()

    def on_log(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", "replace") if text else ""
        _log_lines.append(line)
        if _log_verbose:
            sys.stderr.write(line)
            sys.stderr.flush()

    _log_callback = C.llama_log_callback(on_log)
    C.llama_log_set(_log_callback, ctypes.c_void_p())
    _turn_aborts_into_errors()


def _turn_aborts_into_errors() -> None:
    """A failed GGML_ASSERT (a damaged model, say) ends in one line on stderr, not a C backtrace."""
    global _abort_callback
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # std::terminate's handler would run gdb
    base = lib_dir() / "libggml-base.so.0"
    if not base.exists():
        return
    lib = ctypes.CDLL(str(base))
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    def on_abort(message: bytes) -> None:
        text = message.decode("utf-8", "replace") if message else "unknown error"
        where, _, what = text.partition(": ")
        fatal(
            f"llama.cpp stopped on a failed check ({what or text} at "
            f"{os.path.basename(where)}); the model file may be damaged or unsupported"
        )

    _abort_callback = callback_type(on_abort)
    lib.ggml_set_abort_callback.restype = ctypes.c_void_p
    lib.ggml_set_abort_callback.argtypes = [callback_type]
    lib.ggml_set_abort_callback(_abort_callback)


_fatal_handlers: list[Callable[[str], bool]] = []


def on_fatal(handler: Callable[[str], bool]) -> None:
    """Let `handler` take a fatal stop inside llama.cpp; returning True keeps the process up."""
    _fatal_handlers.append(handler)


def fatal(message: str) -> None:
    """llama.cpp is about to abort this process. A handler (the server's) may keep the rest of
    the process serving: then this thread, which llama.cpp will not give back, just waits.
    Otherwise: one line on stderr, exit code 1."""
    for handler in _fatal_handlers:
        if handler(message):
            while True:
                time.sleep(3600)
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def log(line: str) -> None:
    """A line of our own in llama.cpp's log (on stderr with --verbose)."""
    _log_lines.append(line + "\n")
    if _log_verbose:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def forget_log() -> None:
    """Start the short memory afresh, so that an error is read from this load's log only."""
    _log_lines.clear()


def last_log_error() -> str:
    """llama.cpp's reason, for messages: the first `error loading model` line of a failed load
    (the lines after it only say that loading failed), else the last error-looking line."""
    for line in _log_lines:
        at = line.find("error loading model")
        if at >= 0:
            return line[at:].strip()
    for line in reversed(_log_lines):
        text = line.strip()
        if text and ("error" in text.lower() or "failed" in text.lower()):
            return text
    return ""


_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fseeko.restype = ctypes.c_int
        libc.fseeko.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
        libc.fclose.restype = ctypes.c_int
        libc.fclose.argtypes = [ctypes.c_void_p]
        _libc = libc
    return _libc


@contextlib.contextmanager
def _stderr_captured() -> Iterator[Callable[[], list[str]]]:
    """Catch what C code writes straight to file descriptor 2 while the block runs."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def start_backend(variant_path: Optional[Path]) -> None:
    """Register the CPU backend variant with the libggml that libllama links to, then init."""
    C = bindings()
    if variant_path is not None:
        ggml = ctypes.CDLL(str(ggml_library()))
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
        if not ggml.ggml_backend_load(str(variant_path).encode()):
            raise EngineError(f"cannot load the CPU backend {variant_path.name}")
    C.llama_backend_init()
    global _started
    _started = True


def backend_started() -> bool:
    """Whether start_backend has run in this process (a fork of it inherits the backend)."""
    return _started


def ggml_library() -> Path:
    """The libggml file that libllama resolves, under the name it resolves it by."""
    for name in ("libggml.so.0", "libggml.so"):
        path = lib_dir() / name
        if path.exists():
            return path
    raise EngineError(f"no libggml in {lib_dir()}")

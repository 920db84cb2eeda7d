"""ggml's backend registry over ctypes: load a GPU backend library, list its devices.

llama-cpp-python binds none of these functions; they live in libggml (the registry) and
libggml-base (devices), both loaded already by libllama, so the devices seen here are the
ones llama.cpp sees when it loads a model. The one set of these bindings: the RPC client
(runtime.rpc.client) registers its workers' devices and reaches ggml-rpc through them too.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

KINDS = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator", 4: "meta"}
GPU_TYPES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU


@dataclass(frozen=True)
class Device:
    """One GPU device that ggml registered."""

    handle: int  # ggml_backend_dev_t
    name: str  # "Vulkan0", "CUDA0"
    description: str  # "NVIDIA H200", "llvmpipe (LLVM 15.0.6, 256 bits)"
    kind: str  # "GPU" (discrete) or "iGPU"
    backend: str  # "Vulkan", "CUDA"
    free: int
    total: int

    def memory_text(self) -> str:
        return f"{self.free / 2**30:.1f} GiB free of {self.total / 2**30:.1f} GiB"


class _Ggml:
    """libggml (the registry) and libggml-base (devices, abort), with the signatures we call."""

    def __init__(self) -> None:
        from runtime.engine.decoding import model as engine

        engine.bindings()
        reg = ctypes.CDLL(str(engine.ggml_library()))
        base = ctypes.CDLL(str(engine.lib_dir() / "libggml-base.so.0"))
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for lib, name, res, args in (
            (reg, "ggml_backend_load", vp, [cp]),
            (reg, "ggml_backend_reg_by_name", vp, [cp]),
            (reg, "ggml_backend_register", None, [vp]),
            (reg, "ggml_backend_dev_count", sz, []),
            (reg, "ggml_backend_dev_get", vp, [sz]),
            (reg, "ggml_backend_dev_by_type", vp, [ctypes.c_int]),
            (base, "ggml_backend_reg_name", cp, [vp]),
            (base, "ggml_backend_reg_dev_count", sz, [vp]),
            (base, "ggml_backend_reg_dev_get", vp, [vp, sz]),
            (base, "ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            (base, "ggml_backend_dev_name", cp, [vp]),
            (base, "ggml_backend_dev_description", cp, [vp]),
            (base, "ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
            (base, "ggml_backend_dev_type", ctypes.c_int, [vp]),
            (base, "ggml_backend_dev_backend_reg", vp, [vp]),
            (base, "ggml_set_abort_callback", vp, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
            setattr(self, name, fn)

    def __getattr__(self, name: str) -> Any:  # the functions set above, for mypy
        raise AttributeError(name)


_ggml: Optional[_Ggml] = None
_loaded: dict[str, Optional[int]] = {}  # library path -> its registry entry (None: failed)


def ggml() -> _Ggml:
    """libggml and libggml-base, loaded once (after libllama) with the signatures we call."""
    global _ggml
    if _ggml is None:
        _ggml = _Ggml()
    return _ggml


def loaded() -> bool:
    """Whether this process has loaded a backend library through here."""
    return bool(_loaded)


def load_backend(path: Path) -> Optional[int]:
    """Register the backend library at `path` (once); None when ggml could not load it."""
    key = str(path)
    if key not in _loaded:
        reg = ggml().ggml_backend_load(key.encode())
        _loaded[key] = int(reg) if reg else None
    return _loaded[key]


def _text(raw: Optional[bytes]) -> str:
    return (raw or b"").decode("utf-8", "replace")


def memory(handle: int) -> tuple[int, int]:
    """(free, total) bytes of a device, asked now."""
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    ggml().ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
    return int(free.value), int(total.value)


def of_backend(reg: int) -> list[Device]:
    """The GPU devices (discrete or integrated) of one registered backend."""
    g = ggml()
    backend = _text(g.ggml_backend_reg_name(reg))
    found = []
    for i in range(int(g.ggml_backend_reg_dev_count(reg))):
        dev = int(g.ggml_backend_reg_dev_get(reg, i))
        kind = int(g.ggml_backend_dev_type(dev))
        if kind not in GPU_TYPES:
            continue
        free, total = memory(dev)
        found.append(
            Device(
                dev,
                _text(g.ggml_backend_dev_name(dev)),
                _text(g.ggml_backend_dev_description(dev)),
                KINDS[kind],
                backend,
                free,
                total,
            )
        )
    return found


def all_devices() -> list[str]:
    """One line per device ggml has registered, CPU included, for --system-info."""
    g = ggml()
    lines = []
    for i in range(int(g.ggml_backend_dev_count())):
        dev = int(g.ggml_backend_dev_get(i))
        free, total = memory(dev)
        kind = KINDS.get(int(g.ggml_backend_dev_type(dev)), "device")
        lines.append(
            f"{_text(g.ggml_backend_dev_name(dev))}: {_text(g.ggml_backend_dev_description(dev))} "
            f"({kind}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB)"
        )
    return lines

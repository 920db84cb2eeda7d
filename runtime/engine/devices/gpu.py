"""Which GPU runs the model: the backends this file carries, their devices, the choice
(`--gpu`, `--device`, `--main-gpu`, `--split-mode`, `-ngl`), and the one line that says so.

A backend is loaded only when it can have a device (the Vulkan loader, an NVIDIA driver), and
only after its devices passed their self-test (`runtime.engine.devices.gpu_selftest`) in a child:
a driver that crashes or computes wrong numbers costs a line, never the run.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from runtime.engine.devices import offload, registry
from runtime.engine.devices.registry import Device
from runtime.engine.devices.variants import extracted, loadable, native
from runtime.sources.source import ModelSource

BACKENDS = {"Vulkan": "libggml-vulkan.so", "CUDA": "libggml-cuda.so"}
CUDA_LIBS = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")
LOADERS = {"Vulkan": "libvulkan.so.1", "CUDA": "libcuda.so.1"}
WORDS = {  # --gpu, with llamafile's words
    "auto": "auto",
    "vulkan": "vulkan",
    "cuda": "cuda",
    "none": "none",
    "disable": "none",
    "nvidia": "nvidia",
    "amd": "vulkan",
    "intel": "vulkan",
    "apple": "none",
}
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


class GpuError(Exception):
    """The GPU asked for cannot be used."""


@dataclass
class Plan:
    """The devices chosen, the offload for llama_model_params, and what to say."""

    devices: list[Device]
    offload: Optional[offload.GpuOffload]
    units: int = 0  # the model's n_layer + 1
    layers: int = 0  # units offloaded
    line: str = ""  # said on stderr once the model has loaded, where there is no GPU
    why_none: dict[str, str] = field(default_factory=dict)  # backend -> why it has no device


def carried() -> dict[str, Path]:
    """Backend name -> library, for each GPU backend this file (or build environment) has."""
    found = {}
    for name, lib in BACKENDS.items():
        path = native(lib)
        if path is not None:
            found[name] = path
    return found


# Where a GPU shows itself to Vulkan on Linux: a DRM node (Mesa, AMD, Intel, NVIDIA's open
# modules), NVIDIA's own nodes, WSL's GPU. CPU drivers (lavapipe) need none, and ggml hides
# their devices unless GGML_VK_VISIBLE_DEVICES names them.
GPU_NODES = ("/dev/dri/renderD*", "/dev/dri/card*", "/dev/nvidia[0-9]*", "/dev/dxg")
NO_GPU_NODE = "no device (no GPU in /dev)"


def _loader_missing(backend: str) -> Optional[str]:
    """Why `backend` cannot have a device here without trying it (a missing loader or
    driver, no GPU in /dev at all), or None."""
    hidden = backend == "Vulkan" and not os.environ.get("GGML_VK_VISIBLE_DEVICES")
    if hidden and not any(glob.glob(pattern) for pattern in GPU_NODES):
        return NO_GPU_NODE
    try:
        ctypes.CDLL(LOADERS[backend])
    except OSError:
        if backend == "CUDA":
            return "no NVIDIA driver (libcuda.so.1)"
        return "no Vulkan loader (libvulkan.so.1; Debian/Ubuntu: libvulkan1)"
    return None


def load(backend: str, path: Path, keep_on_disk: bool) -> list[Device]:
    """Register `backend` from `path` and return its GPU devices. Still packed in the .pyz it
    is loaded from memory, unless `keep_on_disk` (a device will use it: extract it once)."""
    from runtime.engine.devices.variants import CpuError

    try:
        if backend == "CUDA":
            for lib in CUDA_LIBS:  # libggml-cuda.so links to them by soname
                dep = native(lib)
                if dep is not None:
                    ctypes.CDLL(str(extracted(dep)), mode=ctypes.RTLD_GLOBAL)
        where = str(extracted(path)) if keep_on_disk else loadable(path)
    except (OSError, CpuError) as exc:
        raise GpuError(f"cannot load the {backend} backend ({exc})") from None
    from runtime.engine.backend import _stderr_captured

    with _stderr_captured() as said:  # ggml-vulkan writes some of its reasons to stderr
        reg = registry.load_backend(Path(where))
    notes = [line for line in said() if "warning: device type is cpu" not in line.lower()]
    _notes[backend] = notes[-1] if notes else ""
    return registry.of_backend(reg) if reg else []


_notes: dict[str, str] = {}  # backend -> the last line it wrote while loading


def load_note(backend: str) -> str:
    """The last line `backend` wrote while loading (ggml's reason for no device), or ""."""
    return _notes.get(backend, "")


def parse_ngl(value: str) -> Optional[int]:
    """`-ngl`: a number of layers (negative: all), or auto (None)."""
    if value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise GpuError(f"-ngl {value}: give a number of layers or auto") from None


def discover(want: str, verdicts: dict[str, dict[str, str]]) -> tuple[list[Device], dict[str, str]]:
    """The usable devices of the backends `want` allows, and why each other backend has none.
    `verdicts`: backend -> device name -> "ok" or why its self-test refused it."""
    have = carried()
    found: list[Device] = []
    why: dict[str, str] = {}
    allowed = {"auto": BACKENDS, "vulkan": ["Vulkan"], "cuda": ["CUDA"], "nvidia": BACKENDS}[want]
    for backend in BACKENDS:
        if backend not in allowed:
            continue
        if backend not in have:
            why[backend] = "not in this file"
            continue
        missing = _loader_missing(backend)
        if missing:
            why[backend] = missing
            continue
        tested = verdicts.get(backend, {})
        if "*" in tested:  # no device, or the backend itself refused
            why[backend] = tested["*"]
            continue
        if tested and "ok" not in tested.values():  # every device refused: no need to list them
            why[backend] = "; ".join(f"{name} {verdict}" for name, verdict in tested.items())
            continue
        listed = load(backend, have[backend], keep_on_disk=False)
        good = [d for d in listed if tested.get(d.name) == "ok"]
        refused = [
            f"{d.name} {tested.get(d.name, 'not self-tested')}" for d in listed if d not in good
        ]
        if not good:
            note = load_note(backend)
            why[backend] = (
                "; ".join(refused) if refused else "no device" + (f": {note}" if note else "")
            )
        elif refused:
            print(f"skipping {'; '.join(refused)}", file=sys.stderr)
        found += good
    if want == "nvidia" and any(d.backend == "CUDA" for d in found):
        found = [d for d in found if d.backend == "CUDA"]
    elif want == "nvidia":
        found = [d for d in found if "nvidia" in d.description.lower()]
    return found, why


def choose(
    found: list[Device], names: Optional[str], main_gpu: Optional[int], split_mode: str
) -> list[Device]:
    """The devices the model goes to: those named, else the best group (discrete over
    integrated, CUDA over Vulkan on the same card), narrowed to one by `--split-mode none`."""
    if names:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        by_name = {d.name.lower(): d for d in found}
        chosen = []
        for n in wanted:
            if n.lower() not in by_name:
                have = ", ".join(d.name for d in found) or "none"
                raise GpuError(f"--device {n}: no such usable device (devices: {have})")
            chosen.append(by_name[n.lower()])
    else:
        cuda_cards = {d.description for d in found if d.backend == "CUDA"}
        pool = [d for d in found if not (d.backend == "Vulkan" and d.description in cuda_cards)]
        best = min(((d.kind != "GPU", d.backend != "CUDA") for d in pool), default=None)
        chosen = [d for d in pool if (d.kind != "GPU", d.backend != "CUDA") == best]
        if len({d.backend for d in chosen}) > 1:  # never split one model over two backends
            chosen = [d for d in chosen if d.backend == chosen[0].backend]
    if main_gpu is not None and not 0 <= main_gpu < len(chosen):
        raise GpuError(
            f"--main-gpu {main_gpu}: there are {len(chosen)} devices (0 to {len(chosen) - 1})"
        )
    if split_mode == "none" and chosen:
        chosen = [chosen[main_gpu or 0]]
    return chosen


def describe(chosen: list[Device]) -> str:
    names = ", ".join(d.name for d in chosen)
    if len(chosen) == 1:
        d = chosen[0]
        return f"{names} ({d.description}, {d.free / 2**30:.1f} GiB free)"
    return f"{names} ({sum(d.free for d in chosen) / 2**30:.1f} GiB free in all)"


def no_gpu_text(why: dict[str, str]) -> str:
    return "; ".join(f"{b}: {w}" for b, w in why.items()) or "this file carries no GPU backend"


def visible_env() -> str:
    """The environment that decides which devices a backend shows, for the self-test memo."""
    keys = (
        "GGML_VK_VISIBLE_DEVICES",
        "CUDA_VISIBLE_DEVICES",
        "VK_ICD_FILENAMES",
        "VK_DRIVER_FILES",
    )
    return " ".join(f"{k}={os.environ.get(k, '')}" for k in keys)


def plan(
    want: str,
    names: Optional[str],
    main_gpu: Optional[int],
    split_mode: str,
    tensor_split: Optional[str],
    ngl: Optional[int],
    source: ModelSource,
    n_ctx: int,
    n_batch: int,
    verdicts: dict[str, dict[str, str]],
) -> Plan:
    """Where the model's layers go. Raises GpuError when a backend asked for by name has no
    usable device; otherwise falls back to the CPU with a line that says why."""
    want = WORDS[want]
    if want == "none":
        return Plan(
            [], offload.make_offload([], 0), line="GPU off (--gpu none): running on the CPU"
        )
    if ngl == 0:
        return Plan([], offload.make_offload([], 0), line="-ngl 0: running on the CPU")
    found, why = discover(want, verdicts)
    chosen = choose(found, names, main_gpu, split_mode)
    if not chosen:
        if want in ("vulkan", "cuda"):
            backend = "Vulkan" if want == "vulkan" else "CUDA"
            raise GpuError(f"--gpu {want}: no usable {backend} device ({why.get(backend, 'none')})")
        line = f"no GPU found ({no_gpu_text(why)}): running on the CPU"
        if ngl is not None:
            line = f"warning: -ngl {ngl} asks for a GPU, but {line}"
        return Plan([], offload.make_offload([], 0), line=line, why_none=why)
    for backend in {d.backend for d in chosen}:
        extracted(carried()[backend])  # used now: the next start loads it from disk
    try:
        layout = offload.read_layout(source.path, source.offset, source.size)
    except offload.LayoutError as exc:
        raise GpuError(str(exc)) from None
    units = layout.n_layer + 1
    if ngl is None:
        ctx = n_ctx or layout.n_ctx_train
        layers, _ = offload.fitting(layout, sum(d.free for d in chosen), ctx, n_batch)
    else:
        layers = units if ngl < 0 else min(ngl, units)
    weights = None
    if tensor_split:
        try:
            weights = [float(w) for w in tensor_split.split(",")]
        except ValueError:
            raise GpuError(
                f"--tensor-split {tensor_split}: give numbers separated by commas"
            ) from None
        if len(weights) != len(chosen):
            raise GpuError(f"--tensor-split has {len(weights)} weights for {len(chosen)} devices")
    handles = [d.handle for d in chosen]
    mode = SPLIT_MODES[split_mode]
    placed = offload.make_offload(handles, layers, mode, main_gpu or 0, weights)
    return Plan(chosen, placed, units, layers)


def flash_attn(asked: str, backends: Iterable[str]) -> str:
    """--flash-attn as the model is made with it: auto is off with layers on a Vulkan device.
    ggml-vulkan's flash attention crashed (a segfault in the driver's thread: lavapipe here,
    llama.cpp #27314 on a Radeon) with several sequences in one memory, in llama-server too;
    Ollama keeps it off on Vulkan as well."""
    if asked == "auto" and "Vulkan" in set(backends):
        return "off"
    return asked


def offloaded_line(p: Plan, retried: bool = False) -> str:
    """The line said once the model has loaded on the GPU."""
    if not p.devices:
        return p.line
    if p.layers == 0:
        return f"0/{p.units} layers fit on {describe(p.devices)}: running on the CPU"
    return f"offloaded {p.layers}/{p.units} layers to {describe(p.devices)}" + (
        " after running out of GPU memory" if retried else ""
    )


def out_of_memory() -> bool:
    """The last load failed for want of device memory (as llama.cpp's log says)."""
    from runtime.engine.backend import last_log_error

    text = last_log_error().lower()
    return "alloc" in text or "out of memory" in text or "outofdevicememory" in text

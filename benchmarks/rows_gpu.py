"""GPU rows: the speed rows (pp512, tg128 against llama-bench) and the server rows (against
llama-server) with the model's layers on one GPU device, for each GPU backend (Vulkan; CUDA
where it was built and an NVIDIA driver is present).

Both sides run the same backend library (the libggml-vulkan.so or libggml-cuda.so that
llamapyz carries, from the same llama.cpp source and flags; Peers.with_gpu puts it beside the
peers), on the same device (ggml's name for it, e.g. Vulkan0, on both sides) with the same
layers (-ngl: what llamapyz's own plan puts on that device, all of them when they fit). Each
side's result says where its layers went, and a row whose sides disagree is an error.

The rows run only where a real GPU is present: lavapipe (Mesa's Vulkan driver on the CPU, the
tests' GPU) is not one, and a machine without a GPU gets one skipped row that says why.
`--gpu-lavapipe` counts lavapipe as a GPU, for a smoke run of the rows themselves.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from benchmarks import rows_server, rows_speed
from benchmarks.context import Context
from benchmarks.gpu_side import BACKEND_NAMES, GpuSide
from benchmarks.peers import Peers
from benchmarks.procs import BenchError, run
from benchmarks.rows_start import Setup
from benchmarks.table import Row

BACKENDS = ("vulkan", "cuda")
CHOICE = re.compile(
    r"^gpu choice: would offload (\d+)/(\d+) layers to (\S+) \((.*), [\d.]+ GiB free\)\s*$", re.M
)
CPU_DRIVERS = ("llvmpipe",)  # lavapipe's devices: "llvmpipe (LLVM 15.0.6, 256 bits)"


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...] = BACKENDS
    allow_cpu_driver: bool = False  # --gpu-lavapipe
    pp: int = 512
    tg: int = 128


def backend_library(backend: str) -> Optional[Path]:
    """The GPU backend `pack build` packs (scripts/build-vulkan.sh, build-cuda.sh), if built."""
    from runtime.engine.devices.variants import gpu_build_dir

    folder = gpu_build_dir()
    path = folder / "libggml-vulkan.so" if backend == "vulkan" else folder / "cuda/libggml-cuda.so"
    return path if path.is_file() else None


def _no_driver(backend: str) -> bool:
    try:
        ctypes.CDLL("libcuda.so.1" if backend == "cuda" else "libvulkan.so.1")
    except OSError:
        return True
    return False


def probe(pyz: Path, backend: str, env: dict[str, str]) -> GpuSide | str:
    """What `pyz --system-info` would do on `backend` with every layer on one device: that
    device, or why there is none."""
    cmd = [str(pyz), "--system-info", "--gpu", backend, "-ngl", "99", "--split-mode", "none"]
    done = subprocess.run(
        cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900
    )
    found = CHOICE.search(done.stdout)
    if done.returncode != 0 or found is None:
        said = [ln for ln in done.stdout.splitlines() if ln.startswith("gpu choice:")]
        why = said[-1].removeprefix("gpu choice:").strip() if said else done.stderr.strip()
        return why.splitlines()[-1] if why else f"{' '.join(cmd)} exited with {done.returncode}"
    layers, units, device, description = found.groups()
    return GpuSide(backend, device, description, int(layers), int(units))


def _target(ctx: Context, setup: Setup, backend: str, opts: Options) -> tuple[Setup, GpuSide] | str:
    """The .pyz and the device for `backend`'s rows, or why it has none here."""
    name = BACKEND_NAMES[backend]
    library = backend_library(backend)
    if library is None:
        script = "build-vulkan.sh" if backend == "vulkan" else "build-cuda.sh ARCH"
        return f"{name}: not built (scripts/{script})"
    if _no_driver(backend):
        return f"{name}: no driver here"
    env: dict[str, str] = {}
    pyz = setup.pyz
    if backend == "cuda":  # `make bench`'s .pyz carries Vulkan only: one with CUDA too
        pyz = ctx.work / f"{setup.model.stem}-cuda.pyz"
        if not pyz.exists():
            ctx.log(f"building {pyz.name} with --gpu cuda ...")
            run([*ctx.pack, "build", str(setup.model), "--gpu", "cuda", "-o", str(pyz)], ctx.env)
        env["LLAMAPYZ_GPU_DIR"] = str(library.parent)  # engine_speed.py runs outside a .pyz
    side = probe(pyz, backend, {**ctx.env, **env})
    if isinstance(side, str):
        return f"{name}: {side}"
    if any(d in side.description for d in CPU_DRIVERS) and not opts.allow_cpu_driver:
        return f"{name}: {side.device} is {side.description}, Mesa's CPU driver, not a GPU"
    if side.layers == 0:
        return f"{name}: no layer fits on {side.device}"
    return replace(setup, pyz=pyz), replace(side, env=env, pp=opts.pp, tg=opts.tg)


def gpu_rows(
    ctx: Context, setup: Setup, peers: Optional[Peers], prompt: str, opts: Options
) -> list[Row]:
    """The GPU rows of each backend with a real device here; one skipped row for the rest."""
    rows: list[Row] = []
    skipped: list[str] = []
    for backend in opts.backends:
        target = _target(ctx, setup, backend, opts)
        if isinstance(target, str):
            skipped.append(target)
            continue
        on, side = target
        ctx.log(
            f"GPU rows on {side.device} ({side.description}), {side.layers}/{side.units} layers ..."
        )
        library = backend_library(backend)
        assert library is not None
        with_gpu = peers.with_gpu(library, ctx.work / f"peers-{backend}") if peers else None
        try:
            rows += rows_speed.speed_rows(ctx, on, with_gpu, prompt, side)
            rows += rows_server.server_rows(ctx, on, with_gpu, prompt, side)
        except BenchError as exc:
            raise BenchError(f"GPU rows on {side.device}: {exc}") from None
    if skipped:
        rows.append(
            Row(
                key="gpu",
                name="GPU rows (pp, tg, server vs llama-bench, llama-server)",
                unit="tok/s",
                ours=[],
                goal=rows_speed.GPU_GOAL,
                skipped="skipped: " + "; ".join(skipped),
            )
        )
    return rows

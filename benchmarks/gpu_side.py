"""What a GPU row adds to a speed or server row: the backend, the one device, the layers, and
the flags that put both sides on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.procs import BenchError

BACKEND_NAMES = {"vulkan": "Vulkan", "cuda": "CUDA"}  # --gpu word -> ggml's backend name


@dataclass(frozen=True)
class GpuSide:
    """One device of one backend, and the layers both sides put on it."""

    backend: str  # --gpu's word: vulkan, cuda
    device: str  # ggml's name, the same on both sides: Vulkan0, CUDA0
    description: str  # NVIDIA H200, llvmpipe (LLVM 15.0.6, 256 bits)
    layers: int  # of the model's units (n_layer + 1), as -ngl counts them
    units: int
    env: dict[str, str] = field(default_factory=dict)  # added for llamapyz's side
    pp: int = 512  # prompt tokens of the pp row
    tg: int = 128  # generated tokens of the tg row and the server requests

    @property
    def ggml_backend(self) -> str:
        return BACKEND_NAMES[self.backend]

    @property
    def flash_attn(self) -> str:
        """What llamapyz's -fa auto makes of this backend (runtime.engine.devices.gpu.flash_attn),
        given to the peers too."""
        return "off" if self.backend == "vulkan" else "auto"

    @property
    def spec(self) -> str:
        """engine_speed.py's GPU argument."""
        return f"{self.backend}:{self.device}:{self.layers}"

    def ours_flags(self) -> list[str]:
        """The .pyz's flags for exactly this device and these layers."""
        return ["--gpu", self.backend, "--device", self.device, "-ngl", str(self.layers)] + [
            "--split-mode",
            "none",
        ]

    def bench_flags(self) -> tuple[str, ...]:
        """llama-bench's."""
        return ("-ngl", str(self.layers), "-dev", self.device, "-fa", self.flash_attn)

    def server_flags(self) -> list[str]:
        """llama-server's. It says where its layers went only at log verbosity 4 (about 30
        lines a request, none a token)."""
        return ["-ngl", str(self.layers), "--device", self.device, "-fa", self.flash_attn] + [
            "-lv",
            "4",
        ]

    def key(self, key: str) -> str:
        return f"gpu_{self.backend}_{key}"

    def name(self, name: str) -> str:
        return f"{self.device} ({self.layers}/{self.units} layers): {name}"

    # Each side is checked to have put exactly these layers on this device before its figures
    # count: one place for the speed rows (llama-bench, engine_speed.py) and the server rows.

    def check_ours(self, result: dict[str, Any], cmd: list[str]) -> None:
        """engine_speed.py's result (its `gpu_layers`)."""
        if result.get("gpu_layers") != self.layers:
            raise BenchError(f"{' '.join(cmd)} put {result.get('gpu_line')!r}, not {self.spec}")

    def check_bench(self, result: dict[str, Any], cmd: list[str]) -> None:
        """llama-bench's JSON result (its `backends` and `n_gpu_layers`)."""
        if self.ggml_backend not in str(result.get("backends", "")) or (
            int(result.get("n_gpu_layers", -1)) != self.layers
        ):
            raise BenchError(
                f"{' '.join(cmd)} ran on {result.get('backends')!r} with "
                f"{result.get('n_gpu_layers')} layers, not {self.ggml_backend} with {self.layers}"
            )

    def check_log(self, who: str, log: str, ours: bool) -> str:
        """A server's log (llamapyz's or llama-server's at -lv 4): its line saying where the
        layers went."""
        want = f"offloaded {self.layers}/{self.units} layers to " + (self.device if ours else "GPU")
        found = [line for line in log.splitlines() if "offloaded" in line]
        if not any(want in line for line in found):
            raise BenchError(f"{who} did not say {want!r} (it said {found[:2]})")
        return found[0].strip()

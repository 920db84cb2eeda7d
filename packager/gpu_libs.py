"""The GPU backends a build carries: libggml-vulkan.so (scripts/build-vulkan.sh) and, with
`--gpu cuda`, libggml-cuda.so and CUDA's own libraries (scripts/build-cuda.sh), from the
folder `make install` fills (runtime.engine.devices.variants.gpu_build_dir)."""

from __future__ import annotations

from pathlib import Path

from packager.errors import PackError
from runtime.engine.devices.variants import gpu_build_dir

CHOICES = ("default", "none", "vulkan", "cuda")
CUDA_LIBS = ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")


def files(gpu: str) -> list[tuple[str, Path]]:
    """(path under site-packages, source) of each GPU library `--gpu` asks for. `default`
    carries Vulkan when it was built and says nothing otherwise (the caller warns)."""
    if gpu == "none":
        return []
    folder = gpu_build_dir()
    found: list[tuple[str, Path]] = []
    vulkan = folder / "libggml-vulkan.so"
    if vulkan.is_file():
        found.append(("bin/libggml-vulkan.so", vulkan))
    elif gpu in ("vulkan", "cuda"):
        raise PackError(
            f"--gpu {gpu}: the Vulkan backend is not built ({vulkan} is missing): "
            "run `make install` or scripts/build-vulkan.sh"
        )
    if gpu == "cuda":
        cuda = folder / "cuda"
        needed = ["libggml-cuda.so", *CUDA_LIBS]
        missing = [n for n in needed if not (cuda / n).is_file()]
        if missing:
            raise PackError(
                f"--gpu cuda: {cuda} lacks {', '.join(missing)}: run scripts/build-cuda.sh ARCHS"
            )
        found += [(f"bin/{n}", cuda / n) for n in needed]
    return found


def backends(listed: list[tuple[str, Path]]) -> list[str]:
    """The backend names in a file list: Vulkan, CUDA."""
    names = {Path(arc).name for arc, _ in listed}
    return [
        b
        for b, lib in (("Vulkan", "libggml-vulkan.so"), ("CUDA", "libggml-cuda.so"))
        if lib in names
    ]

"""llama.cpp's own llama-bench and llama-server, built by scripts/build-peers.sh, run with the
CPU variant llamapyz chose."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from benchmarks.context import REPO, Context
from benchmarks.procs import BenchError

SCRIPT = REPO / "scripts" / "build-peers.sh"
NOT_BUILT = "skipped: run scripts/build-peers.sh (or make bench) first"
ONE_SIDED = "llamapyz only: the peers are not built (scripts/build-peers.sh)"
LOADED = re.compile(r"loaded CPU backend from (\S+)")


@dataclass(frozen=True)
class Peers:
    """One build of the peers, and the folder whose binaries see only one CPU variant."""

    root: Path  # .../peers/llama.cpp-0.3.36-<hash>
    variant: Optional[str]
    build_s: Optional[float]  # how long this run spent building them; None: already built
    gpu_bin: Optional[Path] = None  # with_gpu's folder: bin-<variant>/ and one GPU backend
    lib_path: Optional[Path] = None  # where that backend's own libraries are (CUDA's)

    @property
    def bin(self) -> Path:
        """bin-<variant>/: the binaries beside ONLY libggml-cpu-<variant>.so."""
        if self.gpu_bin is not None:
            return self.gpu_bin
        return self.root / (f"bin-{self.variant}" if self.variant else "bin")

    @property
    def bench(self) -> Path:
        return self.bin / "llama-bench"

    @property
    def server(self) -> Path:
        return self.bin / "llama-server"

    def info(self) -> dict[str, str]:
        """BUILD-INFO, as written by the script: flags, compiler, build date, variants."""
        fields: dict[str, str] = {}
        try:
            text = (self.root / "BUILD-INFO").read_text()
        except OSError:
            return fields
        for line in text.splitlines():
            key, sep, value = line.partition(": ")
            fields[key if sep else "source"] = value if sep else line
        return fields

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment for the peers: nothing that adds a backend of its own."""
        env = dict(base)
        env.pop("GGML_BACKEND_PATH", None)
        if self.lib_path is not None:
            env["LD_LIBRARY_PATH"] = ":".join(
                p for p in (str(self.lib_path), env.get("LD_LIBRARY_PATH", "")) if p
            )
        return env

    def with_gpu(self, backend_lib: Path, folder: Path) -> Peers:
        """These peers with one GPU backend: `folder` gets bin-<variant>/'s files (hard links,
        as the script makes them: ggml searches the directory of /proc/self/exe) and a link to
        `backend_lib`, the very libggml-vulkan.so or libggml-cuda.so that llamapyz carries,
        built from the same llama.cpp source and flags (scripts/build-vulkan.sh, build-cuda.sh).
        llama-bench and llama-server load it as they load their CPU variant."""
        folder.mkdir(parents=True, exist_ok=True)
        for file in self.bin.iterdir():
            target = folder / file.name
            if not target.exists():
                try:
                    os.link(file, target)
                except OSError:
                    shutil.copy2(file, target)
        link = folder / backend_lib.name
        if not link.exists():
            link.symlink_to(backend_lib.resolve())
        return replace(self, gpu_bin=folder, lib_path=backend_lib.resolve().parent)


def _script(build: bool, ctx: Context) -> Optional[Path]:
    env = {**ctx.env, "PYTHON": str(ctx.python)}
    if not build:
        env["LLAMAPYZ_PEERS_NO_BUILD"] = "1"
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=None,  # the build's progress and errors go straight to the user
        text=True,
    )
    if done.returncode == 3 and not build:
        return None
    if done.returncode != 0:
        raise BenchError(f"scripts/build-peers.sh exited with {done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def locate(
    ctx: Context, variant: Optional[str], build: bool, given: Optional[Path] = None
) -> Optional[Peers]:
    """The peers' build (`given`, or the script's): made now when `build` (10-20 minutes, once),
    else None when it is not built yet."""
    build_s: Optional[float] = None
    root = given or _script(build=False, ctx=ctx)
    if root is None and build:
        ctx.log("building the peers (llama-bench, llama-server) with scripts/build-peers.sh ...")
        started = time.monotonic()
        root = _script(build=True, ctx=ctx)
        build_s = time.monotonic() - started
    if root is None:
        return None
    peers = Peers(root, variant, build_s)
    for tool in (peers.bench, peers.server):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"{tool} is missing: remove {root} and run scripts/build-peers.sh")
    return peers


def loaded_variant(stderr: str) -> Optional[str]:
    """The CPU backend file a peer's log says it loaded, e.g. 'libggml-cpu-zen4.so'."""
    found = LOADED.findall(stderr)
    return Path(found[-1]).name if found else None

"""Row: the arm64 side's generation speed under qemu-aarch64, against llama-bench cross-built from
the same source with the same toolchain (scripts/build-arm64.sh's peer/llama-bench), both run by
the same emulated CPU with the same threads. The emulation is slow, but both sides pay it.

Ours: the .pyz served by Debian 12's arm64 CPython (`--spec-type none`, as llama-bench does not
speculate); its speed is the reply's `timings.predicted_per_second`, which counts generation only,
as llama-bench's tg does. The peer sees only the CPU variant ours chose (copied beside it: ggml
looks for its backends beside the executable)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Optional

from benchmarks.context import REPO, Context
from benchmarks.procs import BenchError
from benchmarks.rows_server import OPENER, Server, free_port
from benchmarks.table import Goal, Row

CPU = "neoverse-n1"  # armv8.2 with dot product and FP16 arithmetic: ggml's armv8.2_2
TOKENS = 16
GOAL = Goal(">=", 0.95, on_ratio=True)
CHOSEN = re.compile(r"chosen: (\S+)")


def _sysroot() -> Path:
    done = subprocess.run([str(REPO / "scripts" / "debian-sysroot.sh"), "bookworm"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"scripts/debian-sysroot.sh bookworm failed: {done.stderr[-300:]}")
    return Path(done.stdout.strip())


def _python(qemu: str, root: Path) -> list[str]:
    return [qemu, "-cpu", CPU, "-L", str(root), str(root / "usr" / "bin" / "python3.11")]


def _peer_dir(ctx: Context, built: Path, variant: str) -> Path:
    """llama-bench with the libraries and the one CPU variant beside it (hard links; libllama
    also under its soname, which llama-bench asks for: the file stores it as the wheel does)."""
    folder = ctx.work / "arm64-peer"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    wanted = [*(built / "peer").iterdir(), built / "bin" / f"libggml-cpu-{variant}.so"]
    wanted += sorted((built / "llama_cpp" / "lib").glob("lib*.so*"))
    for path in wanted:
        os.link(path, folder / path.name)
    os.link(built / "llama_cpp" / "lib" / "libllama.so", folder / "libllama.so.0")
    return folder


def _peer_speed(qemu: str, root: Path, folder: Path, model: Path, threads: int) -> float:
    cmd = [qemu, "-cpu", CPU, "-L", str(root), "-E", f"LD_LIBRARY_PATH={folder}",
           str(folder / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(TOKENS),
           "-t", str(threads), "-r", "1", "-o", "json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise BenchError(f"llama-bench under qemu failed: {done.stderr[-300:]}")
    return float(json.loads(done.stdout)[0]["avg_ts"])


def _our_speed(server: Server) -> float:
    body = {"model": server.model_id, "prompt": "The capital of France is",
            "max_tokens": TOKENS, "temperature": 0}  # fmt: skip
    request = urllib.request.Request(f"{server.base}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with OPENER.open(request, timeout=1200) as resp:
        return float(json.load(resp)["timings"]["predicted_per_second"])


def arm64_rows(ctx: Context, pyz: Path, model: Path, threads: int, quick: bool) -> list[Row]:
    from packager.arches import cross_build_dir

    name = f"arm64 under qemu ({CPU}), generation of {TOKENS} tokens, vs llama-bench (same build)"
    key = "speed_arm64_qemu_tg"
    built = cross_build_dir()
    qemu = shutil.which("qemu-aarch64")
    skipped: Optional[str] = None
    if quick:
        skipped = "skipped: --quick (minutes under qemu)"
    elif qemu is None:
        skipped = "skipped: qemu-aarch64 is not installed (make system-test)"
    elif not (built / "peer" / "llama-bench").is_file():
        skipped = f"skipped: {built} has no peer/llama-bench (run make install)"
    if skipped or qemu is None:
        return [Row(key, name, "tok/s", [], GOAL, skipped=skipped)]
    try:
        return [_measured(ctx, pyz, model, threads, qemu, built, key, name)]
    except BenchError as exc:  # minutes under qemu: the other rows are still worth their table
        return [Row(key, name, "tok/s", [], GOAL, skipped=f"failed: {exc}")]


def _measured(
    ctx: Context, pyz: Path, model: Path, threads: int, qemu: str, built: Path, key: str, name: str
) -> Row:
    root = _sysroot()
    env = dict(ctx.env, LLAMAPYZ_CACHE=str(ctx.work / "arm64-cache"))
    info = subprocess.run([*_python(qemu, root), str(pyz), "--system-info"], capture_output=True,
                          text=True, env=env, timeout=600)  # fmt: skip
    found = CHOSEN.search(info.stdout + info.stderr)
    if info.returncode != 0 or not found:
        raise BenchError(f"--system-info under qemu failed: {info.stderr[-300:]}")
    variant = found[1]
    folder = _peer_dir(ctx, built, variant)
    port = free_port()
    cmd = [*_python(qemu, root), str(pyz), "--server", "--nobrowser", "--port", str(port),
           "-c", "512", "-t", str(threads), "--spec-type", "none"]  # fmt: skip
    server = Server("llamapyz arm64", cmd, None, env, port)
    server.start()
    ours: list[float] = []
    peer: list[float] = []
    try:
        server.wait_ready()
        _our_speed(server)  # warm: the first request pays for the deferred extraction
        for _ in range(ctx.reps):  # interleaved
            ctx.quiet()
            ours.append(_our_speed(server))
            ctx.quiet()
            peer.append(_peer_speed(qemu, root, folder, model, threads))
    finally:
        server.stop()
    extra = {"cpu": CPU, "variant": variant, "tokens": TOKENS, "threads": threads}
    return Row(key, name, "tok/s", ours, GOAL, "llama-bench", peer, extra)

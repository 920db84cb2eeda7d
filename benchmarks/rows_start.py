"""Start rows: time to the first token of a .pyz (warm, and with an empty cache) against a plain
llama-cpp-python script on the same GGUF, what the first start writes, and the .pyz's overhead;
and what an image adds to a first start's writes (the vision rows measure it on their pair)."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.context import Context
from benchmarks.procs import (
    BenchError,
    Run,
    output,
    run,
    run_first_byte,
    tree_size,
    warm_page_cache,
)
from benchmarks.table import MB, Goal, Row

PROMPT = "The capital of France is"
N_PREDICT = 1
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_llama_cpp.py"
PEER_NAME = "llama-cpp-python"


@dataclass(frozen=True)
class Setup:
    """A .pyz of the model, and the two commands timed against each other."""

    model: Path
    pyz: Path
    variant: Optional[str]
    chosen: str  # the `chosen:` line of --system-info
    threads: int
    ours: list[str]
    peer: list[str]


def chosen_line(pyz: Path, env: dict[str, str]) -> str:
    """What `./x.pyz --system-info` says it chose, e.g. 'zen4 (the best variant ...)'."""
    text = output([str(pyz), "--system-info"], env)
    for line in text.splitlines():
        if line.startswith("chosen:"):
            return line.removeprefix("chosen:").strip()
    raise BenchError(f"{pyz} --system-info printed no 'chosen:' line:\n{text}")


def prepare(ctx: Context, model: Path, prompt: str = PROMPT) -> Setup:
    """Build the .pyz (untimed) and learn the CPU variant it picks."""
    pyz = ctx.work / f"{model.stem}.pyz"
    ctx.log(f"building {pyz.name} from {model} ...")
    run([*ctx.pack, "build", str(model), "-o", str(pyz)], ctx.env)
    chosen = chosen_line(pyz, ctx.env)
    name = chosen.split()[0] if chosen else ""
    # A build without GGML_BACKEND_DL reports None: its CPU backend is built in.
    variant = None if name in ("", "None") else name
    threads = len(os.sched_getaffinity(0))
    ours = [str(pyz), "-p", prompt, "-n", str(N_PREDICT), "--temp", "0"]
    peer = [str(ctx.python), str(PEER_SCRIPT), str(model), prompt, str(N_PREDICT), str(threads)]
    peer += [variant or ""]
    return Setup(model, pyz, variant, chosen, threads, ours, peer)


@dataclass
class Pairs:
    """Interleaved runs of two commands: ours (the .pyz) and a peer."""

    ours: list[Run] = field(default_factory=list)
    peer: list[Run] = field(default_factory=list)
    written: list[int] = field(default_factory=list)  # cache bytes after each first start
    peer_written: list[int] = field(default_factory=list)  # ... of the peer, where it is a .pyz
    busy: list[float] = field(default_factory=list)  # CPU busy share before each repetition


def take_turns(
    ctx: Context, ours: list[str], peer: list[str], names: tuple[str, str], fresh: tuple[bool, bool]
) -> Pairs:
    """ctx.reps runs of each command, taken in turns (the order alternating); a side whose
    `fresh` is set starts each run from an empty cache, the bytes it wrote recorded."""
    pairs = Pairs()
    sides = {
        "ours": (ours, fresh[0], pairs.ours, pairs.written),
        "peer": (peer, fresh[1], pairs.peer, pairs.peer_written),
    }
    for rep in range(ctx.reps):
        pairs.busy.append(ctx.quiet())
        for side in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            cmd, empty, runs, written = sides[side]
            os.sync()  # a first start writes tens of MB: to disk now, not in the next run
            env = dict(ctx.env)
            cache = ctx.work / f"fresh-cache-{side}-{rep}"
            if empty:
                env["LLAMAPYZ_CACHE"] = str(cache)
            runs.append(run_first_byte(cmd, env))
            if empty:
                written.append(tree_size(cache))
                shutil.rmtree(cache)
        ctx.log(
            f"  rep {rep + 1}/{ctx.reps}: {names[0]} {pairs.ours[-1].first_byte_s:.3f} s, "
            f"{names[1]} {pairs.peer[-1].first_byte_s:.3f} s"
        )
    return pairs


def _pairs(ctx: Context, setup: Setup, label: str, fresh_cache: bool) -> Pairs:
    """Interleaved runs of the .pyz and the peer; with `fresh_cache`, each .pyz run starts empty."""
    pairs = take_turns(ctx, setup.ours, setup.peer, ("llamapyz", PEER_NAME), (fresh_cache, False))
    _check_same_text(ctx, label, pairs.ours, pairs.peer)
    return pairs


def _check_same_text(ctx: Context, label: str, ours: list[Run], peer: list[Run]) -> None:
    """Both sides must answer the same: otherwise the timings compare different work."""
    a, b = ours[0].stdout, peer[0].stdout
    if a != b:
        ctx.log(f"warning: {label}: llamapyz printed {a!r}, {PEER_NAME} printed {b!r}")


def first_byte(runs: list[Run]) -> list[float]:
    return [r.first_byte_s or 0.0 for r in runs]


def _extra(pairs: Pairs) -> dict[str, object]:
    return {
        "llamapyz_exit_s": [r.wall_s for r in pairs.ours],
        "peer_exit_s": [r.wall_s for r in pairs.peer],
        "llamapyz_text": pairs.ours[0].stdout.decode("utf-8", "replace"),
        "peer_text": pairs.peer[0].stdout.decode("utf-8", "replace"),
        "busy_before_rep": pairs.busy,
    }


def start_rows(ctx: Context, setup: Setup) -> list[Row]:
    """Warm start, first start, first start's disk use, and the .pyz's size overhead."""
    os.sync()  # the build rows' writes must not land on disk during these timings
    warm_page_cache(setup.pyz)
    ctx.log(f"start to first token, warm ({ctx.reps} reps after one untimed run each) ...")
    run_first_byte(setup.ours, ctx.env)
    run_first_byte(setup.peer, ctx.env)
    warm = _pairs(ctx, setup, "warm start", fresh_cache=False)
    ctx.log(f"first start, empty LLAMAPYZ_CACHE ({ctx.reps} reps) ...")
    first = _pairs(ctx, setup, "first start", fresh_cache=True)

    gguf_size = setup.model.stat().st_size
    pyz_size = setup.pyz.stat().st_size
    command = " ".join(["./" + setup.pyz.name, *setup.ours[1:]])
    return [
        Row(
            key="start_warm",
            name=f"start to first token, warm, vs {PEER_NAME}",
            unit="s",
            ours=first_byte(warm.ours),
            peer=first_byte(warm.peer),
            goal=Goal("<=", 1.10, on_ratio=True),
            extra={"command": command, **_extra(warm)},
        ),
        Row(
            key="start_first",
            name=f"first start (empty cache) to first token, vs {PEER_NAME} warm",
            unit="s",
            ours=first_byte(first.ours),
            peer=first_byte(first.peer),
            goal=Goal("<=", 2.0, on_ratio=True),
            extra={
                "command": f"LLAMAPYZ_CACHE=<empty dir> {command}",
                **_extra(first),
            },
        ),
        _check_row(ctx, setup, first),
        Row(
            key="first_run_disk",
            name="disk written by the first start (cache dir), vs GGUF size",
            unit="bytes",
            ours=[float(w) for w in first.written],
            peer_name="GGUF",
            peer=[float(gguf_size)],
            goal=Goal("<", 60 * MB, on_ratio=False),
            extra={"kernel_write_bytes": [r.written_bytes for r in first.ours]},
        ),
        Row(
            key="pyz_overhead",
            name=".pyz size minus GGUF size (Linux x86-64 and arm64), vs GGUF size",
            unit="bytes",
            ours=[float(pyz_size - gguf_size)],
            peer_name="GGUF",
            peer=[float(gguf_size)],
            # Issue 21: both architectures, five Pythons, Vulkan on x86-64 (one was 30 MB)
            goal=Goal("<=", 45 * MB, on_ratio=False),
            extra={"pyz_bytes": pyz_size, "gguf_bytes": gguf_size},
        ),
    ]


def _check_row(ctx: Context, setup: Setup, first: Pairs) -> Row:
    """What the GGUF check (runtime.file.gguf_check) costs a first start: the walk of the
    embedded header, timed here in-process with the page cache as warm as the first starts had it;
    later starts find the pass remembered and skip it."""
    from runtime.file.archive import read_manifest
    from runtime.file.gguf_check import check

    weights = read_manifest(setup.pyz).weights
    assert weights is not None
    times = []
    for _ in range(max(3, ctx.reps)):
        start = time.perf_counter()
        check(setup.pyz, weights.offset, weights.size)
        times.append(time.perf_counter() - start)
    return Row(
        key="gguf_check_first_start",
        name="GGUF check on a first start, vs the first start",
        unit="s",
        ours=times,
        peer_name="first start",
        peer=first_byte(first.ours),
        goal=Goal("<=", 0.05, on_ratio=True),
        extra={"tensors": len(check(setup.pyz, weights.offset, weights.size).tensors)},
    )


def _files(root: Path) -> dict[str, int]:
    """Regular files under `root`, by path relative to it, with their sizes."""
    found: dict[str, int] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


def _copies(root: Path, files: dict[str, int], projector: Path) -> list[str]:
    """The files under `root` that hold the projector's bytes."""
    size = projector.stat().st_size
    digest = hashlib.sha256(projector.read_bytes()).hexdigest()
    return [
        name
        for name, n in files.items()
        if n == size and hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    ]


def image_disk_row(ctx: Context, pyz: Path, projector: Path, picture: Path, runs: int) -> Row:
    """What a first start (empty cache) that answers one --image prompt writes beyond the same
    without --image: what an image costs a first start. The projector is handed to mtmd through
    a memfd, so the row holds that to less than the projector's size; its JSON names the files
    (and any that holds the projector's bytes)."""
    plain = [str(pyz), "-p", PROMPT, "-n", "1", "--temp", "0", "-c", "2048"]
    commands = {"image": [*plain[:1], "--image", str(picture), *plain[1:]], "plain": plain}
    written: dict[str, list[int]] = {"image": [], "plain": []}
    kernel: dict[str, list[int]] = {"image": [], "plain": []}
    listed: dict[str, dict[str, int]] = {}
    copies: list[str] = []
    ctx.log(f"first start with --image and without, empty caches ({runs} runs) ...")
    for rep in range(runs):
        ctx.quiet()
        for side in ("image", "plain") if rep % 2 == 0 else ("plain", "image"):
            os.sync()
            cache = ctx.work / f"vision-cache-{side}-{rep}"
            done = run(commands[side], {**ctx.env, "LLAMAPYZ_CACHE": str(cache)})
            files = _files(cache)
            written[side].append(sum(files.values()))
            kernel[side].append(done.written_bytes)
            if rep == 0:
                listed[side] = files
                if side == "image":
                    copies = _copies(cache, files, projector)
            shutil.rmtree(cache)
    extra_bytes = [a - b for a, b in zip(written["image"], written["plain"])]
    new = {n: s for n, s in listed["image"].items() if listed["plain"].get(n) != s}
    return Row(
        key="first_run_disk_image",
        name="disk written by a first start with --image, beyond one without, vs the projector",
        unit="bytes",
        ours=[float(b) for b in extra_bytes],
        peer_name="projector",
        peer=[float(projector.stat().st_size)],
        goal=Goal("<", 1.0, on_ratio=True),  # the projector is not copied
        extra={
            "commands": {k: shlex.join(v) for k, v in commands.items()},
            "written_with_image": written["image"],
            "written_without_image": written["plain"],
            "kernel_write_bytes_with_image": kernel["image"],
            "kernel_write_bytes_without_image": kernel["plain"],
            "files_only_with_image": new,
            "projector_copies": copies,
        },
    )

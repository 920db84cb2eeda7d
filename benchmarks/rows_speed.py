"""Speed rows: llamapyz's engine against llama.cpp's own llama-bench on the same GGUF, the same
threads and the same CPU variant: prompt processing (pp512) and generation (tg128), in tok/s.

Each run on either side makes one untimed warm-up pass and then BENCH_REPS timed ones, and
reports their mean (llama-bench's `avg_ts`); the row's samples are those means, from runs
interleaved with the peer's. What exactly is timed on our side is in engine_speed.py.

Both sides use every core, and ggml's threads spin rather than sleep while they wait for each
other, so an undisturbed run uses about threads x wall seconds of CPU. A run that got less
than STARVED of that shared the CPUs with other work (which on two cores stretches it by
anything up to 2x): it is run again, at most MAX_TRIES times, and the shares are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from benchmarks.context import Context
from benchmarks.gpu_side import GpuSide
from benchmarks.peers import NOT_BUILT, ONE_SIDED, Peers, loaded_variant
from benchmarks.procs import BenchError
from benchmarks.rows_start import Setup
from benchmarks.table import Goal, Row

ENGINE_SCRIPT = Path(__file__).resolve().parent / "engine_speed.py"
BENCH_REPS = 5  # timed passes inside each run, on both sides (llama-bench -r)
MAX_RUNS = 5  # interleaved runs of each side per row
STARVED = 0.9  # a run that got less than this share of threads x wall CPU seconds is redone
MAX_TRIES = 3
GOAL = Goal(">=", 0.97, on_ratio=True)
GPU_GOAL = Goal(">=", 0.95, on_ratio=True)  # issue 12's, for every GPU row
PEER_NAME = "llama-bench"


@dataclass(frozen=True)
class Test:
    key: str
    name: str
    mode: str  # engine_speed.py's: pp or tg
    tokens: int
    bench_args: tuple[str, ...]  # llama-bench's selection of the same test


TESTS = (
    Test(
        "speed_pp512",
        "prompt processing, 512 tokens, vs llama-bench pp512",
        "pp",
        512,
        ("-p", "512", "-n", "0"),
    ),
    Test(
        "speed_tg128",
        "generation, 128 tokens, vs llama-bench tg128",
        "tg",
        128,
        ("-p", "0", "-n", "128"),
    ),
)


@dataclass
class Runs:
    ours: list[dict[str, Any]] = field(default_factory=list)
    peer: list[dict[str, Any]] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    redone: int = 0  # runs repeated because other work took part of the CPUs


@dataclass(frozen=True)
class Child:
    stdout: str
    stderr: str
    cpu_share: float  # CPU seconds / (wall seconds x threads)


def run_child(
    cmd: list[str], env: Mapping[str, str], threads: int, cwd: Optional[Path] = None
) -> Child:
    """Run `cmd` to the end; its output and the share of `threads` CPUs it got."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        _, status, ru = os.wait4(proc.pid, 0)  # wait4: the child's CPU time comes with it
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        raise BenchError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    share = (ru.ru_utime + ru.ru_stime) / (wall * threads) if wall > 0 else 0.0
    return Child(stdout, stderr, share)


def _reps(ctx: Context) -> tuple[int, int]:
    """(interleaved runs, timed passes per run); a --reps 1 run is a smoke run of each."""
    return min(ctx.reps, MAX_RUNS), BENCH_REPS if ctx.reps > 1 else 1


def ours_command(
    ctx: Context,
    setup: Setup,
    test: Test,
    passes: int,
    prompt: str,
    gpu: Optional[GpuSide] = None,
) -> list[str]:
    return [
        str(ctx.python),
        str(ENGINE_SCRIPT),
        str(setup.pyz),
        setup.variant or "",
        str(setup.threads),
        test.mode,
        str(test.tokens),
        str(passes),
        prompt,
        *([gpu.spec] if gpu else []),
    ]


def peer_command(
    peers: Peers,
    setup: Setup,
    bench_args: tuple[str, ...],
    passes: int,
    gpu: Optional[GpuSide] = None,
) -> list[str]:
    return [
        str(peers.bench),
        "-m",
        str(setup.model),
        "-t",
        str(setup.threads),
        *bench_args,
        "-r",
        str(passes),
        "-o",
        "json",
        *(gpu.bench_flags() if gpu else ()),
    ]


def run_bench(
    ctx: Context, peers: Peers, cmd: list[str], threads: int
) -> tuple[dict[str, Any], Optional[str]]:
    """One llama-bench run, from inside its one-variant folder: (its result, with the CPU
    share it got, and the CPU backend file its log says it loaded)."""
    # From inside: ggml also looks for backends in the working directory.
    done = run_child(cmd, peers.env(ctx.env), threads, cwd=peers.bin)
    try:
        results = json.loads(done.stdout)
        result: dict[str, Any] = results[-1]
        result["avg_ts"] = float(result["avg_ts"])
    except (ValueError, LookupError, TypeError) as exc:
        raise BenchError(
            f"{' '.join(cmd)} printed no result in JSON ({exc}):\n{done.stdout[-500:]}"
        ) from None
    result["cpu_share"] = done.cpu_share
    return result, loaded_variant(done.stderr)


def check_variant(ctx: Context, peers: Peers, setup: Setup) -> Optional[str]:
    """Run llama-bench briefly and make sure it loads the variant llamapyz chose."""
    cmd = peer_command(peers, setup, ("-p", "16", "-n", "0"), 1)
    result, loaded = run_bench(ctx, peers, cmd, setup.threads)
    want = f"libggml-cpu-{setup.variant}.so" if setup.variant else None
    if want and loaded and loaded != want:
        raise BenchError(
            f"llama-bench loaded {loaded}, not {want}: {peers.bin} holds other variants"
        )
    return loaded


def _ours(
    ctx: Context, cmd: list[str], threads: int, gpu: Optional[GpuSide] = None
) -> dict[str, Any]:
    done = run_child(cmd, {**ctx.env, **(gpu.env if gpu else {})}, threads)
    text = done.stdout
    try:
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BenchError(f"{' '.join(cmd)} printed no result ({exc}):\n{text[-500:]}") from None
    result["cpu_share"] = done.cpu_share
    if gpu is not None:
        gpu.check_ours(result, cmd)
    return result


def _undisturbed(
    ctx: Context, runs: Runs, measure: Callable[[], dict[str, Any]], starved: float = STARVED
) -> dict[str, Any]:
    """A run that got its share of the CPUs, if one of MAX_TRIES does (else the last). A smoke
    run (--reps 1) takes the first: on a tiny model Python, not ggml, fills the time. On a GPU
    (`starved` 0) the CPUs mostly wait, so the share says nothing: the first run counts."""
    for attempt in range(MAX_TRIES if ctx.reps > 1 and starved > 0 else 1):
        if attempt:
            runs.redone += 1
            ctx.quiet()
        result = measure()
        if result["cpu_share"] >= starved:
            break
        ctx.log(f"  (a run got {result['cpu_share']:.0%} of the CPUs: other work ran meanwhile)")
    return result


def _measure(
    ctx: Context,
    setup: Setup,
    peers: Optional[Peers],
    test: Test,
    prompt: str,
    gpu: Optional[GpuSide] = None,
) -> Runs:
    """Interleaved runs of both sides (llamapyz's alone when `peers` is None: a GPU smoke run)."""
    runs_n, passes = _reps(ctx)
    ours_cmd = ours_command(ctx, setup, test, passes, prompt, gpu)
    peer_cmd = peer_command(peers, setup, test.bench_args, passes, gpu) if peers else []
    runs = Runs()
    threads = setup.threads
    starved = STARVED if gpu is None else 0.0

    def peer_run(cmd: list[str]) -> dict[str, Any]:
        assert peers is not None
        result = run_bench(ctx, peers, cmd, threads)[0]
        if gpu is not None:
            gpu.check_bench(result, cmd)
        return result

    for rep in range(runs_n):
        runs.busy.append(ctx.quiet())
        for which in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            if which == "ours":
                runs.ours.append(
                    _undisturbed(ctx, runs, lambda: _ours(ctx, ours_cmd, threads, gpu), starved)
                )
            elif peers is not None:
                runs.peer.append(_undisturbed(ctx, runs, lambda: peer_run(peer_cmd), starved))
        peer_text = f"{runs.peer[-1]['avg_ts']:.1f} tok/s" if runs.peer else "not built"
        ctx.log(
            f"  run {rep + 1}/{runs_n}: llamapyz {runs.ours[-1]['avg_ts']:.1f} tok/s, "
            f"{PEER_NAME} {peer_text}"
        )
    return runs


PEER_FIELDS = (
    "build_commit",
    "build_number",
    "cpu_info",
    "backends",
    "n_threads",
    "n_batch",
    "n_ubatch",
    "type_k",
    "type_v",
    "flash_attn",
    "use_mmap",
    "poll",
)


def _row(
    test: Test,
    runs: Runs,
    ours_cmd: list[str],
    peer_cmd: list[str],
    gpu: Optional[GpuSide] = None,
) -> Row:
    first_peer = runs.peer[0] if runs.peer else {}
    return Row(
        key=gpu.key(test.key) if gpu else test.key,
        name=gpu.name(test.name) if gpu else test.name,
        unit="tok/s",
        ours=[float(r["avg_ts"]) for r in runs.ours],
        peer_name=PEER_NAME,
        peer=[float(r["avg_ts"]) for r in runs.peer],
        goal=GPU_GOAL if gpu else GOAL,
        extra={
            "llamapyz_command": ours_cmd,
            "peer_command": peer_cmd,
            "llamapyz_samples_ts": [r["samples_ts"] for r in runs.ours],
            "peer_samples_ts": [r.get("samples_ts") for r in runs.peer],
            "llamapyz_whole_call_ts": [r.get("whole_call_ts") for r in runs.ours],
            "llamapyz_text": runs.ours[0].get("text"),
            "peer_params": {k: first_peer.get(k) for k in PEER_FIELDS},
            "busy_before_rep": runs.busy,
            "llamapyz_cpu_share": [r["cpu_share"] for r in runs.ours],
            "peer_cpu_share": [r["cpu_share"] for r in runs.peer],
            "runs_redone_for_cpu_share": runs.redone,
            "gpu": None
            if gpu is None
            else {
                "backend": gpu.backend,
                "device": gpu.device,
                "description": gpu.description,
                "layers": gpu.layers,
                "units": gpu.units,
                "llamapyz_line": runs.ours[0].get("gpu_line"),
                "peer_gpu_info": first_peer.get("gpu_info"),
            },
        },
        skipped=None if runs.peer else ONE_SIDED,
    )


def skipped_rows(why: str = NOT_BUILT) -> list[Row]:
    return [
        Row(
            key=t.key,
            name=t.name,
            unit="tok/s",
            ours=[],
            goal=GOAL,
            peer_name=PEER_NAME,
            skipped=why,
        )
        for t in TESTS
    ]


def gpu_tests(gpu: GpuSide) -> tuple[Test, ...]:
    """pp and tg at the GPU side's sizes (512 and 128 but in a smoke run)."""
    return (
        Test(
            f"speed_pp{gpu.pp}",
            f"prompt processing, {gpu.pp} tokens, vs llama-bench pp{gpu.pp}",
            "pp",
            gpu.pp,
            ("-p", str(gpu.pp), "-n", "0"),
        ),
        Test(
            f"speed_tg{gpu.tg}",
            f"generation, {gpu.tg} tokens, vs llama-bench tg{gpu.tg}",
            "tg",
            gpu.tg,
            ("-p", "0", "-n", str(gpu.tg)),
        ),
    )


def speed_rows(
    ctx: Context,
    setup: Setup,
    peers: Optional[Peers],
    prompt: str,
    gpu: Optional[GpuSide] = None,
) -> list[Row]:
    """pp512 and tg128 against llama-bench; skipped (with a note) when the peers are not built.
    With `gpu`, both sides put the same layers on the same device; llamapyz's side alone is
    measured when the peers are not built (the row says so)."""
    if peers is None and gpu is None:
        return skipped_rows()
    rows = []
    runs_n, passes = _reps(ctx)
    for test in gpu_tests(gpu) if gpu else TESTS:
        ctx.log(
            f"{gpu.name(test.name) if gpu else test.name} ({runs_n} runs of {passes} passes each) ..."
        )
        runs = _measure(ctx, setup, peers, test, prompt, gpu)
        peer_cmd = peer_command(peers, setup, test.bench_args, passes, gpu) if peers else []
        rows.append(
            _row(test, runs, ours_command(ctx, setup, test, passes, prompt, gpu), peer_cmd, gpu)
        )
    return rows

"""Speed rows: llamapyz's engine against llama.cpp's own llama-bench on the same GGUF, the same
threads and the same CPU variant: prompt processing (pp512) and generation (tg128), in tok/s.

Each run on either side makes one untimed warm-up pass and then BENCH_REPS timed ones, and
reports their mean (llama-bench's `avg_ts`); the row's samples are those means, from runs
interleaved with the peer's. What exactly is timed on our side is in engine_speed.py.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from benchmarks.context import Context
from benchmarks.peers import NOT_BUILT, Peers, loaded_variant
from benchmarks.procs import BenchError, output
from benchmarks.rows_start import Setup
from benchmarks.table import Goal, Row

ENGINE_SCRIPT = Path(__file__).resolve().parent / "engine_speed.py"
BENCH_REPS = 5  # timed passes inside each run, on both sides (llama-bench -r)
MAX_RUNS = 5  # interleaved runs of each side per row
GOAL = Goal(">=", 0.97, on_ratio=True)
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


def _reps(ctx: Context) -> tuple[int, int]:
    """(interleaved runs, timed passes per run); a --reps 1 run is a smoke run of each."""
    return min(ctx.reps, MAX_RUNS), BENCH_REPS if ctx.reps > 1 else 1


def ours_command(ctx: Context, setup: Setup, test: Test, passes: int, prompt: str) -> list[str]:
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
    ]


def peer_command(peers: Peers, setup: Setup, bench_args: tuple[str, ...], passes: int) -> list[str]:
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
    ]


def run_bench(ctx: Context, peers: Peers, cmd: list[str]) -> tuple[dict[str, Any], Optional[str]]:
    """One llama-bench run, from inside its one-variant folder: (its result, the CPU backend
    file its log says it loaded)."""
    done = subprocess.run(
        cmd,
        cwd=peers.bin,  # ggml also looks for backends in the working directory
        env=peers.env(ctx.env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}:\n{tail}")
    try:
        results = json.loads(done.stdout)
        result: dict[str, Any] = results[-1]
        result["avg_ts"] = float(result["avg_ts"])
    except (ValueError, LookupError, TypeError) as exc:
        raise BenchError(
            f"{' '.join(cmd)} printed no result in JSON ({exc}):\n{done.stdout[-500:]}"
        ) from None
    return result, loaded_variant(done.stderr)


def check_variant(ctx: Context, peers: Peers, setup: Setup) -> Optional[str]:
    """Run llama-bench briefly and make sure it loads the variant llamapyz chose."""
    cmd = peer_command(peers, setup, ("-p", "16", "-n", "0"), 1)
    result, loaded = run_bench(ctx, peers, cmd)
    want = f"libggml-cpu-{setup.variant}.so" if setup.variant else None
    if want and loaded and loaded != want:
        raise BenchError(
            f"llama-bench loaded {loaded}, not {want}: {peers.bin} holds other variants"
        )
    return loaded


def _ours(ctx: Context, cmd: list[str]) -> dict[str, Any]:
    text = output(cmd, ctx.env)
    try:
        result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BenchError(f"{' '.join(cmd)} printed no result ({exc}):\n{text[-500:]}") from None
    return result


def _measure(ctx: Context, setup: Setup, peers: Peers, test: Test, prompt: str) -> Runs:
    runs_n, passes = _reps(ctx)
    ours_cmd = ours_command(ctx, setup, test, passes, prompt)
    peer_cmd = peer_command(peers, setup, test.bench_args, passes)
    runs = Runs()
    for rep in range(runs_n):
        runs.busy.append(ctx.quiet())
        for which in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            if which == "ours":
                runs.ours.append(_ours(ctx, ours_cmd))
            else:
                runs.peer.append(run_bench(ctx, peers, peer_cmd)[0])
        ctx.log(
            f"  run {rep + 1}/{runs_n}: llamapyz {runs.ours[-1]['avg_ts']:.1f} tok/s, "
            f"{PEER_NAME} {runs.peer[-1]['avg_ts']:.1f} tok/s"
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


def _row(test: Test, runs: Runs, ours_cmd: list[str], peer_cmd: list[str]) -> Row:
    first_peer = runs.peer[0]
    return Row(
        key=test.key,
        name=test.name,
        unit="tok/s",
        ours=[float(r["avg_ts"]) for r in runs.ours],
        peer_name=PEER_NAME,
        peer=[float(r["avg_ts"]) for r in runs.peer],
        goal=GOAL,
        extra={
            "llamapyz_command": ours_cmd,
            "peer_command": peer_cmd,
            "llamapyz_samples_ts": [r["samples_ts"] for r in runs.ours],
            "peer_samples_ts": [r.get("samples_ts") for r in runs.peer],
            "llamapyz_whole_call_ts": [r.get("whole_call_ts") for r in runs.ours],
            "llamapyz_text": runs.ours[0].get("text"),
            "peer_params": {k: first_peer.get(k) for k in PEER_FIELDS},
            "busy_before_rep": runs.busy,
        },
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


def speed_rows(ctx: Context, setup: Setup, peers: Optional[Peers], prompt: str) -> list[Row]:
    """pp512 and tg128 against llama-bench; skipped (with a note) when the peers are not built."""
    if peers is None:
        return skipped_rows()
    rows = []
    runs_n, passes = _reps(ctx)
    for test in TESTS:
        ctx.log(f"{test.name} ({runs_n} runs of {passes} passes each) ...")
        runs = _measure(ctx, setup, peers, test, prompt)
        rows.append(
            _row(
                test,
                runs,
                ours_command(ctx, setup, test, passes, prompt),
                peer_command(peers, setup, test.bench_args, passes),
            )
        )
    return rows

"""`python -m benchmarks`: measure every row, print one table on stdout, save the samples as JSON."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from benchmarks import (
    chart,
    rows_arches,
    rows_arm64,
    rows_build,
    rows_gpu,
    rows_ollama,
    rows_rpc,
    rows_server,
    rows_spec,
    rows_speed,
    rows_start,
    rows_vision,
    synthetic,
)
from benchmarks.context import REPO, Context, context, env_python3, fetch_script
from benchmarks.engine_speed import GEN_PROMPT
from benchmarks.machine import describe
from benchmarks.peers import Peers, locate
from benchmarks.procs import BenchError
from benchmarks.table import Row, fmt, render

SIZES = [100_000_000, 1_000_000_000]
BIG = 4_000_000_000
QUICK_SIZES = [4_000_000]
REPS = 11
IDLE_BUDGET_S = 120.0  # at most this long, in all, waiting for other work to finish


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="One repetition and a 4 MB synthetic GGUF: a smoke run, not a measurement.",
    )
    p.add_argument("--big", action="store_true", help="Also build a 4 GB synthetic GGUF.")
    p.add_argument(
        "--model",
        type=Path,
        help="The GGUF for the start rows. Default: SmolLM2-135M-Instruct (fetched once).",
    )
    p.add_argument(
        "--prompt",
        help=f"Prompt for the start rows (default {rows_start.PROMPT!r}), and for the generation "
        "and server rows (default: a story opening SmolLM2 continues past 128 tokens) and the "
        "vision rows' text clients.",
    )
    p.add_argument(
        "--peers",
        type=Path,
        help="A build of llama-bench and llama-server made by scripts/build-peers.sh. Default: "
        "the script's own (built first if missing; with --quick, those rows are skipped).",
    )
    p.add_argument(
        "--spec-only",
        action="store_true",
        help="Only the speculation rows (workloads against llama-server and its n-gram modes).",
    )
    p.add_argument(
        "--speed-only",
        action="store_true",
        help="Only the speed rows: pp512 and tg128 against llama-bench, and arm64 under qemu.",
    )
    p.add_argument(
        "--arches-only",
        action="store_true",
        help="Only what carrying arm64 costs the x86-64 side: its file's size and its starts.",
    )
    p.add_argument(
        "--vision-only",
        action="store_true",
        help="Only the vision rows: an image prompt's first token and text clients beside "
        "images, against llama-server --mmproj, and a first start's disk with an image.",
    )
    p.add_argument(
        "--only",
        help="With --spec-only, only these rows, comma-separated: workloads (code edit, "
        "free-form, ...), mixed (4 clients), seeded (code edit at temp 0.8), draft (-md).",
    )
    p.add_argument(
        "--gpu-only",
        action="store_true",
        help="Only the GPU rows (scripts/gpu-check.sh runs these).",
    )
    p.add_argument(
        "--gpu-backends",
        default=",".join(rows_gpu.BACKENDS),
        help="The GPU backends whose rows run, where they have a device. Default: vulkan,cuda.",
    )
    p.add_argument(
        "--gpu-lavapipe",
        action="store_true",
        help="Count lavapipe (Mesa's CPU Vulkan driver; set GGML_VK_VISIBLE_DEVICES=0) as a GPU: "
        "a smoke run of the GPU rows, not a measurement.",
    )
    p.add_argument(
        "--reps", type=int, help=f"Repetitions per row. Default: {REPS}, or 1 with --quick."
    )
    p.add_argument(
        "--json",
        type=Path,
        help="Where to write the results. Default: bench-results/bench-<timestamp>.json.",
    )
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    if args.model is not None and not args.model.is_file():
        p.error(f"--model {args.model} is not a file")
    backends = tuple(b.strip() for b in args.gpu_backends.split(",") if b.strip())
    if not backends or any(b not in rows_gpu.BACKENDS for b in backends):
        p.error(f"--gpu-backends {args.gpu_backends}: give some of {', '.join(rows_gpu.BACKENDS)}")
    args.gpu_backends = backends
    if args.only is not None:
        args.only = {w.strip() for w in args.only.split(",") if w.strip()}
        unknown = args.only - rows_spec.ROW_NAMES
        if not args.spec_only or not args.only or unknown:
            p.error(
                f"--only {','.join(sorted(unknown or args.only))}: give --spec-only and some "
                f"of {', '.join(sorted(rows_spec.ROW_NAMES))}"
            )
    if args.peers is not None and not args.peers.is_dir():
        p.error(f"--peers {args.peers} is not a directory")
    return args


def _peers_lines(peers: Optional[Peers], loaded: Optional[str]) -> list[str]:
    if peers is None:
        return ["peers: llama-bench and llama-server not built: run scripts/build-peers.sh"]
    info = peers.info()
    built = (
        f"built by this run in {peers.build_s:.0f} s"
        if peers.build_s is not None
        else f"built {info.get('built', '(date unknown)')}"
    )
    only = f"libggml-cpu-{peers.variant}.so" if peers.variant else "a built-in CPU backend"
    return [
        f"peers: llama-bench and llama-server from {info.get('source', 'llama.cpp')}, "
        f"{built}, in {peers.root}",
        f"peers' CPU variant: {peers.variant or 'built in'} ({peers.bin.name}/ holds only {only}; "
        f"llama-bench's log says it loaded {loaded or '(it did not say)'})",
        f"speed rows: medians of up to {rows_speed.MAX_RUNS} runs per side, each the mean of "
        f"{rows_speed.BENCH_REPS} timed passes after a warm-up (llama-bench -r "
        f"{rows_speed.BENCH_REPS}); server rows: up to {rows_server.MAX_RUNS} requests per side, "
        f"max_tokens {rows_server.N_TOKENS}, temperature 0, llamapyz --parallel "
        f"{rows_server.PEER_SLOTS} (its own -c), llama-server -np {rows_server.PEER_SLOTS} -c "
        f"{rows_server.PEER_CTX}; a run that got under {rows_speed.STARVED:.0%} of the CPUs "
        "is redone (at most twice)",
    ]


def _header(
    machine: dict[str, Any],
    setup: rows_start.Setup,
    ctx: Context,
    peers: Optional[Peers],
    loaded: Optional[str],
) -> str:
    cores = machine["cpus"]
    usable = machine["cpus_usable"]
    return "\n".join(
        [
            f"machine: {machine['cpu_model']}, {cores} CPUs ({usable} usable), "
            f"{fmt(machine['memory_bytes'], 'bytes')} RAM, Linux {machine['kernel']}, "
            f"Python {machine['python']}; load average {machine['load_start']:.2f} at the "
            f"start, {machine['load_end']:.2f} at the end",
            f"llamapyz CPU variant: {setup.chosen}",
            f"start rows: {setup.model.name} ({fmt(setup.model.stat().st_size, 'bytes')}), "
            f"-p {setup.ours[2]!r} -n {rows_start.N_PREDICT} --temp 0, {setup.threads} threads, "
            f".pyz run by {env_python3(ctx.env)}",
            f"waited {ctx.gate.waited_s:.0f} s for other work to finish; "
            f"{ctx.gate.busy_starts} repetitions started on busy CPUs",
            f"medians of {ctx.reps} runs, interleaved with the peer's; times from process start "
            "(start rows: to the first byte on stdout); pack build's runtime cache warmed by one "
            "untimed build; inputs read once before timing",
            f"synthetic GGUFs: random F16/F32 tensors and a {synthetic.N_VOCAB}-token vocabulary; "
            "peak RSS from wait4, spawned by a small helper whose own size is the floor "
            "(cp's value shows it)",
            *_peers_lines(peers, loaded),
        ]
    )


def _default_model() -> Path:
    return Path(fetch_script().fetch())


def _json_path(given: Optional[Path], started: float) -> Path:
    if given is not None:
        return given
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return REPO / "bench-results" / f"bench-{stamp}.json"


@dataclass
class Measured:
    rows: list[Row]
    setup: rows_start.Setup
    peers: Optional[Peers]
    loaded: Optional[str]  # the CPU backend file llama-bench said it loaded


def measure(args: argparse.Namespace, ctx: Context) -> Measured:
    """Every row, in table order."""
    sizes = QUICK_SIZES if args.quick else SIZES + ([BIG] if args.big else [])
    model = args.model or _default_model()
    setup = rows_start.prepare(ctx, model, args.prompt or rows_start.PROMPT)
    # A full run builds the peers first (10-20 minutes, once); a quick one never waits for that.
    peers = locate(ctx, setup.variant, build=not args.quick, given=args.peers)
    loaded = rows_speed.check_variant(ctx, peers, setup) if peers else None
    if args.spec_only:
        return Measured(rows_spec.spec_rows(ctx, setup, peers, args.only), setup, peers, loaded)
    if args.arches_only:
        return Measured(rows_arches.arch_rows(ctx, setup), setup, peers, loaded)
    if args.vision_only:
        rows = rows_vision.vision_rows(ctx, setup, peers, args.prompt or "", args.quick)
        return Measured(rows, setup, peers, loaded)
    if args.speed_only:
        rows = rows_speed.speed_rows(ctx, setup, peers, args.prompt or "")
        rows += rows_arm64.arm64_rows(ctx, setup.pyz, setup.model, setup.threads, args.quick)
        return Measured(rows, setup, peers, loaded)
    quick = args.quick or args.gpu_lavapipe  # lavapipe: about 1 tok/s
    gpu_opts = rows_gpu.Options(
        args.gpu_backends, args.gpu_lavapipe, pp=32 if quick else 512, tg=8 if quick else 128
    )
    gpu = rows_gpu.gpu_rows(ctx, setup, peers, args.prompt or "", gpu_opts)
    if args.gpu_only:
        return Measured(gpu, setup, peers, loaded)
    rows = rows_build.build_rows(ctx, sizes)
    rows += rows_start.start_rows(ctx, setup)
    rows += rows_arches.arch_rows(ctx, setup)
    rows += rows_speed.speed_rows(ctx, setup, peers, args.prompt or "")
    rows += rows_arm64.arm64_rows(ctx, setup.pyz, setup.model, setup.threads, args.quick)
    rows += rows_server.server_rows(ctx, setup, peers, args.prompt or "")
    rows += rows_ollama.ollama_rows(ctx, setup, args.prompt or GEN_PROMPT)
    rows += rows_vision.vision_rows(ctx, setup, peers, args.prompt or "", args.quick)
    ctx.log("RPC rows: the model split over 1, 2 and 3 workers on 127.0.0.1 ...")
    rows += rows_rpc.rpc_rows(
        setup.model,
        setup.pyz,
        setup.threads,
        min(ctx.reps, 5),
        counts=[1] if args.quick else None,
        env=ctx.env,
        prompt=args.prompt or "",
    )
    if not args.quick:  # minutes of requests: no smoke run
        rows += rows_spec.spec_rows(ctx, setup, peers)
    return Measured(rows + gpu, setup, peers, loaded)


def _exit_on_term(signum: int, _frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C: servers stopped, scratch directory removed."""
    sys.exit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_term)
    started = time.time()
    reps = args.reps or (1 if args.quick else REPS)
    machine = describe()
    machine["load_start"] = os.getloadavg()[0]
    try:
        # A quick run is a smoke test, not a measurement: it waits little for an idle machine.
        with context(reps, idle_budget_s=5.0 if args.quick else IDLE_BUDGET_S) as ctx:
            measured = measure(args, ctx)
            rows, setup = measured.rows, measured.setup
            # Other work on a small machine shows up here, and in the samples' spread.
            machine["load_end"] = os.getloadavg()[0]
            machine["waited_for_idle_s"] = ctx.gate.waited_s
            machine["reps_started_busy"] = ctx.gate.busy_starts
            header = _header(machine, setup, ctx, measured.peers, measured.loaded)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    machine.update(
        {"cpu_variant": setup.variant, "cpu_variant_chosen": setup.chosen, "threads": setup.threads}
    )
    duration = time.time() - started
    print(header)
    print()
    print(render(rows))
    path = _json_path(args.json, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    not_drawn = chart.build_scaling(rows, png)
    if not_drawn:
        print(f"bench: no chart: {not_drawn}", file=sys.stderr)
    peers = measured.peers
    result = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": duration,
        "command": shlex.join([sys.executable, "-m", "benchmarks", *(argv or sys.argv[1:])]),
        "options": {
            "quick": args.quick,
            "big": args.big,
            "reps": reps,
            "prompt": args.prompt,
            "model": str(setup.model),
            "peers": str(args.peers) if args.peers else None,
            "gpu_only": args.gpu_only,
            "speed_only": args.speed_only,
            "vision_only": args.vision_only,
            "gpu_backends": list(args.gpu_backends),
            "gpu_lavapipe": args.gpu_lavapipe,
        },
        "peers": None
        if peers is None
        else {
            "dir": str(peers.root),
            "bin": str(peers.bin),
            "variant": peers.variant,
            "loaded_cpu_backend": measured.loaded,
            "built_by_this_run_s": peers.build_s,
            "build_info": peers.info(),
        },
        "chart": None if not_drawn else str(png),
        "machine": machine,
        "notes": header.splitlines(),
        "rows": [r.to_json() for r in rows],
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    drawn = "" if not_drawn else f" and {png}"
    print(f"wrote {path}{drawn} ({duration:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

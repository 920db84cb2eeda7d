"""`python -m benchmarks`: measure every row, print one table on stdout, save the samples as JSON."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import rows_build, rows_start, synthetic
from benchmarks.context import REPO, Context, context, env_python3, fetch_script
from benchmarks.machine import describe
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
        default=rows_start.PROMPT,
        help=f"Prompt for the start rows. Default: {rows_start.PROMPT!r}.",
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
    return args


def _header(machine: dict[str, Any], setup: rows_start.Setup, ctx: Context) -> str:
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
        ]
    )


def _default_model() -> Path:
    return Path(fetch_script().fetch())


def _json_path(given: Optional[Path], started: float) -> Path:
    if given is not None:
        return given
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    return REPO / "bench-results" / f"bench-{stamp}.json"


def measure(args: argparse.Namespace, ctx: Context) -> tuple[list[Row], rows_start.Setup]:
    """Every row, in table order."""
    sizes = QUICK_SIZES if args.quick else SIZES + ([BIG] if args.big else [])
    model = args.model or _default_model()
    setup = rows_start.prepare(ctx, model, args.prompt)
    rows = rows_build.build_rows(ctx, sizes)
    rows += rows_start.start_rows(ctx, setup)
    return rows, setup


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    started = time.time()
    reps = args.reps or (1 if args.quick else REPS)
    machine = describe()
    machine["load_start"] = os.getloadavg()[0]
    try:
        # A quick run is a smoke test, not a measurement: it waits little for an idle machine.
        with context(reps, idle_budget_s=5.0 if args.quick else IDLE_BUDGET_S) as ctx:
            rows, setup = measure(args, ctx)
            # Other work on a small machine shows up here, and in the samples' spread.
            machine["load_end"] = os.getloadavg()[0]
            machine["waited_for_idle_s"] = ctx.gate.waited_s
            machine["reps_started_busy"] = ctx.gate.busy_starts
            header = _header(machine, setup, ctx)
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
        },
        "machine": machine,
        "notes": header.splitlines(),
        "rows": [r.to_json() for r in rows],
    }
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path} ({duration:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

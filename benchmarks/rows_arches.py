"""What carrying Linux arm64 costs the x86-64 side (issue 21): the size of a file built with
`--arch x86_64` alone, and the start of the two-architecture file against that one, first
(each run with an empty cache) and warm. Same model, same command, pairs taken in turns."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from benchmarks.context import Context
from benchmarks.procs import Run, run, run_first_byte, tree_size, warm_page_cache
from benchmarks.rows_start import Setup, first_byte
from benchmarks.table import MB, Goal, Row

SAME_START = Goal("<=", 1.02, on_ratio=True)


def _starts(ctx: Context, both: list[str], single: list[str], fresh: bool) -> dict[str, list[Run]]:
    """Interleaved runs of the two files; with `fresh`, each run starts from an empty cache."""
    runs: dict[str, list[Run]] = {"both": [], "single": []}
    written: dict[str, list[int]] = {"both": [], "single": []}
    for rep in range(ctx.reps):
        ctx.quiet()
        for which in ("both", "single") if rep % 2 == 0 else ("single", "both"):
            os.sync()  # a first start's writes go to disk now, not in the next run
            cmd = both if which == "both" else single
            env = dict(ctx.env)
            if fresh:
                env["LLAMAPYZ_CACHE"] = str(ctx.work / f"arch-cache-{which}-{rep}")
            runs[which].append(run_first_byte(cmd, env))
            if fresh:
                written[which].append(tree_size(Path(env["LLAMAPYZ_CACHE"])))
                shutil.rmtree(env["LLAMAPYZ_CACHE"])
        ctx.log(
            f"  rep {rep + 1}/{ctx.reps}: both {runs['both'][-1].first_byte_s:.3f} s, "
            f"x86-64 only {runs['single'][-1].first_byte_s:.3f} s"
        )
    if fresh and written["both"] != written["single"]:
        ctx.log(f"warning: first starts wrote {written['both']} and {written['single']} bytes")
    return runs


def arch_rows(ctx: Context, setup: Setup) -> list[Row]:
    """The x86-64-only file's overhead, and the two-architecture file's starts against it."""
    single = ctx.work / f"{setup.model.stem}-x86_64.pyz"
    ctx.log(f"building {single.name} (--arch x86_64) ...")
    run([*ctx.pack, "build", str(setup.model), "--arch", "x86_64", "-o", str(single)], ctx.env)
    both_cmd = setup.ours
    single_cmd = [str(single), *setup.ours[1:]]
    for pyz in (setup.pyz, single):
        warm_page_cache(pyz)
    ctx.log(f"two architectures against x86-64 only: warm start ({ctx.reps} reps) ...")
    run_first_byte(both_cmd, ctx.env)
    run_first_byte(single_cmd, ctx.env)
    warm = _starts(ctx, both_cmd, single_cmd, fresh=False)
    ctx.log(f"two architectures against x86-64 only: first start ({ctx.reps} reps) ...")
    first = _starts(ctx, both_cmd, single_cmd, fresh=True)
    gguf = setup.model.stat().st_size
    command = " ".join(["./" + setup.pyz.name, *setup.ours[1:]])
    return [
        Row(
            key="pyz_overhead_x86_64",
            name=".pyz size minus GGUF size, --arch x86_64 (Linux x86-64 only), vs GGUF size",
            unit="bytes",
            ours=[float(single.stat().st_size - gguf)],
            peer_name="GGUF",
            peer=[float(gguf)],
            goal=Goal("<=", 30 * MB, on_ratio=False),
            extra={"pyz_bytes": single.stat().st_size, "gguf_bytes": gguf},
        ),
        Row(
            key="start_warm_two_arches",
            name="warm start to first token, two-architecture file vs --arch x86_64",
            unit="s",
            ours=first_byte(warm["both"]),
            peer_name="x86-64 only",
            peer=first_byte(warm["single"]),
            goal=SAME_START,
            extra={"command": command},
        ),
        Row(
            key="start_first_two_arches",
            name="first start (empty cache), two-architecture file vs --arch x86_64",
            unit="s",
            ours=first_byte(first["both"]),
            peer_name="x86-64 only",
            peer=first_byte(first["single"]),
            goal=SAME_START,
            extra={"command": f"LLAMAPYZ_CACHE=<empty dir> {command}"},
        ),
    ]

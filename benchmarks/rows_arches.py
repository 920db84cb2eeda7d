"""What carrying Linux arm64 costs the x86-64 side (issue 21): the size of a file built with
`--arch x86_64` alone, and the start of the two-architecture file against that one, first
(each run with an empty cache) and warm. Same model, same command, pairs taken in turns."""

from __future__ import annotations

from benchmarks.context import Context
from benchmarks.procs import run, run_first_byte, warm_page_cache
from benchmarks.rows_start import Pairs, Setup, first_byte, take_turns
from benchmarks.table import MB, Goal, Row

SAME_START = Goal("<=", 1.02, on_ratio=True)


def _starts(ctx: Context, both: list[str], single: list[str], fresh: bool) -> Pairs:
    """Interleaved runs of the two files; with `fresh`, each run starts from an empty cache."""
    pairs = take_turns(ctx, both, single, ("both", "x86-64 only"), (fresh, fresh))
    if pairs.written != pairs.peer_written:
        ctx.log(f"warning: first starts wrote {pairs.written} and {pairs.peer_written} bytes")
    return pairs


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
            ours=first_byte(warm.ours),
            peer_name="x86-64 only",
            peer=first_byte(warm.peer),
            goal=SAME_START,
            extra={"command": command},
        ),
        Row(
            key="start_first_two_arches",
            name="first start (empty cache), two-architecture file vs --arch x86_64",
            unit="s",
            ours=first_byte(first.ours),
            peer_name="x86-64 only",
            peer=first_byte(first.peer),
            goal=SAME_START,
            extra={"command": f"LLAMAPYZ_CACHE=<empty dir> {command}"},
        ),
    ]

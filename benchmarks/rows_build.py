"""Build rows: `pack build` against `cp` of the same GGUF (time and peak memory)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import synthetic
from benchmarks.context import Context, bench_cache
from benchmarks.procs import Run, run, warm_page_cache
from benchmarks.table import MB, Goal, Row
from runtime.file.boot import cache_dir

MAX_TRIES = 3
TIME_GOAL = Goal("<=", 1.2, on_ratio=True)
RSS_GOAL = Goal("<=", 300 * MB, on_ratio=False)


@dataclass
class Samples:
    """The interleaved runs for one GGUF."""

    builds: list[Run] = field(default_factory=list)  # the GGUF new to pack: hashed
    again: list[Run] = field(default_factory=list)  # built before: its sha256 remembered
    copies: list[Run] = field(default_factory=list)
    missed: int = 0  # rebuilds that did not find the remembered sha256
    pyz_size: int = 0
    redone: int = 0  # builds timed again because pack rebuilt its runtime zip
    busy: list[float] = field(default_factory=list)  # CPU busy share before each repetition


def _runtime_zips() -> set[str]:
    """The runtime zips in pack's cache; a new one means a build made it, work no row measures."""
    return {p.name for p in (cache_dir() / "build").glob("runtime-*.zip")}


def _build(ctx: Context, gguf: Path) -> tuple[Run, int]:
    """One `pack build` into the scratch directory; the output is removed afterwards."""
    out = ctx.work / "out.pyz"
    result = run([*ctx.pack, "build", str(gguf), "-o", str(out)], ctx.env)
    size = out.stat().st_size
    out.unlink()
    return result, size


def _memo() -> Path:
    """Where pack remembers the sha256 of the GGUFs it built (packager.memo)."""
    return cache_dir() / "build" / "sources.json"


def _memo_stamp() -> int:
    try:
        return _memo().stat().st_mtime_ns
    except OSError:
        return 0


def _first_build(ctx: Context, gguf: Path, samples: Samples) -> None:
    """A build of a GGUF pack has not seen: it hashes every byte."""
    _memo().unlink(missing_ok=True)
    samples.builds.append(_warm_build(ctx, gguf, samples))


def _rebuild(ctx: Context, gguf: Path, samples: Samples) -> None:
    """A build of the same, unchanged GGUF: pack reuses the sha256 it remembered."""
    stamp = _memo_stamp()
    samples.again.append(_warm_build(ctx, gguf, samples))
    if _memo_stamp() != stamp:  # it hashed and wrote the memo: not what this row measures
        samples.missed += 1


def _warm_build(ctx: Context, gguf: Path, samples: Samples) -> Run:
    """A build that found the runtime zip cached; an edit to runtime/ mid-run voids a sample."""
    for _ in range(MAX_TRIES):
        before = _runtime_zips()
        result, samples.pyz_size = _build(ctx, gguf)
        if _runtime_zips() <= before:
            break
        samples.redone += 1
        ctx.log("  (pack rebuilt its runtime zip, as runtime/ changed: timing that build again)")
    return result


def _cp(ctx: Context, gguf: Path) -> Run:
    out = ctx.work / "out.gguf"
    result = run(["cp", str(gguf), str(out)], ctx.env)
    out.unlink()
    return result


def _time_pair(ctx: Context, gguf: Path) -> Samples:
    """`ctx.reps` runs of each, interleaved so that drift on a noisy machine hits both alike."""
    warm_page_cache(gguf)
    samples = Samples()
    _build(ctx, gguf)  # untimed: pack learns this GGUF's sha256 for the first rebuild
    orders = [("build", "again", "cp"), ("cp", "build", "again"), ("again", "cp", "build")]
    for rep in range(ctx.reps):
        samples.busy.append(ctx.quiet())
        for which in orders[rep % len(orders)]:
            # Earlier outputs' dirty pages go to disk now, not during the next timed run.
            os.sync()
            if which == "build":
                _first_build(ctx, gguf, samples)
            elif which == "again":
                _rebuild(ctx, gguf, samples)
            else:
                samples.copies.append(_cp(ctx, gguf))
        ctx.log(
            f"  rep {rep + 1}/{ctx.reps}: pack build {samples.builds[-1].wall_s:.3f} s, "
            f"again {samples.again[-1].wall_s:.3f} s, cp {samples.copies[-1].wall_s:.3f} s"
        )
    if samples.missed:
        ctx.log(f"  warning: {samples.missed} rebuild(s) hashed the GGUF again")
    return samples


def _synthetic_files(ctx: Context, sizes: list[int]) -> dict[int, Path]:
    cache = bench_cache()
    files: dict[int, Path] = {}
    for size in sizes:
        if not synthetic.path_for(cache, size).exists():
            ctx.log(f"writing a synthetic {synthetic.label(size)} GGUF under {cache} (once) ...")
        files[size] = synthetic.ensure(cache, size)
    return files


def _time_rows(gguf: Path, name: str, samples: Samples) -> list[Row]:
    extra = {
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "pyz_bytes": samples.pyz_size,
        "vocab_tokens": synthetic.N_VOCAB,
        "builds_redone_after_runtime_rebuild": samples.redone,
        "busy_before_rep": samples.busy,
    }
    key = name.replace(" ", "")
    kinds = [
        (f"build_time_{key}", "pack build", samples.builds, {}),
        (
            f"rebuild_time_{key}",
            "pack build again (sha256 remembered)",
            samples.again,
            {"rebuilds_that_hashed": samples.missed},
        ),
    ]
    return [
        Row(
            key=row_key,
            name=f"{label} vs cp, {name} GGUF",
            unit="s",
            ours=[r.wall_s for r in runs],
            peer_name="cp",
            peer=[r.wall_s for r in samples.copies],
            goal=TIME_GOAL,
            extra={**extra, **more},
        )
        for row_key, label, runs, more in kinds
    ]


def _rss_row(ctx: Context, gguf: Path, name: str, samples: Samples) -> Row:
    return Row(
        key="build_peak_rss",
        name=f"peak RSS of pack build, {name} GGUF",
        unit="bytes",
        ours=[float(r.max_rss_bytes or 0) for r in samples.builds],
        peer_name="cp",
        peer=[float(r.max_rss_bytes or 0) for r in samples.copies],
        goal=RSS_GOAL,
        extra={
            "gguf_bytes": gguf.stat().st_size,
            # What a do-nothing child reports: the footprint of spawn.py, the parent.
            "floor_bytes": run(["true"], ctx.env).max_rss_bytes,
        },
    )


def build_rows(ctx: Context, sizes: list[int]) -> list[Row]:
    """One time row per size, then the peak RSS row for the largest size."""
    files = _synthetic_files(ctx, sizes)
    # The first build of a session may make pack's cached runtime zip; no row pays for it.
    ctx.log("one untimed pack build to warm its runtime cache ...")
    _build(ctx, files[min(sizes)])
    rows: list[Row] = []
    samples = Samples()
    for size in sizes:
        name = synthetic.label(size)
        ctx.log(f"pack build vs cp, {name} GGUF ({ctx.reps} reps) ...")
        samples = _time_pair(ctx, files[size])
        rows += _time_rows(files[size], name, samples)
    largest = max(sizes)
    rows.append(_rss_row(ctx, files[largest], synthetic.label(largest), samples))
    return rows

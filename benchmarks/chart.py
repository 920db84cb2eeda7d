"""A PNG of the scaling rows: `pack build` and `cp` time against the GGUF's size."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from benchmarks.procs import median
from benchmarks.table import MB, Row


def build_scaling(rows: list[Row], path: Path) -> Optional[str]:
    """Write the chart to `path`; None when written, else why not (no matplotlib, no rows)."""
    points = sorted(
        (
            (float(r.extra["gguf_bytes"]), r)
            for r in rows
            if r.key.startswith("build_time_") and r.ours and r.peer
        ),
        key=lambda p: p[0],
    )
    if not points:
        return "no build rows to draw"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[dev]')"

    again = {
        r.key.removeprefix("rebuild_time_"): r for r in rows if r.key.startswith("rebuild_time_")
    }
    sizes = [size / MB for size, _ in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = [
        ("pack build", [r.ours for _, r in points], "o"),
        ("cp", [r.peer for _, r in points], "s"),
    ]
    keys = [r.key.removeprefix("build_time_") for _, r in points]
    if all(k in again and again[k].ours for k in keys):
        series.insert(
            1, ("pack build again (sha256 remembered)", [again[k].ours for k in keys], "^")
        )
    for label, samples, marker in series:
        mid = [median(s) for s in samples]
        low = [m - min(s) for m, s in zip(mid, samples)]
        high = [max(s) - m for m, s in zip(mid, samples)]
        ax.errorbar(sizes, mid, yerr=[low, high], marker=marker, capsize=4, label=label)
    for (_, row), x in zip(points, sizes):
        ratio = row.ratio
        if ratio is not None and row.ours_median is not None:
            ax.annotate(
                f"{ratio:.3g}x",
                (x, row.ours_median),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("GGUF size (MB)")
    ax.set_ylabel("wall time (s), median and range")
    ax.set_title("pack build vs cp of the same GGUF (ratio: pack build / cp)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None

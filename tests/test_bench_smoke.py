"""`python -m benchmarks --quick` runs end to end on a tiny real model and reports every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import selftest_model

REPO = Path(__file__).resolve().parent.parent
ROW_KEYS = [
    "build_time_4MB",
    "build_peak_rss",
    "start_warm",
    "start_first",
    "first_run_disk",
    "pyz_overhead",
]


def _isolated_env(tmp_path: Path) -> dict[str, str]:
    """Every cache the benchmark touches lies under tmp_path."""
    env = dict(os.environ)
    for name in ("XDG_CACHE_HOME", "SHIV_ROOT", "LLAMAPYZ_CPU_VARIANT"):
        env.pop(name, None)
    env["HOME"] = str(tmp_path / "home")
    env["LLAMAPYZ_CACHE"] = str(tmp_path / "cache")
    env["LLAMAPYZ_DEV_CACHE"] = str(tmp_path / "dev-cache")
    return env


@pytest.mark.slow
def test_quick_bench_reports_every_row(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    selftest_model.write(model)
    result = tmp_path / "r.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--model",
            str(model),
            "--prompt",
            "the quick brown fox",
            "--json",
            str(result),
        ],
        cwd=REPO,
        env=_isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr

    data = json.loads(result.read_text())
    rows = data["rows"]
    assert [r["key"] for r in rows] == ROW_KEYS
    for row in rows:
        ours = row["llamapyz"]
        assert ours["samples"] and all(s > 0 for s in ours["samples"]), row
        assert ours["median"] > 0, row
        assert isinstance(row["met"], bool), row
        if row["peer"]["samples"]:
            assert row["peer"]["median"] > 0, row
    assert data["machine"]["cpu_variant_chosen"]
    assert data["options"]["reps"] == 1

    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    assert any(line.startswith("llamapyz CPU variant: ") for line in lines)
    header = next(line for line in lines if line.startswith("row "))
    assert [cell.strip() for cell in header.split("|")] == [
        "row",
        "llamapyz",
        "peer",
        "ratio",
        "goal",
        "met?",
    ]
    for row in rows:
        assert any(line.startswith(row["name"] + " ") for line in lines), row["name"]

    # The synthetic GGUF stays in the dev cache; the scratch outputs are gone.
    bench = tmp_path / "dev-cache" / "bench"
    assert list(bench.glob("synthetic-*.gguf"))
    assert list((bench / "tmp").iterdir()) == []

"""`python -m benchmarks --quick` runs end to end on a tiny real model and reports every row.

The speed and server rows need llama.cpp's own llama-bench and llama-server, which
scripts/build-peers.sh builds in 10-20 minutes: where this machine has them built already,
the test runs those rows too; where not (a fresh CI machine), it checks that they are
skipped with a note saying how to build them, and --quick never starts that build.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from runtime.engine.devices import selftest_model

REPO = Path(__file__).resolve().parent.parent
ROW_KEYS = [
    "build_time_4MB",
    "rebuild_time_4MB",
    "build_peak_rss",
    "start_warm",
    "start_first",
    "gguf_check_first_start",
    "first_run_disk",
    "pyz_overhead",
    "pyz_overhead_x86_64",
    "start_warm_two_arches",
    "start_first_two_arches",
    "speed_pp512",
    "speed_tg128",
    "speed_arm64_qemu_tg",
    "server_1_client",
    "server_4_clients",
    "server_ollama_chat_stream",
    "vision_first_token",
    "vision_text_beside_images",
    "first_run_disk_image",
    "rpc_tg_1_workers",
]
PEER_ROWS = {"speed_pp512", "speed_tg128", "server_1_client", "server_4_clients"}
# Measured on llamapyz's side alone where the peers are not built: the rows' code still runs.
ONE_SIDED_ROWS = {"vision_first_token", "vision_text_beside_images"}
NOT_BUILT = "skipped: run scripts/build-peers.sh (or make bench) first"
ONE_SIDED = "llamapyz only: the peers are not built (scripts/build-peers.sh)"


def _built_peers() -> Optional[Path]:
    """This machine's build of llama-bench and llama-server, if scripts/build-peers.sh made one."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-peers.sh")],
        env={**os.environ, "LLAMAPYZ_PEERS_NO_BUILD": "1"},
        capture_output=True,
        text=True,
    )
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None


def _bench(
    args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks ARGS` in a process group of its own: past the timeout the whole
    group is killed, the servers it started with it (killing the benchmark alone left them
    serving)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the benchmark ran past {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
    peers = _built_peers()
    args = ["--quick", "--model", str(model), "--prompt", "the quick brown fox"]
    args += ["--json", str(result), *(["--peers", str(peers)] if peers else [])]
    done = _bench(args, _isolated_env(tmp_path), 260 if peers else 200)
    assert done.returncode == 0, done.stderr

    data = json.loads(result.read_text())
    rows = data["rows"]
    # The GPU rows: one skipped row on a machine without a GPU (lavapipe is none).
    gpu_keys = [r["key"] for r in rows[len(ROW_KEYS) :]]
    assert [r["key"] for r in rows[: len(ROW_KEYS)]] == ROW_KEYS
    assert gpu_keys == ["gpu"] or all(k.startswith("gpu_") for k in gpu_keys), gpu_keys
    for row in rows:
        if row["key"] == "gpu":
            assert row["skipped"].startswith("skipped: Vulkan: "), row
            assert row["met"] is None, row
            continue
        if row["key"] == "speed_arm64_qemu_tg":  # minutes under qemu: not in a smoke run
            assert row["skipped"] == "skipped: --quick (minutes under qemu)", row
            continue
        if row["key"] in PEER_ROWS and peers is None:
            # Not built in the isolated caches, and --quick must not build them.
            assert row["skipped"] == NOT_BUILT, row
            assert row["met"] is None and row["llamapyz"]["samples"] == [], row
            continue
        ours = row["llamapyz"]
        assert ours["samples"] and all(s > 0 for s in ours["samples"]), row
        assert ours["median"] > 0, row
        if row["key"] in ONE_SIDED_ROWS and peers is None:
            assert row["skipped"] == ONE_SIDED, row
            assert row["met"] is None and row["peer"]["samples"] == [], row
            continue
        assert row["skipped"] is None, row
        assert isinstance(row["met"], bool), row
        if row["peer"]["samples"]:
            assert row["peer"]["median"] > 0, row
    # The vision rows: the image's tokens were read, and its first start copied no projector.
    by_key = {row["key"]: row for row in rows}
    assert by_key["vision_first_token"]["extra"]["llamapyz_prompt_tokens"][0] > 16
    disk = by_key["first_run_disk_image"]["extra"]
    assert disk["projector_copies"] == [], disk
    assert any(name.endswith("/libmtmd.so") for name in disk["files_only_with_image"]), disk
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
    if peers is None:
        assert not (tmp_path / "dev-cache" / "peers").exists()  # no build was started
        assert sum(NOT_BUILT in line for line in lines) == len(PEER_ROWS)
    else:
        assert data["peers"]["variant"] == data["machine"]["cpu_variant"]
    # The chart of the build rows lies next to the JSON.
    pytest.importorskip("matplotlib")
    assert data["chart"] == str(result.with_suffix(".png"))
    assert result.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The synthetic GGUF stays in the dev cache; the scratch outputs are gone.
    bench = tmp_path / "dev-cache" / "bench"
    assert list(bench.glob("synthetic-*.gguf"))
    assert list((bench / "tmp").iterdir()) == []


@pytest.mark.slow
def test_gpu_rows_skip_lavapipe_with_one_line(tmp_path: Path) -> None:
    """lavapipe is the tests' GPU but not a GPU to measure: the GPU rows are one skipped line."""
    model = tmp_path / "tiny.gguf"
    selftest_model.write(model)
    result = tmp_path / "r.json"
    env = {**_isolated_env(tmp_path), "GGML_VK_VISIBLE_DEVICES": "0"}
    args = ["--quick", "--gpu-only", "--gpu-backends", "vulkan", "--model", str(model)]
    done = _bench([*args, "--json", str(result)], env, 120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(result.read_text())["rows"]
    assert [r["key"] for r in rows] == ["gpu"]
    assert "Vulkan0 is llvmpipe" in rows[0]["skipped"], rows[0]
    assert "not a GPU" in rows[0]["skipped"], rows[0]
    assert sum("not a GPU" in line for line in done.stdout.splitlines()) == 1

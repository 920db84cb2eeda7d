"""Rows: generation with the model split over 1, 2 and 3 RPC workers on loopback (started
from a bare .pyz, as a user would), against the same engine run locally, interleaved."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.table import Goal, Row

SCRIPT = Path(__file__).resolve().parent / "rpc_speed.py"
TOKENS = 128
GOAL = 0.7  # the goal with two workers, where loopback round-trips dominate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    pyz: Path, threads: int, env: Optional[dict[str, str]]
) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(pyz), "--rpc-worker", str(port), "-t", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the RPC worker on port {port} did not start")
        time.sleep(0.05)


def _run(
    model: Path,
    threads: int,
    reps: int,
    endpoints: str,
    env: Optional[dict[str, str]],
    prompt: str,
) -> list[float]:
    cmd = [sys.executable, str(SCRIPT), str(model), str(threads), str(TOKENS), str(reps)]
    out = subprocess.run(
        cmd + [endpoints or "-", prompt],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=SCRIPT.parent,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"rpc_speed.py failed: {out.stderr.strip()[-300:]}")
    return [float(v) for v in json.loads(out.stdout)["samples"]]


def rpc_rows(
    model: Path,
    pyz: Path,
    threads: int,
    reps: int,
    counts: Optional[list[int]] = None,
    env: Optional[dict[str, str]] = None,
    prompt: str = "",
) -> list[Row]:
    """One row per worker count: split tok/s against local tok/s (any .pyz is a worker)."""
    rows = []
    for count in counts or [1, 2, 3]:
        workers = [_worker(pyz, threads, env) for _ in range(count)]
        try:
            endpoints = ",".join(f"127.0.0.1:{port}" for _, port in workers)
            ours: list[float] = []
            local: list[float] = []
            for _ in range(reps):  # interleaved, one repetition of each at a time
                ours += _run(model, threads, 1, endpoints, env, prompt)
                local += _run(model, threads, 1, "", env, prompt)
        finally:
            for proc, _ in workers:
                proc.terminate()
                proc.wait(timeout=30)
        rows.append(
            Row(
                key=f"rpc_tg_{count}_workers",
                name=f"generation split over {count} RPC worker{'s' if count > 1 else ''} (loopback), vs local",
                unit="tok/s",
                ours=ours,
                goal=Goal(">=", GOAL, True),
                peer_name="local",
                peer=local,
                extra={"workers": count, "tokens": TOKENS},
            )
        )
    return rows

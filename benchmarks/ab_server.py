"""`python -m benchmarks.ab_server OLD.pyz NEW.pyz`: one build's server against another's, on the
same machine in the same run — one client and four, /v1/completions, 128 tokens at temperature 0 —
taken in turns so both see the same load. Prints the median of the paired ratios NEW/OLD.

For a change that must not slow a plain request (the issue's "within noise of today's"): the
rows of `make bench` compare against llama-server, this compares against the file before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from benchmarks.engine_speed import GEN_PROMPT
from benchmarks.rows_server import CLIENTS, Server, concurrent, free_port


def _server(name: str, pyz: Path) -> Server:
    cmd = [str(pyz), "--server", "--nobrowser", "--temp", "0", "-c", "8192", "-np", str(CLIENTS)]
    port = free_port()
    server = Server(name, [*cmd, "--port", str(port)], None, dict(os.environ), port)
    server.start()
    server.wait_ready()
    return server


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_server", description=__doc__)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    servers = [_server("old", args.old), _server("new", args.new)]
    try:
        for s in servers:
            s.complete(GEN_PROMPT)  # warm: the first request pays for the deferred extraction
        ratios: dict[str, list[float]] = {"1 client": [], f"{CLIENTS} clients": []}
        for _ in range(args.reps):
            for row, n in (("1 client", 1), (f"{CLIENTS} clients", CLIENTS)):
                speeds = []
                for s in servers:
                    tokens, wall, _counts = concurrent(s, [GEN_PROMPT] * n)
                    speeds.append(tokens / wall)
                ratios[row].append(speeds[1] / speeds[0])
        for row, values in ratios.items():
            print(
                f"{row}: new/old tok/s {statistics.median(values):.3f} "
                f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} pairs)"
            )
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main(sys.argv[1:])

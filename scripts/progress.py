#!/usr/bin/env python3
"""Run a long build, its whole output in a log file, its progress on stderr.

    scripts/progress.py LABEL LOG -- COMMAND [ARG...]

Reads cmake's progress from the output (Ninja's `[12/345] Building ...`, Make's
`[ 45%] Building ...`): on a terminal one line rewritten in place (percentage, current
target, elapsed time), otherwise a line per 10 %; at the end the total time. When the
command fails, the last 40 lines of the log and its path. Exits with the command's status.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

NINJA = re.compile(r"^\[(\d+)/(\d+)\]\s+(.*)")
MAKE = re.compile(r"^\[\s*(\d+)%\]\s+(.*)")
TARGET = re.compile(r"(?:object|target|Linking \S+ \S+ \S+)\s+(\S+)")


def elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60}:{seconds % 60:02d}"


def parse(line: str) -> tuple[int, str] | None:
    """The percentage and what is being built, from one line of cmake's output."""
    if match := NINJA.match(line):
        done, total, what = int(match[1]), int(match[2]), match[3]
        percent = 100 * done // max(total, 1)
    elif match := MAKE.match(line):
        percent, what = int(match[1]), match[2]
    else:
        return None
    target = TARGET.search(what)
    name = target[1] if target else what
    return percent, Path(name).name[:60]


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: progress.py LABEL LOG -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    label, log_path, command = argv[0], Path(argv[1]), argv[3:]
    tty = sys.stderr.isatty()
    start = time.monotonic()
    reported = last = -10
    shown = False
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            step = parse(line.strip())
            if step is None:
                continue
            percent, what = step
            if percent < last:  # a nested build (Vulkan's shader generator) ended: a new count
                reported = -10
            last = percent
            if tty:
                sys.stderr.write(f"\r\033[K{label}: {percent:3d}% {elapsed(start)} {what}")
                sys.stderr.flush()
                shown = True
            elif percent >= reported + 10:
                reported = percent - percent % 10
                print(f"{label}: {percent:3d}% after {elapsed(start)}", file=sys.stderr)
        status = proc.wait()
    if shown:
        sys.stderr.write("\r\033[K")
    if status != 0:
        lines = log_path.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(lines), file=sys.stderr)
        print(
            f"{label}: failed after {elapsed(start)}; the full log is {log_path}", file=sys.stderr
        )
        return status
    print(f"{label}: built in {elapsed(start)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

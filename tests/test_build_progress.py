"""scripts/progress.py, the progress of the long native builds, on a real command's output."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PROGRESS = str(ROOT / "scripts" / "progress.py")


def ninja(tmp_path: Path, steps: int, status: int = 0) -> list[str]:
    """A command that prints Ninja's progress for `steps` objects, then exits with `status`."""
    tmp_path.mkdir(exist_ok=True)
    script = tmp_path / "build.sh"
    lines = "".join(
        f"echo '[{i}/{steps}] Building CXX object ggml/src/CMakeFiles/ggml-cpu.dir/op{i}.cpp.o'\n"
        for i in range(1, steps + 1)
    )
    script.write_text(
        f"echo 'configuring'\n{lines}echo 'the compiler said no' >&2\nexit {status}\n"
    )
    return ["sh", str(script)]


def test_a_line_per_ten_percent_off_a_terminal_and_the_whole_log_kept(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    done = subprocess.run(
        [sys.executable, PROGRESS, "engine", str(log), "--", *ninja(tmp_path, 40)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and done.stdout == ""
    said = done.stderr.splitlines()
    # The first step (1 of 40), then each tenth.
    assert [line.split("%")[0] for line in said[:-1]] == [
        f"engine: {p:3d}" for p in (2, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
    ]
    assert said[-1].startswith("engine: built in 0:0")
    text = log.read_text()
    assert text.startswith("configuring\n[1/40] Building") and "the compiler said no" in text


def test_a_nested_build_then_the_main_one_are_both_followed(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    inner, outer = ninja(tmp_path, 2), ninja(tmp_path / "outer", 10)
    script = tmp_path / "both.sh"
    script.write_text(f"{' '.join(inner)} && {' '.join(outer)}\n")
    done = subprocess.run(
        [sys.executable, PROGRESS, "vulkan", str(log), "--", "sh", str(script)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    percents = [int(line.split()[1].rstrip("%")) for line in done.stderr.splitlines()[:-1]]
    assert percents == [50, 100, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_a_failed_build_says_where_its_log_is_and_keeps_the_status(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    done = subprocess.run(
        [sys.executable, PROGRESS, "engine", str(log), "--", *ninja(tmp_path, 5, status=3)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    assert "the compiler said no" in done.stderr  # the log's tail
    assert done.stderr.splitlines()[-1].startswith("engine: failed after 0:0")
    assert done.stderr.splitlines()[-1].endswith(f"the full log is {log}")


def test_one_line_rewritten_in_place_on_a_terminal(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, PROGRESS, "engine", str(log), "--", *ninja(tmp_path, 4)],
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the pty's other end closed
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait() == 0
    shown = seen.decode()
    assert shown.count("\r\x1b[K") == 5  # four steps, then the line cleared
    assert "engine:  50% 0:00 op2.cpp.o" in shown
    assert "\n" not in shown.split("engine: built in")[0]

"""Running a child process and measuring it: wall time, time to first stdout byte, peak RSS."""

from __future__ import annotations

import os
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

READ_SIZE = 64 * 1024
SPAWN = Path(__file__).resolve().parent / "spawn.py"


class BenchError(Exception):
    """A measured command failed, or a benchmark cannot run here."""


@dataclass(frozen=True)
class Run:
    """One measured child process."""

    wall_s: float
    written_bytes: int  # what the kernel charged the child (and its reaped children) for writes
    max_rss_bytes: Optional[int] = None  # only from `run`, where a small parent spawns the child
    first_byte_s: Optional[float] = None
    stdout: bytes = b""


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def _tail(fh: IO[bytes], lines: int = 6) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace").strip().splitlines()
    return "\n".join(text[-lines:])


def _failed(cmd: Sequence[str], code: int, stderr: IO[bytes]) -> BenchError:
    return BenchError(f"{' '.join(cmd)} exited with {code}:\n{_tail(stderr)}")


def run(cmd: Sequence[str], env: Mapping[str, str]) -> Run:
    """Run `cmd` (stdout discarded) and measure its wall time and peak RSS, via spawn.py."""
    with tempfile.TemporaryFile() as stderr:
        done = subprocess.run(
            [sys.executable, "-S", "-I", str(SPAWN), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(env),
        )
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 4:
            raise _failed(cmd, done.returncode, stderr)
        wall, code, rss, written = float(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])
        if code != 0:
            raise _failed(cmd, code, stderr)
        return Run(wall, written, max_rss_bytes=rss)


def run_first_byte(cmd: Sequence[str], env: Mapping[str, str]) -> Run:
    """Run `cmd` to the end, timing from its start to the first byte it writes on stdout."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(env),
            bufsize=0,
        )
        assert proc.stdout is not None
        out = b""
        first: Optional[float] = None
        # Unbuffered reads: the first chunk arrives as soon as the child flushes it.
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            if first is None:
                first = time.perf_counter() - start
            out += chunk
        proc.stdout.close()
        # wait4 rather than Popen.wait: it hands back the child's resource usage too.
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise _failed(cmd, proc.returncode, stderr)
        if first is None:
            raise BenchError(f"{' '.join(cmd)} printed nothing on stdout:\n{_tail(stderr)}")
        # ru_oublock counts 512-byte blocks; it is zeroed for each new process, unlike maxrss.
        return Run(wall, int(ru.ru_oublock) * 512, first_byte_s=first, stdout=out)


def output(cmd: Sequence[str], env: Mapping[str, str]) -> str:
    """The stdout of a command that must succeed, as text."""
    done = subprocess.run(
        list(cmd), env=dict(env), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise BenchError(f"{' '.join(cmd)} exited with {done.returncode}:\n{tail}")
    return done.stdout


def warm_page_cache(path: Path) -> None:
    """Read a file once so that every timed run finds it in memory."""
    with path.open("rb", buffering=0) as fh:
        buf = bytearray(8 * 1024 * 1024)
        while fh.readinto(buf):
            pass


def tree_size(root: Path) -> int:
    """Bytes in all regular files under `root` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total

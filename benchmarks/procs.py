"""Running a child process and measuring it: wall time, time to first stdout byte, peak RSS."""

from __future__ import annotations

import os
import resource
import stat
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

READ_SIZE = 64 * 1024


class BenchError(Exception):
    """A measured command failed, or a benchmark cannot run here."""


@dataclass(frozen=True)
class Run:
    """One measured child process."""

    wall_s: float
    first_byte_s: Optional[float]
    max_rss_bytes: int
    written_bytes: int  # what the kernel charged the child (and its reaped children) for writing
    stdout: bytes


def median(samples: Sequence[float]) -> float:
    return float(statistics.median(samples))


def _tail(fh: IO[bytes], lines: int = 6) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace").strip().splitlines()
    return "\n".join(text[-lines:])


def _check(cmd: Sequence[str], status: int, stderr: IO[bytes]) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise BenchError(f"{' '.join(cmd)} exited with {code}:\n{_tail(stderr)}")


def _usage(ru: resource.struct_rusage) -> tuple[int, int]:
    # Linux reports ru_maxrss in KiB and ru_oublock in 512-byte blocks.
    return int(ru.ru_maxrss) * 1024, int(ru.ru_oublock) * 512


def run(
    cmd: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    *,
    first_byte: bool = False,
    cwd: Optional[Path] = None,
) -> Run:
    """Run `cmd` to the end; with `first_byte`, also time its first byte on stdout."""
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if first_byte else subprocess.DEVNULL,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            bufsize=0,
        )
        out = b""
        first: Optional[float] = None
        if proc.stdout is not None:
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
        # wait4 rather than Popen.wait: it hands back this one child's resource usage.
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        _check(cmd, status, stderr)
        if first_byte and first is None:
            raise BenchError(f"{' '.join(cmd)} printed nothing on stdout:\n{_tail(stderr)}")
        rss, written = _usage(ru)
        return Run(wall, first, rss, written, out)


def output(cmd: Sequence[str], env: Optional[Mapping[str, str]] = None) -> str:
    """The stdout of a command that must succeed, as text."""
    done = subprocess.run(list(cmd), env=dict(env) if env is not None else None,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
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

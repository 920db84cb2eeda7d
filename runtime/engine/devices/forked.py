"""A self-test in a fork of this process: no new interpreter to start, nothing to import again.
Safe only while the process has started no thread (`single_threaded`); a crash, a hang or an
exception in the child is its answer, never the parent's. Under qemu-user a fork is the only
way to stay emulated: a new process would run natively (x86-64) or not at all (arm64)."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from typing import Callable, Optional

from runtime.file.boot import boot_threads


def single_threaded() -> bool:
    """True when this process has no OS thread (OpenMP's included) beyond those it started
    with (`boot_threads`: an emulator's own, which qemu-user forks safely): then fork is safe."""
    try:
        return len(os.listdir("/proc/self/task")) <= boot_threads()
    except OSError:
        return False


def run_forked(work: Callable[[], int], timeout: int) -> tuple[str, Optional[int]]:
    """`work()` in a child, its stdout and stderr read here: (what it wrote, its exit code:
    `work()`'s result, negative for a signal, None when it did not answer in `timeout` s)."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            faulthandler.disable()  # a crash here is the answer, not a bug to report
            signal.alarm(timeout)
            code = work()
        except BaseException as exc:  # anything at all: the parent reads it as the reason
            os.write(2, f"\n{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return text, None if signum == signal.SIGALRM else -signum
    return text, os.WEXITSTATUS(status)

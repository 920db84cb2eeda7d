"""Waiting for a shared machine to go idle before each repetition, and noting how busy it was.

On two cores, one other busy process makes llama.cpp's threads wait on each other and stretches
a 0.3 s start to many seconds, for minutes at a time: more than a median of interleaved
samples can absorb. So each repetition starts only once the CPUs are idle, within a budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

SAMPLE_S = 0.25
POLL_S = 1.0


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies over all CPUs, from /proc/stat; steal time counts as busy."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return idle, sum(fields)


def busy(interval: float = SAMPLE_S) -> float:
    """The share of all CPUs that was busy over the next `interval` seconds."""
    try:
        idle0, total0 = _cpu_times()
        time.sleep(interval)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return 0.0  # no /proc/stat: nothing to wait for
    total = total1 - total0
    return 1.0 - (idle1 - idle0) / total if total > 0 else 0.0


@dataclass
class Gate:
    """Holds each repetition back until the machine is idle, spending at most `budget_s` in all."""

    threshold: float = 0.25  # one other busy core of two reads 0.5
    budget_s: float = 120.0  # in all, over the whole run
    waited_s: float = 0.0
    busy_starts: int = 0  # repetitions started busy, once the budget was spent

    def wait(self, log: Callable[[str], None]) -> float:
        """Wait for an idle machine; return the busy share measured last."""
        start = time.monotonic()
        share = busy()
        told = False
        while share > self.threshold and self.waited_s + (time.monotonic() - start) < self.budget_s:
            if not told:
                left = self.budget_s - self.waited_s
                log(f"  (other work keeps the CPUs {share:.0%} busy: waiting, {left:.0f} s left)")
                told = True
            time.sleep(POLL_S)
            share = busy()
        self.waited_s += time.monotonic() - start
        if share > self.threshold:
            self.busy_starts += 1
        return share

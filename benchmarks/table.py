"""A row of results (samples, medians, ratio, goal) and the table that prints them."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from benchmarks.procs import median

MB = 1_000_000
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
}
HEADER = ("row", "llamapyz", "peer", "ratio", "goal", "met?")


@dataclass(frozen=True)
class Goal:
    """`ratio <= 1.2` (llamapyz over peer), or an absolute bound such as `< 60 MB`.

    For a rate (tok/s) the ratio is still llamapyz over peer, so its goal reads `ratio >= 0.97`.
    """

    op: str
    value: float
    on_ratio: bool

    def met(self, ours: float, ratio: Optional[float]) -> bool:
        measured = ratio if self.on_ratio else ours
        return measured is not None and OPS[self.op](measured, self.value)

    def text(self, unit: str) -> str:
        if self.on_ratio:
            return f"ratio {self.op} {self.value:g}"
        return f"{self.op} {fmt(self.value, unit)}"


@dataclass
class Row:
    """One line of the table: llamapyz's samples, the peer's, and the goal they are held to."""

    key: str  # stable name for the JSON
    name: str
    unit: str  # "s", "bytes" or "tok/s"
    ours: list[float]
    goal: Goal
    peer_name: str = ""
    peer: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: Optional[str] = None  # why the row was not measured (its samples are empty)

    @property
    def ours_median(self) -> Optional[float]:
        return median(self.ours) if self.ours else None

    @property
    def peer_median(self) -> Optional[float]:
        return median(self.peer) if self.peer else None

    @property
    def ratio(self) -> Optional[float]:
        ours, peer = self.ours_median, self.peer_median
        return ours / peer if peer and ours is not None else None

    @property
    def paired_ratio(self) -> Optional[float]:
        """Median of per-repetition ratios: steadier than the ratio of medians under drift."""
        if not self.peer or len(self.peer) != len(self.ours):
            return None
        return median([a / b for a, b in zip(self.ours, self.peer) if b])

    @property
    def met(self) -> Optional[bool]:
        """None for a skipped row."""
        ours = self.ours_median
        return None if ours is None or self.skipped else self.goal.met(ours, self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "unit": self.unit,
            "llamapyz": {"samples": self.ours, "median": self.ours_median},
            "peer": {"name": self.peer_name, "samples": self.peer, "median": self.peer_median},
            "ratio": self.ratio,
            "paired_ratio_median": self.paired_ratio,
            "goal": {
                "op": self.goal.op,
                "value": self.goal.value,
                "on": "ratio" if self.goal.on_ratio else "llamapyz",
                "text": self.goal.text(self.unit),
            },
            "met": self.met,
            "skipped": self.skipped,
            "extra": self.extra,
        }

    def cells(self) -> tuple[str, ...]:
        ours = self.ours_median
        if ours is None:
            return (self.name, "-", "-", "-", self.goal.text(self.unit), self.skipped or "skipped")
        if self.skipped:  # measured on one side only: no ratio, no verdict
            return (
                self.name,
                fmt(ours, self.unit),
                "-",
                "-",
                self.goal.text(self.unit),
                self.skipped,
            )
        peer = self.peer_median
        peer_text = "-" if peer is None else fmt(peer, self.unit)
        if peer is not None and self.peer_name:
            peer_text = f"{self.peer_name} {peer_text}"
        # A ratio to the peer is shown only where the goal is one; otherwise it is context.
        ratio = self.ratio if self.goal.on_ratio else None
        return (
            self.name,
            fmt(ours, self.unit),
            peer_text,
            "-" if ratio is None else f"{ratio:.3g}x",
            self.goal.text(self.unit),
            "yes" if self.met else "NO",
        )


def fmt(value: float, unit: str) -> str:
    """Seconds and rates with three significant digits, sizes in MB (10^6 bytes)."""
    if unit == "bytes":
        mb = value / MB
        return f"{mb:.3g} MB" if mb < 1000 else f"{mb / 1000:.3g} GB"
    return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"


def render(rows: list[Row]) -> str:
    """Rows as an aligned text table."""
    lines = [HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    right = {1, 2, 3}

    def join(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([join(HEADER), rule, *(join(cells) for cells in lines[1:])])

"""The generation service: one worker thread owns the model and runs requests.

The HTTP layer only submits jobs and reads their events. Up to `slots` requests share each
forward pass (runtime.batch); the rest wait in arrival order, at most `max_waiting` of them.
A cancelled job — its client went away — stops at the next token and frees its slot.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


class Busy(Exception):
    """The queue of waiting requests is full."""


@dataclass
class Job:
    """One request's work: a prompt to complete, or a text to embed."""

    prompt: list[int]
    n_predict: int
    sampling: Any
    stops: tuple[str, ...] = ()
    embed_text: Optional[str] = None
    on_event: Callable[[str, Any], None] = lambda kind, value: None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Service:
    """Runs jobs on the model, in arrival order, on its own thread."""

    def __init__(self, model: Any, slots: int = 1, max_waiting: int = 64) -> None:
        self.model = model
        self.slots = slots
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._run, name="llamapyz-engine", daemon=True)
        self._thread.start()

    def status(self) -> dict[str, int]:
        """Slots in use, requests waiting, requests cancelled so far (for /health)."""
        s = getattr(self, "scheduler", None)
        return {
            "slots": self.slots,
            "busy": s.busy if s else 0,
            "waiting": self._jobs.qsize(),
            "cancelled": s.cancelled if s else 0,
        }

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._jobs.maxsize} requests are already waiting") from None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from runtime.batch import Scheduler

        scheduler = Scheduler(self.model, self.slots)
        self.scheduler = scheduler
        try:
            while True:
                # Wait only when nothing is running; otherwise take what has arrived.
                while scheduler.free:
                    try:
                        job = self._jobs.get(block=not scheduler.active)
                    except queue.Empty:
                        break
                    if job is None:
                        return
                    if not job.cancelled.is_set():
                        self._start(scheduler, job)
                if scheduler.active:
                    scheduler.step()
        finally:
            scheduler.close()

    def _start(self, scheduler: Any, job: Job) -> None:
        try:
            if job.embed_text is not None:
                job.on_event("embedding", self.model.embed(job.embed_text))
            else:
                scheduler.admit(job)
        except Exception as exc:  # reported to the one request it belongs to
            job.on_event("error", exc)

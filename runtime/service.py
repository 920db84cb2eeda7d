"""The generation service: one worker thread owns the model; requests wait their turn.

The HTTP layer only submits jobs and reads their events, so the way jobs are scheduled
(today one at a time in arrival order; later several sharing each forward pass) can change
without touching it. A cancelled job — its client went away — stops at the next token.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from runtime.stops import StopFilter


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

    def __init__(self, model: Any, max_waiting: int = 64) -> None:
        self.model = model
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue(maxsize=max_waiting)
        self._thread = threading.Thread(target=self._run, name="llamapyz-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._jobs.maxsize} requests are already waiting") from None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            try:
                if job.embed_text is not None:
                    job.on_event("embedding", self.model.embed(job.embed_text))
                else:
                    self._generate(job)
            except Exception as exc:  # reported to the one request it belongs to
                job.on_event("error", exc)

    def _generate(self, job: Job) -> None:
        stops = StopFilter(job.stops)
        finish = "stop"
        for piece in self.model.generate(job.prompt, job.n_predict, job.sampling):
            if job.cancelled.is_set():
                finish = "cancelled"
                break
            text = stops.feed(piece)
            if text:
                job.on_event("text", text)
            if stops.stopped:
                break
        else:
            finish = self.model.finish_reason
        tail = stops.flush()
        if tail:
            job.on_event("text", tail)
        job.on_event("done", {"finish_reason": finish, "completion_tokens": self.model.produced})

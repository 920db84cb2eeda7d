"""The generation service: one worker thread owns the model and runs requests.

The HTTP layer only submits jobs and reads their events. Up to `slots` requests share each
forward pass (runtime.serve.batch); the rest wait in arrival order, at most `max_waiting` of them.
A cancelled job — its client went away — stops at the next token and frees its slot.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Optional

from runtime.serve.jobs import Job


class Busy(Exception):
    """The queue of waiting requests is full."""


class Lost(Exception):
    """The engine stopped for good (an RPC worker was lost, say): nothing more can run."""


class Service:
    """Runs jobs on the model, in arrival order, on its own thread."""

    def __init__(
        self, model: Any, slots: int = 1, max_waiting: int = 64, drafters: Any = None
    ) -> None:
        self.model = model
        self.slots = slots
        self.drafters = (
            drafters  # makes each request's drafter (engine/decoding/speculate.py), or None
        )
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue(maxsize=max_waiting)
        self.lost: Optional[str] = None
        from runtime.engine import backend

        backend.on_fatal(self._on_fatal)
        self._thread = threading.Thread(target=self._run, name="llamapyz-engine", daemon=True)
        self._thread.start()

    def status(self) -> dict[str, Any]:
        """Slots in use, requests waiting, requests cancelled and images whose tokens a slot
        already held so far (for /health and /metrics)."""
        s = getattr(self, "scheduler", None)
        return {
            "lost": self.lost or "",
            "slots": self.slots,
            "busy": s.busy if s else 0,
            "waiting": self._jobs.qsize(),
            "cancelled": s.cancelled if s else 0,
            "image_prefix_hits": s.image_hits if s else 0,
        }

    def _on_fatal(self, message: str) -> bool:
        """llama.cpp is stopping on the engine's thread: fail every request, keep answering."""
        import sys

        self.lost = message
        sys.stderr.write(f"llamapyz: the engine stopped: {message}; requests now get 503\n")
        sys.stderr.flush()
        scheduler = getattr(self, "scheduler", None)
        jobs = [s.job for s in scheduler.slots if s.job is not None] if scheduler else []
        while True:
            try:
                waiting = self._jobs.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                jobs.append(waiting)
        for job in jobs:
            job.on_event("error", Lost(message))
        return True

    def submit(self, job: Job) -> None:
        if self.lost:
            raise Lost(self.lost)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise Busy(f"{self._jobs.maxsize} requests are already waiting") from None

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from runtime.serve.batch import Scheduler

        scheduler = Scheduler(self.model, self.slots, self.drafters)
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

"""/metrics: the server's counters in Prometheus' text format (prometheus-client writes it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.serve.jobs import Job
from runtime.serve.service import Service


class Metrics:
    """Requests, tokens and speed, counted as jobs finish; slots and queue read when scraped."""

    def __init__(self, service: Service, vision: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "llamapyz_requests", "Generation requests answered (a choice each).", registry=r
        )
        self.prompt_tokens = Counter(
            "llamapyz_prompt_tokens", "Prompt tokens of the answered requests.", registry=r
        )
        self.generated_tokens = Counter(
            "llamapyz_generated_tokens", "Tokens generated.", registry=r
        )
        self.drafted = Counter(
            "llamapyz_draft_tokens", "Draft tokens verified (speculative decoding).", registry=r
        )
        self.accepted = Counter(
            "llamapyz_draft_accepted_tokens", "Draft tokens the model agreed with.", registry=r
        )
        self.speed = Histogram(
            "llamapyz_tokens_per_second",
            "Generated tokens per second of each request, prompt included.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        busy = Gauge("llamapyz_slots_busy", "Slots generating now.", registry=r)
        busy.set_function(lambda: float(service.status()["busy"]))
        slots = Gauge("llamapyz_slots", "Slots (--parallel).", registry=r)
        slots.set(service.slots)
        waiting = Gauge("llamapyz_queue_length", "Requests waiting for a slot.", registry=r)
        waiting.set_function(lambda: float(service.status()["waiting"]))
        r.register(_Images(service, vision))

    def observe(self, job: Job, done: dict[str, Any], seconds: float) -> None:
        made = int(done.get("completion_tokens", 0))
        self.requests.inc()
        self.prompt_tokens.inc(len(job.prompt))
        self.generated_tokens.inc(made)
        spent = done.get("timings", {})
        self.drafted.inc(spent.get("draft_n", 0))
        self.accepted.inc(spent.get("draft_n_accepted", 0))
        if seconds > 0 and made:
            self.speed.observe(made / seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Images:
    """Images encoded and images reused, as the projector (engine/media/vision.py's `Vision`, its
    embeddings) and the scheduler count them (read when scraped)."""

    def __init__(self, service: Service, vision: Any) -> None:
        self.service = service
        self.vision = vision  # None: the model has no projector

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        prefix = int(self.service.status()["image_prefix_hits"])
        kept = self.vision.embeddings if self.vision is not None else None
        encoded, reused = (kept.encoded, kept.reused) if kept is not None else (0, 0)
        yield CounterMetricFamily(
            "llamapyz_images_encoded",
            "Images run through the projector's encoder.",
            value=encoded,
        )
        yield CounterMetricFamily(
            "llamapyz_image_cache_hits",
            "Images of a prompt not encoded again: their tokens held by the slot's sequence, "
            "or their embeddings by the in-memory cache of recent images.",
            value=prefix + reused,
        )
        yield CounterMetricFamily(
            "llamapyz_image_embedding_hits",
            "Of the image cache hits, those whose kept embeddings were decoded into a slot's "
            "sequence (another slot's image, or one the slot no longer held).",
            value=reused,
        )

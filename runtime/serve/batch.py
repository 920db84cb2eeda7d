"""Continuous batching: the next token of every active request goes into one llama_batch.

Each request holds a slot (a llama.cpp sequence id, its own sampler chain, stop strings and
limits); prompts are decoded in chunks alongside other requests' generated tokens, the way
llama-server's slots work. A slot keeps the tokens its sequence holds, so a follow-up that
shares a prefix with an earlier request (a chat's next turn) skips re-reading it.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any, Optional

from runtime.chat.stops import StopFilter
from runtime.engine import logprobs
from runtime.engine.model import EngineError
from runtime.serve.jobs import Job


@dataclass
class Slot:
    seq: int
    job: Optional[Job] = None
    sampler: Any = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    cached: list[int] = field(default_factory=list)  # tokens this sequence holds
    last: Optional[int] = None  # sampled, not decoded yet
    produced: int = 0
    decoder: Any = None
    stops: Optional[StopFilter] = None


class Scheduler:
    """Runs jobs on `model` (an engine.Model made with n_seq_max >= slots), several at once."""

    def __init__(self, model: Any, slots: int) -> None:
        self.model = model
        self.C = model._C
        self.slots = [Slot(seq=i) for i in range(slots)]
        self.capacity = max(model.n_batch, slots)
        self.batch = self.C.llama_batch_init(self.capacity, 0, 1)
        self.cancelled = 0  # requests stopped because their client went away

    @property
    def active(self) -> bool:
        return any(s.job is not None for s in self.slots)

    @property
    def free(self) -> bool:
        return any(s.job is None for s in self.slots)

    def admit(self, job: Job) -> None:
        """Give `job` the free slot whose sequence shares the longest prefix with its prompt."""
        C = self.C

        def shared(slot: Slot) -> int:
            n = 0
            for a, b in zip(slot.cached, job.prompt):
                if a != b:
                    break
                n += 1
            return min(n, len(job.prompt) - 1)  # the last prompt token is decoded for its logits

        slot = max((s for s in self.slots if s.job is None), key=shared)
        keep = shared(slot)
        C.llama_memory_seq_rm(C.llama_get_memory(self.model._ctx), slot.seq, keep, -1)
        slot.cached = slot.cached[:keep]
        slot.pending = list(job.prompt[keep:])
        slot.job = job
        slot.sampler = self.model._sampler(job.sampling)
        slot.last = None
        slot.produced = 0
        slot.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        slot.stops = StopFilter(job.stops)

    @property
    def busy(self) -> int:
        return sum(s.job is not None for s in self.slots)

    def _finish(self, slot: Slot, reason: str, error: Optional[Exception] = None) -> None:
        job = slot.job
        self.cancelled += reason == "cancelled"
        assert job is not None and slot.stops is not None
        if error is not None:
            job.on_event("error", error)
        else:
            tail = slot.stops.flush() + slot.decoder.decode(b"", final=True)
            if tail:
                job.emit(tail)
            job.on_event("done", {"finish_reason": reason, "completion_tokens": slot.produced})
        if slot.sampler is not None:
            self.C.llama_sampler_free(slot.sampler)
        slot.job, slot.sampler, slot.last, slot.pending = None, None, None, []

    def step(self) -> None:
        """Decode one batch: a token for each generating slot, prompt chunks for the rest."""
        C, batch = self.C, self.batch
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")
        rows: list[tuple[Slot, list[int], bool]] = []  # slot, tokens, wants logits
        room = self.capacity
        for slot in self.slots:
            if slot.job is not None and slot.last is not None and room:
                rows.append((slot, [slot.last], True))
                room -= 1
        for slot in self.slots:
            if slot.job is not None and slot.pending and room:
                chunk = slot.pending[:room]
                rows.append((slot, chunk, len(chunk) == len(slot.pending)))
                room -= len(chunk)
        if not rows:
            return
        n = 0
        sample_at: list[tuple[Slot, int]] = []
        for slot, tokens, wants in rows:
            start = len(slot.cached)
            for i, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq
                last = i == len(tokens) - 1
                batch.logits[n] = 1 if wants and last else 0
                if wants and last:
                    sample_at.append((slot, n))
                n += 1
        batch.n_tokens = n
        rc = C.llama_decode(self.model._ctx, batch)
        if rc != 0:
            self._overflow(rc, rows)
            return
        for slot, tokens, _ in rows:
            slot.cached += tokens
            if slot.last is not None and tokens == [slot.last]:
                slot.last = None
            else:
                del slot.pending[: len(tokens)]
        for slot, index in sample_at:
            self._sample(slot, index)

    def _sample(self, slot: Slot, index: int) -> None:
        C, job = self.C, slot.job
        assert job is not None and slot.stops is not None
        token = int(C.llama_sampler_sample(slot.sampler, self.model._ctx, index))
        if C.llama_vocab_is_eog(self.model._vocab, token):
            self._finish(slot, "stop")
            return
        slot.produced += 1
        if job.logprobs is not None:
            chosen, top = logprobs.at(self.model, index, token, job.logprobs)
            job.token_logprobs.append((token, chosen, top))
        text = slot.stops.feed(slot.decoder.decode(self.model.piece(token)))
        if text:
            job.emit(text)
        if slot.stops.stopped:
            self._finish(slot, "stop")
        elif 0 <= job.n_predict <= slot.produced or len(slot.cached) + 1 >= self.model.n_ctx:
            self._finish(slot, "length")
        else:
            slot.last = token

    def _overflow(self, rc: int, rows: list[tuple[Slot, list[int], bool]]) -> None:
        """The shared context is full (rc 1): end the longest request so the others go on."""
        busy = [slot for slot, _, _ in rows]
        if rc != 1 or len(busy) == 0:
            for slot in busy:
                self._finish(slot, "error", EngineError(f"llama.cpp failed to decode (code {rc})"))
            return
        longest = max(busy, key=lambda s: len(s.cached) + len(s.pending))
        self.C.llama_memory_seq_rm(self.C.llama_get_memory(self.model._ctx), longest.seq, -1, -1)
        longest.cached = []
        self._finish(longest, "length")

    def close(self) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._finish(slot, "cancelled")
        self.C.llama_batch_free(self.batch)

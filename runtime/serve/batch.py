"""Continuous batching: the next token of every active request goes into one llama_batch.

Each request holds a slot (a llama.cpp sequence id, its own sampler chain, stop strings and
limits); prompts are decoded in chunks alongside other requests' generated tokens, the way
llama-server's slots work. A slot keeps the tokens its sequence holds, so a follow-up that
shares a prefix with an earlier request (a chat's next turn) skips re-reading it.

With speculation, a generating slot's row is [last token, *draft] with logits on every
position; the slot's own sampler then keeps the draft while it agrees
(engine/decoding/speculate.py's rule) and the rejected positions leave the sequence again, so
`cached` stays what it holds.

A prompt with images (engine/media/vision.py's `Prompt`: an image's tokens are stand-ins keyed by
its hash) is read a text run at a time in the shared batch, at the prompt's positions; a slot
whose pending tokens begin with an image decodes it out of band (`vision.decode_image`, its
own batches), one image per step, so the other slots keep generating between images. Prefix
reuse keeps whole images only (`Prompt.keep`): a chat that resends an image decodes it once;
an image another slot saw recently skips the encoder (engine/media/embeddings.py).
Such a slot does not speculate (its drafter would propose the stand-ins).
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from runtime.chat.stops import StopFilter
from runtime.engine import settings
from runtime.engine.decoding import logprobs
from runtime.engine.decoding.model import EngineError
from runtime.engine.decoding.speculate import Drafter
from runtime.engine.media import vision
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
    drafter: Optional[Drafter] = None
    unsent: str = ""  # text of this step's tokens, sent together once the step is read
    drafted: int = 0  # draft tokens verified for this job
    accepted: int = 0  # of them, those the model agreed with
    drafts: int = 0  # drafts verified (steps with a draft)
    prompt_n: int = 0  # prompt tokens decoded (those after the reused prefix)
    started: float = 0.0  # when the job took the slot (perf_counter)
    read: float = 0.0  # when its prompt was read (0.0: not yet)


@dataclass
class Row:
    """One slot's tokens in a batch: a prompt chunk, or a generating slot's [last, *draft]."""

    slot: Slot
    tokens: list[int]
    generating: bool
    logits: int  # the trailing positions whose logits are read (0 for a prompt's inner chunk)


class Scheduler:
    """Runs jobs on `model` (an engine.Model made with n_seq_max >= slots), several at once;
    `drafters` makes each job's drafter for its sequence (None: no speculation)."""

    def __init__(
        self, model: Any, slots: int, drafters: Optional[Callable[[int], Drafter]] = None
    ) -> None:
        self.model = model
        self.C = model._C
        self.drafters = drafters
        self.slots = [Slot(seq=i) for i in range(slots)]
        self.capacity = max(model.n_batch, slots)
        self.batch = self.C.llama_batch_init(self.capacity, 0, 1)
        self.cancelled = 0  # requests stopped because their client went away
        self.image_hits = 0  # images a prompt had whose tokens a sequence already held

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
        prompt = job.prompt
        keep = shared(slot)
        if isinstance(prompt, vision.Prompt):  # no half an image is kept
            keep = prompt.keep(keep)
            self.image_hits += sum(s.image and s.start < keep for s in prompt.spans)
        C.llama_memory_seq_rm(C.llama_get_memory(self.model._ctx), slot.seq, _pos(prompt, keep), -1)
        slot.cached = slot.cached[:keep]
        slot.pending = list(job.prompt[keep:])
        slot.job = job
        slot.sampler = self.model._sampler(job.sampling)
        slot.last = None
        slot.produced = 0
        slot.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        slot.stops = StopFilter(job.stops)
        slot.drafted = slot.accepted = slot.drafts = 0
        slot.prompt_n, slot.started, slot.read = len(slot.pending), time.perf_counter(), 0.0
        drafters = None if isinstance(prompt, vision.Prompt) else self.drafters
        slot.drafter = drafters(slot.seq) if drafters is not None else None
        if slot.drafter is not None:
            slot.drafter.begin(job.prompt)

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
            tail = slot.unsent + slot.stops.flush() + slot.decoder.decode(b"", final=True)
            if tail:
                job.emit(tail)
            job.on_event(
                "done",
                {
                    "finish_reason": reason,
                    "completion_tokens": slot.produced,
                    "timings": self._timings(slot),
                },
            )
        if slot.sampler is not None:
            self.C.llama_sampler_free(slot.sampler)
        slot.job, slot.sampler, slot.last, slot.pending = None, None, None, []
        slot.drafter, slot.unsent = None, ""

    def _timings(self, slot: Slot) -> dict[str, Any]:
        """The raw parts of llama-server's `timings` (serve/replies.py completes them)."""
        now = time.perf_counter()
        read = slot.read or now
        spent: dict[str, Any] = {
            "prompt_n": slot.prompt_n,
            "prompt_ms": 1000.0 * (read - slot.started),
            "predicted_n": slot.produced,
            "predicted_ms": 1000.0 * (now - read),
        }
        if slot.drafter is not None:
            spent.update(
                draft_n=slot.drafted, draft_n_accepted=slot.accepted, draft_steps=slot.drafts
            )
        return spent

    def step(self) -> None:
        """Decode one batch: the next tokens of each generating slot, prompt chunks for the rest."""
        C, batch = self.C, self.batch
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")
        self._decode_image()
        rows: list[Row] = []
        room = self.capacity
        generating = [s for s in self.slots if s.job is not None and s.last is not None]
        reading = [s for s in self.slots if s.job is not None and s.last is None and s.pending]
        g = len(generating) + len(reading)  # the rows sharing this step
        # Alone, a slot drafts as long as it likes (and its drafter times the step); beside
        # others, generating or reading a prompt, the drafts of all fill the generating rows
        # up to settings.SPEC_BUSY_TOKENS at most, where a CPU's batch is still cheap per
        # token (past it, a token costs almost a step of its own), and nothing is timed.
        spare = room if g <= 1 else max(0, settings.SPEC_BUSY_TOKENS - g)
        for slot in generating:
            if not room:
                break
            assert slot.last is not None
            draft = self._draft(slot, g, min(room - 1, spare)) if spare > 0 else []
            spare -= len(draft)
            tokens = [slot.last, *draft]
            rows.append(Row(slot, tokens, True, len(tokens)))
            room -= len(tokens)
        for slot in self.slots:
            if slot.job is not None and slot.pending and room:
                chunk = slot.pending[: min(room, self._text_left(slot))]
                if not chunk:
                    continue  # an image is next: decoded out of band in a later step
                rows.append(Row(slot, chunk, False, int(len(chunk) == len(slot.pending))))
                room -= len(chunk)
        if not rows:
            return
        n = 0
        verify: list[tuple[Row, int]] = []  # a row whose logits are read, at its first index
        for row in rows:
            start = _pos(row.slot.job.prompt if row.slot.job else [], len(row.slot.cached))
            first = len(row.tokens) - row.logits
            for i, token in enumerate(row.tokens):
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = row.slot.seq
                batch.logits[n] = int(i >= first)
                if i == first:
                    verify.append((row, n))
                n += 1
        batch.n_tokens = n
        rc = C.llama_decode(self.model._ctx, batch)
        if rc != 0:
            self._overflow(rc, [row.slot for row in rows])
            return
        for row in rows:
            row.slot.cached += row.tokens
            if row.generating:
                row.slot.last = None
            else:
                del row.slot.pending[: len(row.tokens)]
        for row, index in verify:
            self._verify(row.slot, index, row.tokens[1:] if row.generating else [])

    def _text_left(self, slot: Slot) -> int:
        """How many of the slot's pending tokens are text before its next image."""
        prompt = slot.job.prompt if slot.job is not None else []
        if not isinstance(prompt, vision.Prompt):
            return len(slot.pending)
        at = len(slot.cached)
        return prompt.text_until(at) - at if at < len(prompt) else len(slot.pending)

    def _decode_image(self) -> None:
        """Decode, out of band, the image that the first slot waiting on one has next."""
        for slot in self.slots:
            prompt = slot.job.prompt if slot.job is not None else []
            if not slot.pending or not isinstance(prompt, vision.Prompt):
                continue
            try:
                n = vision.decode_image(self.model, prompt, len(slot.cached), slot.seq)
            except EngineError as exc:
                memory = self.C.llama_get_memory(self.model._ctx)
                self.C.llama_memory_seq_rm(memory, slot.seq, -1, -1)
                slot.cached = []
                self._finish(slot, "error", exc)
                return
            if not n:
                continue
            slot.cached += slot.pending[:n]
            del slot.pending[:n]
            if not slot.pending:  # an image gives no logits (serve/media.py refuses these)
                self._finish(slot, "error", EngineError("the prompt ends with an image"))
            return

    def _draft(self, slot: Slot, generating: int, room: int) -> list[int]:
        """The draft to verify after `slot.last`: within the room left in the batch, the
        context and the job's token limit (the last draft token's logits give one more)."""
        job = slot.job
        if slot.drafter is None or job is None:
            return []
        limit = min(room, self.model.n_ctx - 2 - len(slot.cached))
        if job.n_predict >= 0:
            limit = min(limit, job.n_predict - slot.produced - 1)
        if limit <= 0:
            return []
        draft = slot.drafter.propose(limit, generating)[:limit]
        slot.drafted += len(draft)
        slot.drafts += bool(draft)
        return draft

    def _verify(self, slot: Slot, index: int, draft: list[int]) -> None:
        """Sample from `index` on: keep each draft token the sampler agrees with, emit every
        sampled token, and drop the rejected draft tokens from the sequence again."""
        C = self.C
        held = len(slot.cached)  # positions the sequence holds now, the draft's included
        slot.read = slot.read or time.perf_counter()
        del slot.cached[held - len(draft) :]
        drafter, kept = slot.drafter, 0
        for i in range(len(draft) + 1):
            token = int(C.llama_sampler_sample(slot.sampler, self.model._ctx, index + i))
            agreed = i < len(draft) and token == draft[i]
            slot.accepted += agreed
            if not self._take(slot, token, index + i):
                break
            if not agreed:
                slot.last = token  # decoded in the next step
                break
            slot.cached.append(token)
            kept += 1
        if draft and drafter is not None:
            drafter.accepted(kept)
        if slot.job is not None and slot.unsent:
            slot.job.emit(slot.unsent)
            slot.unsent = ""
        if len(slot.cached) < held:
            memory = C.llama_get_memory(self.model._ctx)
            if not C.llama_memory_seq_rm(memory, slot.seq, len(slot.cached), -1):
                C.llama_memory_seq_rm(memory, slot.seq, -1, -1)
                slot.cached = []
                if slot.job is not None:
                    message = "llama.cpp could not drop the rejected draft tokens"
                    self._finish(slot, "error", EngineError(message))

    def _take(self, slot: Slot, token: int, index: int) -> bool:
        """Emit `token`, sampled at batch `index`; False once the job has finished."""
        job = slot.job
        assert job is not None and slot.stops is not None
        if self.C.llama_vocab_is_eog(self.model._vocab, token):
            self._finish(slot, "stop")
            return False
        slot.produced += 1
        if slot.drafter is not None:
            slot.drafter.push(token)
        if job.logprobs is not None:
            chosen, top = logprobs.at(self.model, index, token, job.logprobs)
            job.token_logprobs.append((token, chosen, top))
        slot.unsent += slot.stops.feed(slot.decoder.decode(self.model.piece(token)))
        if slot.stops.stopped:
            self._finish(slot, "stop")
        elif 0 <= job.n_predict <= slot.produced or len(slot.cached) + 1 >= self.model.n_ctx:
            self._finish(slot, "length")
        else:
            return True
        return False

    def _overflow(self, rc: int, busy: list[Slot]) -> None:
        """The shared context is full (rc 1): end the longest request so the others go on."""
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


def _pos(prompt: list[int], index: int) -> int:
    """The position of token `index` of a sequence that holds `prompt` and then what was
    generated after it (an image may take fewer positions than tokens: M-RoPE)."""
    if not isinstance(prompt, vision.Prompt):
        return index
    if index < len(prompt):
        return prompt.pos_at(index)
    return prompt.pos_at(len(prompt)) + index - len(prompt)

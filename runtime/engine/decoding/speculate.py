"""Speculative decoding for one sequence: a drafter guesses, one batch verifies.

Each step decodes [last token, *draft] in one llama_decode with logits on every position,
then samples with the request's own chain at each position and keeps the draft while the
sample equals it (llama.cpp's common_sampler_sample_and_accept_n rule): the first sample
that differs is the next token itself. The rejected positions leave the memory again, so
the model's token list stays equal to what its context holds (chat reuses that prefix).
The sampler sees exactly the tokens a plain run would, one sample per emitted token, so
the same seed gives the same text; only a near-tie that a batched kernel rounds the other
way can differ.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from runtime.engine import settings
from runtime.engine.backend import EngineError

# llama-server's names for its n-gram modes; they all mean prompt lookup here.
NGRAM_NAMES = ("ngram", "ngram-simple", "ngram-mod", "ngram-map-k", "ngram-map-k4v", "ngram-cache")
DRAFT_NAMES = ("draft", "draft-simple")  # the draft model alone
SPEC_TYPES = ("auto", "none", *NGRAM_NAMES, *DRAFT_NAMES)


class Drafter(Protocol):
    """What guesses the next tokens of one sequence: hear the text so far and each token
    emitted after it, propose a draft, then hear how much of it was kept. `evidence()` says,
    before a draft is asked for, how much backs it (prompt lookup: the tokens its match spans;
    0: no such measure, a draft model's) or None: there is nothing to draft from now."""

    def begin(self, tokens: Sequence[int]) -> None: ...

    def push(self, token: int) -> None: ...

    def evidence(self) -> Optional[int]: ...

    def propose(self, n_max: int, generating: int = 1) -> list[int]: ...

    def accepted(self, n: int) -> None: ...


class NgramDrafter:
    """Prompt lookup: the tokens that followed the latest earlier copy of the text's tail.

    The draft starts short, grows while it is kept whole, shrinks after a miss, and after
    several drafts in a row that were not kept at all, drafting pauses for a while (longer
    each time), so free-form text costs little more than plain decoding. While other
    sequences generate in the same batch, each extra token costs nearly as much as it can
    win, so a sequence drafts only while its recent acceptance rate pays for it.
    """

    def __init__(
        self,
        n_max: int = settings.SPEC_DRAFT_N_MAX,
        n_min: int = settings.SPEC_DRAFT_N_MIN,
        pauses: bool = True,
    ) -> None:
        self.n_max = max(1, n_max)
        self.n_min = n_min
        # False: alone in a batch, a policy above it (engine/decoding/pace.py) decides when to
        # draft and how much; this drafter's own length and pauses rule only a busy batch
        self.pauses = pauses
        self._busy = False  # the last draft was proposed beside other generating sequences
        self.length = min(settings.SPEC_DRAFT_START, self.n_max)
        self.rate = 1.0  # recent share of drafted tokens kept (a moving average)
        self.tokens: list[int] = []
        # n-gram -> the latest position it starts at that a token follows
        self._seen: dict[tuple[int, ...], int] = {}
        self._last = 0  # the length of the last draft proposed
        self._misses = 0  # drafts in a row of which nothing was kept
        self._pause = 0  # steps left without drafting
        self._pauses = 0  # pauses so far (each is longer)

    def begin(self, tokens: Sequence[int]) -> None:
        self.tokens, self._seen = [], {}
        for token in tokens:
            self.push(token)

    def push(self, token: int) -> None:
        tokens, end = self.tokens, len(self.tokens)
        for n in range(settings.SPEC_NGRAM_MIN, min(settings.SPEC_NGRAM_MAX, end) + 1):
            self._seen[tuple(tokens[end - n :])] = end - n
        tokens.append(token)

    def lookup(self, want: int) -> list[int]:
        """Up to `want` tokens that followed the latest earlier occurrence of the longest
        tail n-gram (settings.SPEC_NGRAM_MAX down to SPEC_NGRAM_MIN tokens); where they reach
        the end of the text, the text repeats itself (a loop's period is where it began)."""
        found = self._match()
        if not found:
            return []
        draft = self.tokens[found[0] : found[0] + want]
        period = len(self.tokens) - found[0]
        while len(draft) < want:
            draft.append(draft[len(draft) - period])
        return draft

    def evidence(self) -> Optional[int]:
        """How many tokens of the text's tail equal those before the draft's source (up to
        settings.SPEC_EVIDENCE_MAX); None where the tail was not seen before."""
        found = self._match()
        return found[1] if found else None

    def _match(self) -> Optional[tuple[int, int]]:
        """Where the tokens after the tail's latest earlier match begin, and how long that
        match runs backwards (the n-gram, then as far as the two agree)."""
        tokens, size = self.tokens, len(self.tokens)
        for n in range(min(settings.SPEC_NGRAM_MAX, size), settings.SPEC_NGRAM_MIN - 1, -1):
            start = self._seen.get(tuple(tokens[size - n :]))
            if start is not None:
                length, cap = n, min(settings.SPEC_EVIDENCE_MAX, start + n)
                while length < cap and tokens[start + n - 1 - length] == tokens[size - 1 - length]:
                    length += 1
                return start + n, length
        return None

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        self._last, self._busy = 0, generating > 1
        if self._pause > 0:
            self._pause -= 1
            return []
        if generating > 1 and self.rate < generating / (generating + settings.SPEC_STEP_COST):
            self.rate += (1.0 - self.rate) * settings.SPEC_RATE_RECOVERY  # try again later
            return []
        alone = generating == 1 and not self.pauses  # the policy above chose n_max
        want = min(self.n_max, n_max) if alone else min(self.length, self.n_max, n_max)
        if want <= 0:
            return []
        draft = self.lookup(want)
        if len(draft) < max(1, self.n_min):
            return []
        self._last = len(draft)
        return draft

    def accepted(self, n: int) -> None:
        if self._last == 0:
            return
        self.rate += (n / self._last - self.rate) * settings.SPEC_RATE_WEIGHT
        if n >= self._last:
            self.length = min(self.n_max, self.length * 2)
            self._misses = 0
        elif n == 0:
            self.length = max(1, self.length // 2)
            self._misses += 1
            if (self.pauses or self._busy) and self._misses >= settings.SPEC_MISSES_BEFORE_PAUSE:
                self._pauses += 1
                self._pause = settings.SPEC_PAUSE * self._pauses
                self._misses = 0
        else:
            self.length = max(1, n + 1)
            self._misses = 0


@dataclass
class Speculation:
    """How a Model drafts in generate(), and what the last generate() drafted and kept."""

    drafter: Drafter
    name: str = "ngram"
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    said: list[str] = field(default_factory=list)

    def summary(self, images: bool = False) -> str:
        if images:  # Model.generate reads a prompt with images without drafts
            return "speculation: none (a prompt with images does not speculate)"
        rate = f"{100.0 * self.accepted / self.drafted:.0f}%" if self.drafted else "n/a"
        return (
            f"speculation ({self.name}): drafted {self.drafted} tokens, accepted "
            f"{self.accepted} ({rate}) in {self.steps} verify steps"
        )


def chosen(spec_type: str, has_draft: bool) -> str:
    """What --spec-type means for a run: "none", "ngram", "draft" or "ngram+draft" (n-gram
    drafts where the text has them, the draft model's elsewhere)."""
    name = spec_type.lower()
    if name == "auto":
        return "ngram+draft" if has_draft else "ngram"
    if name in NGRAM_NAMES:
        return "ngram"
    if name in DRAFT_NAMES:
        return "draft"
    return "none"


def drafters(
    spec_type: str, n_max: int, n_min: int, draft: Any = None
) -> Optional[Callable[[int], Drafter]]:
    """What makes sequence N's drafter under these flags (`draft`: a draft.DraftModel or
    None), or None: no speculation. Each drafts only what its measured costs pay for
    (engine/decoding/pace.py), the costs shared by the sequences."""
    from runtime.engine.decoding.draft import Either, ModelDrafter
    from runtime.engine.decoding.pace import Paced, StepCosts

    kind = chosen(spec_type, draft is not None)
    if kind == "none":
        return None
    costs = StepCosts()  # one machine, one model: every sequence's steps measure it

    def make(seq: int) -> Drafter:
        if kind == "ngram":
            inner: Drafter = NgramDrafter(n_max, n_min, pauses=False)
        elif kind == "draft":
            inner = ModelDrafter(draft, seq, n_max)
        else:
            inner = Either(NgramDrafter(n_max, n_min, False), ModelDrafter(draft, seq, n_max))
        return Paced(inner, costs, n_max)

    return make


def can_roll_back(model: Any) -> bool:
    """Whether the model's memory can drop the tail of a sequence (recurrent memory cannot)."""
    C = model._C
    for name in ("llama_model_is_recurrent", "llama_model_is_hybrid"):
        fn = getattr(C, name, None)
        if fn is not None and fn(model._model):
            return False
    return True


def generate(
    model: Any, prompt: list[int], n_predict: int, sampling: Any, spec: Speculation
) -> Iterator[str]:
    """Model.generate with drafts verified in batches; the same text, in fewer decodes."""
    C = model._C
    ctx = model._ctx
    memory = C.llama_get_memory(ctx)
    sampler = model._sampler(sampling)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    spec.drafted = spec.accepted = spec.steps = 0
    model.produced = 0
    model.finish_reason = "length"
    n_ctx = model.n_ctx
    cap = min(model.n_batch, n_ctx)
    batch = C.llama_batch_init(cap, 0, 1)
    spec.drafter.begin(prompt)

    def emit(token: int) -> str:
        """Count `token` as produced and return the text it completes."""
        model.produced += 1
        spec.drafter.push(token)
        return str(decoder.decode(model.piece(token)))

    try:
        model._prefill(prompt)
        token = int(C.llama_sampler_sample(sampler, ctx, -1))
        while True:
            if C.llama_vocab_is_eog(model._vocab, token):
                model.finish_reason = "stop"
                break
            text = emit(token)
            if text:
                yield text
            if 0 <= n_predict <= model.produced:
                break
            base = len(model._cached)  # `token` goes at this position
            if base + 1 >= n_ctx:
                break
            limit = min(cap - 1, n_ctx - 2 - base)
            if n_predict >= 0:
                limit = min(limit, n_predict - model.produced - 1)
            draft = spec.drafter.propose(limit)[: max(0, limit)] if limit > 0 else []
            step = [token, *draft]
            for i, t in enumerate(step):
                batch.token[i] = t
                batch.pos[i] = base + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1
            batch.n_tokens = len(step)
            rc = C.llama_decode(ctx, batch)
            if rc != 0:
                model._cached = []
                raise EngineError(f"llama.cpp failed to decode (code {rc})")
            model._cached += step
            if draft:
                spec.steps += 1
                spec.drafted += len(draft)
            kept = 0  # draft tokens the model agreed with and that were emitted
            stop = False
            for i in range(len(step)):
                token = int(C.llama_sampler_sample(sampler, ctx, i))
                if i == len(draft) or token != draft[i]:
                    break  # `token` is the next one; it is not in the memory yet
                if C.llama_vocab_is_eog(model._vocab, token):
                    model.finish_reason = "stop"
                    stop = True
                    break
                kept += 1
                text = emit(token)
                if text:
                    yield text
                if 0 <= n_predict <= model.produced:
                    stop = True
                    break
            spec.accepted += kept
            if draft:
                spec.drafter.accepted(kept)
            end = base + 1 + kept
            if end < len(model._cached):
                if not C.llama_memory_seq_rm(memory, 0, end, -1):
                    model._cached = []
                    raise EngineError("llama.cpp could not drop the rejected draft tokens")
                del model._cached[end:]
            if stop:
                break
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
    finally:
        C.llama_batch_free(batch)
        C.llama_sampler_free(sampler)

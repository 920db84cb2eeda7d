"""A draft model: a smaller model with the target's vocabulary guesses the next tokens.

It keeps one sequence per target sequence in its own context and follows the target lazily:
before each guess it drops what the target did not keep and reads what it did, so a rejected
draft rolls back by itself. It drafts greedily; the draft's length adapts as the n-gram
drafter's does (grows while kept whole, shrinks after a miss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from runtime.engine import settings
from runtime.engine.backend import EngineError

# llama.cpp's own rule for a draft (common/speculative.cpp, common_speculative_are_compatible)
VOCAB_MAX_DIFFERENCE = 128  # SPEC_VOCAB_MAX_SIZE_DIFFERENCE
VOCAB_CHECK_START = 5  # SPEC_VOCAB_CHECK_START_TOKEN_ID
VOCAB_TYPES = {0: "none", 1: "SPM", 2: "BPE", 3: "WPM", 4: "UGM", 5: "RWKV", 6: "PLaMo-2"}


def vocab_mismatch(target: Any, draft: Any) -> Optional[str]:
    """Why llama.cpp would not draft for `target` with `draft` (two loaded Models), or None."""
    C = target._C
    vt, vd = target._vocab, draft._vocab
    kind_t, kind_d = (VOCAB_TYPES.get(C.llama_vocab_type(v), "?") for v in (vt, vd))
    if kind_t != kind_d:
        return f"its tokenizer is {kind_d}, the model's {kind_t}"
    for name, get in (("BOS", C.llama_vocab_bos), ("EOS", C.llama_vocab_eos)):
        if get(vt) != get(vd):
            return f"its {name} token is {get(vd)}, the model's is {get(vt)}"
    n_t, n_d = target.n_vocab, draft.n_vocab
    if abs(n_t - n_d) > VOCAB_MAX_DIFFERENCE:
        return (
            f"its vocabulary has {n_d} tokens, the model's {n_t}; llama.cpp drafts only "
            f"with vocabularies at most {VOCAB_MAX_DIFFERENCE} tokens apart"
        )
    for i in range(VOCAB_CHECK_START, min(n_t, n_d)):
        a, b = C.llama_vocab_get_text(vt, i), C.llama_vocab_get_text(vd, i)
        if a != b:
            return f"token {i} is {b!r} in it but {a!r} in the model"
    return None


class DraftModel:
    """A loaded draft model (an engine.Model with one sequence per target sequence)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.C = model._C
        self._cached: dict[int, list[int]] = {}  # sequence -> the tokens it holds
        self._batch = self.C.llama_batch_init(model.n_batch, 0, 1)
        self._greedy = self.C.llama_sampler_init_greedy()

    def close(self) -> None:
        self.C.llama_sampler_free(self._greedy)
        self.C.llama_batch_free(self._batch)
        self.model.close()

    def _decode(self, seq: int, tokens: Sequence[int], start: int) -> None:
        """Read `tokens` into `seq` from position `start`, logits for the last one."""
        C, batch = self.C, self._batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = int(i == len(tokens) - 1)
        batch.n_tokens = len(tokens)
        if C.llama_decode(self.model._ctx, batch) != 0:
            self._forget(seq)
            raise EngineError("the draft model failed to decode")

    def _forget(self, seq: int) -> None:
        self.C.llama_memory_seq_rm(self.C.llama_get_memory(self.model._ctx), seq, -1, -1)
        self._cached[seq] = []

    def _follow(self, seq: int, tokens: Sequence[int]) -> None:
        """Make `seq` hold `tokens`, with the last one's logits ready."""
        held = self._cached.setdefault(seq, [])
        keep = 0
        for a, b in zip(held, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last token is read again for its logits
        if keep < len(held):
            memory = self.C.llama_get_memory(self.model._ctx)
            if not self.C.llama_memory_seq_rm(memory, seq, keep, -1):
                self._forget(seq)
                keep = 0
            del held[keep:]
        step = self.model.n_batch
        for start in range(keep, len(tokens), step):
            chunk = list(tokens[start : start + step])
            self._decode(seq, chunk, start)
            held += chunk

    def guess(self, seq: int, tokens: Sequence[int], n: int) -> list[int]:
        """The draft's `n` likeliest next tokens after `tokens`, one after the other."""
        if not tokens or len(tokens) + n >= self.model.n_ctx:
            return []
        self._follow(seq, tokens)
        held = self._cached[seq]
        out: list[int] = []
        while len(out) < n:
            best = int(self.C.llama_sampler_sample(self._greedy, self.model._ctx, -1))
            out.append(best)
            if len(out) < n:
                self._decode(seq, [best], len(held))
                held.append(best)
        return out


class ModelDrafter:
    """One sequence's drafter that asks the draft model; it drafts while this is the only
    sequence generating (beside others, its own decodes would hold up the batch)."""

    def __init__(self, draft: DraftModel, seq: int, n_max: int) -> None:
        self.draft, self.seq, self.n_max = draft, seq, max(1, n_max)
        self.length = min(settings.SPEC_DRAFT_MODEL_START, self.n_max)
        self.tokens: list[int] = []
        self._last = 0

    def begin(self, tokens: Sequence[int]) -> None:
        self.tokens = list(tokens)

    def push(self, token: int) -> None:
        self.tokens.append(token)

    def evidence(self) -> Optional[int]:
        return 0  # a guess it can always make, with nothing to say how good

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        self._last = 0
        if generating > 1:
            return []
        draft = self.draft.guess(self.seq, self.tokens, min(n_max, self.length))
        self._last = len(draft)
        return draft

    def accepted(self, n: int) -> None:
        if self._last == 0:
            return
        if n >= self._last:
            self.length = min(self.n_max, self.length * 2)
        else:
            self.length = max(1, n + 1)


class Either:
    """N-gram drafts where the text has one, the draft model's elsewhere (llama.cpp's order)."""

    def __init__(self, first: Any, then: Any) -> None:
        self.first, self.then = first, then
        self._used: Any = None

    def begin(self, tokens: Sequence[int]) -> None:
        self.first.begin(tokens)
        self.then.begin(tokens)

    def push(self, token: int) -> None:
        self.first.push(token)
        self.then.push(token)

    def evidence(self) -> Optional[int]:
        found: Optional[int] = self.first.evidence()
        return found if found is not None else self.then.evidence()

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        for drafter in (self.first, self.then):
            draft = list(drafter.propose(n_max, generating))
            if draft:
                self._used = drafter
                return draft
        self._used = None
        return []

    def accepted(self, n: int) -> None:
        if self._used is not None:
            self._used.accepted(n)

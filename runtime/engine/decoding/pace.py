"""How long a draft pays here: the drafter times its own steps and counts what was kept.

A verify step of k draft tokens decodes a row of k + 1 tokens and gives the kept tokens plus
one; a plain step decodes one token and gives one. So a draft of k pays only while
(E[kept of k] + 1) / T(k + 1) beats 1 / T(1), where T(n) is what a step with an n-token row
costs on this machine, under its load, drafting included. `StepCosts` measures T (one table
for a process's sequences: a wall-clock moving average per row length, from each drafter's
propose() to its first emitted token, which spans the decode and the first sample); `Paced`
keeps, per sequence, the chance that a draft's i-th token is kept once the ones before it
were, apart by the drafter's evidence (for prompt lookup: how many tokens of the text's tail
matched where the draft comes from — a copy in progress matches long, a chance n-gram short)
and lets the drafter under it draft the length with the best expected rate, none where none
pays. After SPEC_PROBE_AFTER plain steps it drafts SPEC_PROBE_LENGTH tokens anyway, so a text
that turns repetitive is noticed; each probe not kept doubles that wait (up to
SPEC_PROBE_AFTER_MAX: a probe lost costs most of a step), one kept resets it. It decides only
how much is drafted, never what is emitted.

Beside other generating sequences (the server's busy batch) the scheduler's own caps rule and
nothing is timed: a step's cost there is everyone's (llama.cpp's adaptive n-gram rules and
vLLM's are by acceptance alone; this one is by acceptance and the measured cost).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from runtime.engine import settings


class StepCosts:
    """T(n): the seconds a step with an n-token row takes here (a moving average of samples;
    a sample past SPEC_COST_CLIP times the estimate counts as that, so a stall moves it less)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}
        self.samples: dict[int, int] = {}

    def record(self, n: int, seconds: float) -> None:
        old = self.seconds.get(n)
        if old is None:
            self.seconds[n] = seconds
        else:
            seconds = min(seconds, old * settings.SPEC_COST_CLIP)
            self.seconds[n] = old + (seconds - old) * settings.SPEC_COST_WEIGHT
        self.samples[n] = self.samples.get(n, 0) + 1

    def ratio(self, n: int) -> float:
        """T(n) / T(1); where a length was not measured yet, the nearest measured one scaled by
        the prior curve T(n) ~ SPEC_STEP_COST + n."""
        return self._cost(n) / self._cost(1)

    def _cost(self, n: int) -> float:
        prior = settings.SPEC_STEP_COST + n
        if n in self.seconds:
            return self.seconds[n]
        if not self.seconds:
            return prior
        near = min(self.seconds, key=lambda m: (abs(m - n), m))
        return self.seconds[near] * prior / (settings.SPEC_STEP_COST + near)


class Kept:
    """The chance that a draft's i-th token is kept, given the ones before it were: recent
    drafts count most (SPEC_KEPT_MEMORY), and a prior counts as SPEC_KEPT_PRIOR_WEIGHT drafts:
    `prior` for the first token, the chance of the token before for each later one (so a
    length never tried is as good as the last one tried, and gets tried where that pays)."""

    def __init__(self, prior: float, n_max: int) -> None:
        self.prior = prior
        self.hits = [0.0] * n_max
        self.tries = [0.0] * n_max

    def observe(self, proposed: int, kept: int) -> None:
        """A draft of `proposed` tokens of which the first `kept` were kept: the kept ones and
        the first rejected one were tried; the rest say nothing."""
        memory = settings.SPEC_KEPT_MEMORY
        for i in range(min(kept + 1, proposed, len(self.tries))):
            self.tries[i] = self.tries[i] * memory + 1.0
            self.hits[i] = self.hits[i] * memory + float(i < kept)

    def chances(self, k: int) -> list[float]:
        """The chances of a draft's first `k` tokens, each given the ones before it."""
        w, out, prior = settings.SPEC_KEPT_PRIOR_WEIGHT, [], self.prior
        for i in range(min(k, len(self.tries))):
            prior = (self.hits[i] + prior * w) / (self.tries[i] + w)
            out.append(prior)
        return out

    def expected(self, k: int) -> list[float]:
        """E[tokens kept] of a draft of 0, 1, ..., k tokens."""
        out, alive, total = [0.0], 1.0, 0.0
        for chance in self.chances(k):
            alive *= chance
            total += alive
            out.append(total)
        return out


def prior(evidence: int) -> float:
    """The chance a draft token is kept before any was seen, for a drafter's `evidence` (0: none
    to speak of): SPEC_KEPT_PRIOR_COLD's doubt over 1 + evidence / SPEC_KEPT_PRIOR_HALF."""
    doubt = 1.0 - settings.SPEC_KEPT_PRIOR_COLD
    return 1.0 - doubt / (1.0 + evidence / settings.SPEC_KEPT_PRIOR_HALF)


class Paced:
    """A drafter (engine/decoding/speculate.py's protocol) under a policy that drafts only what pays
    by the measured costs; `clock` is time.perf_counter (a test gives its own)."""

    def __init__(
        self,
        inner: Any,
        costs: StepCosts,
        n_max: int = settings.SPEC_DRAFT_N_MAX,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner, self.costs, self.clock = inner, costs, clock
        self.n_max = max(1, n_max)
        self.kept: dict[int, Kept] = {}  # by the bucket of the drafter's evidence
        self.idle = 0  # plain steps in a row that the policy chose
        self.probe_after = settings.SPEC_PROBE_AFTER  # ... before a probe
        self._probing = False
        self._started: Optional[float] = None  # propose()'s time, while a step is timed
        self._row = 1  # the tokens of this step's row
        self._last = 0  # the draft proposed at this step
        self._table: Optional[Kept] = None  # what its outcome teaches

    def begin(self, tokens: Sequence[int]) -> None:
        self._started = None
        self.inner.begin(tokens)

    def push(self, token: int) -> None:
        if self._started is not None:
            self.costs.record(self._row, self.clock() - self._started)
            self._started = None
        self.inner.push(token)

    def evidence(self) -> Optional[int]:
        found: Optional[int] = self.inner.evidence()
        return found

    def table(self, evidence: int) -> Kept:
        """The chances learned for drafts with this much evidence (SPEC_EVIDENCE_BUCKETS). A
        new bucket's prior is no lower than a first token's chance learned with less evidence
        (more of a match never makes a guess worse), nor than prior() of its least evidence."""
        bucket = bisect.bisect_right(settings.SPEC_EVIDENCE_BUCKETS, evidence)
        if bucket not in self.kept:
            least = settings.SPEC_EVIDENCE_BUCKETS[bucket - 1] if bucket else 0
            below = [t.chances(1)[0] for b, t in self.kept.items() if 0 < b < bucket]
            self.kept[bucket] = Kept(max([prior(least), *below]), self.n_max)
        return self.kept[bucket]

    def best(self, table: Kept, n_max: int) -> int:
        """The draft length with the best expected tokens per second (0: a plain step)."""
        kept = table.expected(min(n_max, self.n_max))
        rates = [(1.0 + e) / self.costs.ratio(1 + k) for k, e in enumerate(kept)]
        return max(range(len(rates)), key=lambda k: (rates[k], -k))

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        self._last, self._started, self._table, self._probing = 0, None, None, False
        if generating > 1:  # the scheduler's caps for a busy batch rule; its costs are shared
            draft = list(self.inner.propose(n_max, generating))
            self._last = len(draft)
            return draft
        started = self.clock()
        evidence = self.inner.evidence()
        want = 0
        if evidence is not None:  # else nothing to draft from: a plain step
            self._table = self.table(evidence)
            want = self.best(self._table, n_max)
            self.idle = 0 if want > 0 else self.idle + 1
            self._probing = self.idle > self.probe_after
            if self._probing:
                self.idle = 0
                want = min(settings.SPEC_PROBE_LENGTH, n_max)
        draft = list(self.inner.propose(want, 1)) if want > 0 else []
        self._started, self._row, self._last = started, 1 + len(draft), len(draft)
        return draft

    def accepted(self, n: int) -> None:
        if self._last == 0:
            return
        if self._table is not None:
            self._table.observe(self._last, n)
        if self._probing:
            lost = min(self.probe_after * 2, settings.SPEC_PROBE_AFTER_MAX)
            self.probe_after = settings.SPEC_PROBE_AFTER if n else lost
        self.inner.accepted(n)

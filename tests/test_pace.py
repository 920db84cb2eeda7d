"""engine/decoding/pace.py: the drafter policy that times its own steps. Synthetic costs and
outcomes (a clock the test moves, a drafter that always has a guess): it stops drafting where
drafts lose, probes, drafts again once they win, and grows and shrinks the length by the
costs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import pytest

from runtime.engine import settings
from runtime.engine.decoding import pace, speculate
from runtime.engine.decoding.pace import Kept, Paced, StepCosts


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Guesser:
    """A drafter that always has `n_max` tokens to propose (0, 1, 2, ...); its evidence is the
    tokens kept since its last miss (as a prompt-lookup match grows while a copy goes on)."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.outcomes: list[int] = []
        self.run = 0

    def evidence(self) -> int:
        return self.run

    def begin(self, tokens: Sequence[int]) -> None:
        pass

    def push(self, token: int) -> None:
        pass

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        self.asked.append(n_max)
        return list(range(n_max))

    def accepted(self, n: int) -> None:
        self.run = self.run + n + 1 if n >= self.asked[-1] else 0
        self.outcomes.append(n)


def steep(n: int) -> float:
    """A step of an n-token row, in seconds: the loaded machine's curve (2: 1.65, 9: 6.2)."""
    return 0.010 * (1.0 + 0.65 * (n - 1))


def cheap(n: int) -> float:
    """A quiet machine's curve: T(n) / T(1) = (3 + n) / 4."""
    return 0.010 * (3.0 + n) / 4.0


def run(
    paced: Paced, clock: Clock, steps: int, cost: Callable[[int], float], kept: Callable[[int], int]
) -> list[int]:
    """`steps` steps: each draft proposed is timed at `cost(1 + len)` and keeps `kept(len)`
    of its tokens; the draft lengths verified, step by step."""
    lengths = []
    for _ in range(steps):
        draft = paced.propose(8)
        clock.now += cost(1 + len(draft))
        paced.push(0)
        if draft:
            paced.accepted(min(len(draft), kept(len(draft))))
        lengths.append(len(draft))
    return lengths


def paced(cost: Callable[[int], float]) -> tuple[Paced, Clock, Guesser]:
    clock, inner = Clock(), Guesser()
    costs = StepCosts()
    for n in range(1, 10):  # the costs as measured earlier in the process
        for _ in range(3):
            costs.record(n, cost(n))
    return Paced(inner, costs, 8, clock), clock, inner


def test_drafts_that_lose_stop_and_a_probe_brings_them_back() -> None:
    p, clock, inner = paced(steep)
    lost = run(p, clock, 120, steep, lambda k: 0)  # free-form text: nothing is ever kept
    probes = [i for i, k in enumerate(lost) if k and i >= 20]
    # past the first misses only probes remain, one token each, the wait doubling after each
    assert probes and {lost[i] for i in probes} == {settings.SPEC_PROBE_LENGTH}, lost
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > 2 * settings.SPEC_PROBE_AFTER, lost
    assert inner.outcomes[-len(probes) :] == [0] * len(probes)
    wait = p.probe_after
    won = run(p, clock, wait + 20, steep, lambda k: k)  # now a copy
    first = next(i for i, k in enumerate(won) if k)
    assert first <= wait + 1  # the next probe finds it
    assert won[first] == settings.SPEC_PROBE_LENGTH
    assert won[-5:] == [8] * 5, won  # kept whole: drafts grow to the longest
    assert p.probe_after == settings.SPEC_PROBE_AFTER  # a probe kept: the wait is short again


def test_cheap_steps_keep_drafting_what_steep_ones_drop() -> None:
    # Half the drafts kept whole, half not at all (by a coin): per draft token, half a token
    # kept; that pays on the cheap curve (a draft of 8: 5 tokens for 3 steps), never on the
    # steep one (each token costs 0.65 of a step), where only the probes remain.
    def coin(seed: int) -> Callable[[int], int]:
        flips = random.Random(seed)
        return lambda k: k if flips.random() < 0.5 else 0

    cheap_run = run(*paced(cheap)[:2], 200, cheap, coin(3))
    steep_run = run(*paced(steep)[:2], 200, steep, coin(3))
    assert sum(map(bool, cheap_run[50:])) > 100 and max(cheap_run[50:]) == 8, cheap_run
    # a probe, and after one kept whole a try or two more (it might be a copy starting)
    assert sum(map(bool, steep_run[50:])) <= 2 * 150 // settings.SPEC_PROBE_AFTER, steep_run
    assert set(steep_run[50:]) == {0, settings.SPEC_PROBE_LENGTH}


def test_a_draft_is_as_long_as_its_measured_cost_pays_for() -> None:
    # 3 tokens of every draft kept, the 4th never: a draft of 3 gives 4 tokens for 7/4 of a
    # step, one of 4 the same 4 tokens for 2 steps; once that is learned, drafts are of 3.
    p, clock, _ = paced(cheap)
    lengths = run(p, clock, 80, cheap, lambda k: min(k, 3))  # each evidence bucket learns it
    assert lengths[-20:] == [3] * 20, lengths


def test_measured_costs() -> None:
    costs = StepCosts()
    assert costs.ratio(5) == pytest.approx(
        (settings.SPEC_STEP_COST + 5) / (settings.SPEC_STEP_COST + 1)
    )
    costs.record(1, 0.010)
    costs.record(3, 0.030)  # measured: T(3) = 3 T(1)
    assert costs.ratio(3) == pytest.approx(3.0)
    # 4 was never measured: 3's, scaled by the prior curve
    prior = (settings.SPEC_STEP_COST + 4) / (settings.SPEC_STEP_COST + 3)
    assert costs.ratio(4) == pytest.approx(3.0 * prior)
    costs.record(1, 1.0)  # a stall counts as SPEC_COST_CLIP times the estimate
    clipped = 0.010 + (0.010 * settings.SPEC_COST_CLIP - 0.010) * settings.SPEC_COST_WEIGHT
    assert costs.seconds[1] == pytest.approx(clipped)


def test_kept_counts_only_the_positions_tried() -> None:
    kept = Kept(0.5, 4)
    for _ in range(50):
        kept.observe(4, 1)  # the first kept, the second rejected, the rest never tried
    chances = kept.chances(4)
    assert chances[0] > 0.9 and chances[1] < 0.2
    assert chances[2] == chances[1] and chances[3] == chances[2]  # the one before, untried
    assert kept.expected(4)[-1] == pytest.approx(kept.expected(2)[-1], abs=0.05)
    fresh = Kept(0.5, 4).chances(4)
    assert fresh == [0.5] * 4


def test_beside_others_it_asks_the_drafter_and_times_nothing() -> None:
    p, clock, inner = paced(steep)
    before = dict(p.costs.samples)
    assert p.propose(3, generating=2) == [0, 1, 2]
    clock.now += 5.0
    p.push(0)
    p.accepted(0)
    assert p.costs.samples == before and inner.asked == [3] and inner.outcomes == [0]


def test_every_mode_drafts_through_one_measured_table() -> None:
    new = speculate.drafters("ngram", 8, 0)
    assert new is not None
    a, b = new(0), new(1)
    assert isinstance(a, Paced) and isinstance(b, Paced) and a.costs is b.costs
    assert isinstance(a.inner, speculate.NgramDrafter)
    assert speculate.drafters("none", 8, 0) is None


def test_under_the_policy_the_ngram_drafter_does_not_pause_by_itself() -> None:
    alone = speculate.NgramDrafter(8, 0, pauses=False)
    alone.begin([1, 2, 1])
    for _ in range(2 * settings.SPEC_MISSES_BEFORE_PAUSE):
        assert alone.propose(8)
        alone.accepted(0)  # each miss: the policy above it decides whether to go on
    assert alone.propose(8)


def test_a_copy_and_chance_matches_are_learned_apart() -> None:
    # Steps alternate between a long match (a copy: its drafts kept whole) and a one-token
    # match (chance: never kept). Once learned, the copy's steps draft the longest and the
    # chance ones none but probes; one table for both would draft both or neither.
    p, clock, inner = paced(steep)
    lengths = {True: [], False: []}
    for step in range(120):
        copying = step % 2 == 0
        inner.run = 12 if copying else 1
        draft = p.propose(8)
        clock.now += steep(1 + len(draft))
        p.push(0)
        if draft:
            p.accepted(len(draft) if copying else 0)
        lengths[copying].append(len(draft))
    assert lengths[True][-20:] == [8] * 20, lengths[True]
    assert set(lengths[False][-30:]) <= {0, settings.SPEC_PROBE_LENGTH}, lengths[False]


def test_the_ngram_evidence_is_how_far_the_match_runs_back() -> None:
    drafter = speculate.NgramDrafter(8, 0, pauses=False)
    drafter.begin([5, 6, 7, 8, 9, 1, 6, 7, 8])  # the tail 6 7 8 was seen after 5, not after 1
    assert drafter.evidence() == 3 and drafter.lookup(5) == [9, 1, 6, 7, 8]
    drafter.begin([5, 6, 7, 8, 9, 5, 6, 7, 8])  # back to the start: 4 tokens agree
    assert drafter.evidence() == 4
    drafter.begin([1, 2, 3])  # nothing seen twice: nothing to draft from
    assert drafter.evidence() is None and drafter.lookup(8) == []
    loop = [4, 5, 6] * 20  # a loop: the match runs back as far as it is followed
    drafter.begin(loop)
    assert drafter.evidence() == settings.SPEC_EVIDENCE_MAX
    assert drafter.propose(8) == [4, 5, 6, 4, 5, 6, 4, 5]  # paced: as long as asked


def test_a_longer_match_starts_from_what_a_shorter_one_taught() -> None:
    # A copy in progress: every draft kept whole while its match grows through the buckets;
    # each new bucket starts no lower than what the shorter matches learned.
    p, clock, _ = paced(cheap)
    assert run(p, clock, 30, cheap, lambda k: k)[-10:] == [8] * 10
    learned = [t.prior for b, t in sorted(p.kept.items())]
    assert learned == sorted(learned) and learned[-1] > pace.prior(21) + 0.05, learned
    fresh = Paced(Guesser(), p.costs, 8, clock)  # free-form taught nothing: the plain prior
    assert fresh.table(13).prior == pytest.approx(pace.prior(13))

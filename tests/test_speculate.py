"""Speculative decoding (n-gram prompt lookup) in one-shot and chat: the same text as plain
decoding, in fewer decodes; the flags and their errors.

"The same" is token ids: at temperature 0 the runs may part only at a near tie, two tokens
less than NEAR_TIE (0.05) logits apart after the same prefix, which a verify batch's kernels
round the other way than a one-token decode; such a parting is reported (a warning: its
position and margin), any other fails (see same()). Seeded sampled runs must match exactly."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_error, run_pyz

from runtime.engine.decoding import grammar, speculate
from runtime.engine.decoding import model as engine

CODE = """Here is a function:

```python
def total(items):
    x = 0
    for item in items:
        x += item.price * item.quantity
    return x
```

The same function with `x` renamed to `count`:

```python
"""
QUOTE = """Passage: "The river rose in the night, and by morning the low fields were a lake.
The farmers moved their animals to the hill and waited for the water to fall."

Quote the passage's second sentence exactly: \""""


@pytest.fixture(scope="module")
def llm(smollm2: Path) -> Iterator[Any]:
    from runtime.engine.devices import cpu
    from runtime.sources.source import ModelSource

    engine.set_verbose(False)
    engine.start_backend(cpu.choose().path)
    with engine.Model(
        ModelSource(smollm2, 0, smollm2.stat().st_size, "smollm2"), n_ctx=1024, n_threads=2
    ) as m:
        yield m


# Logits: two tokens closer than this after the same prefix are a near tie, which a verify
# batch's kernels (tinyBLAS, repacked GEMM: another order of the same sums) may round the
# other way than a one-token decode. On this CPU a verify batch of 8 gave SmolLM2's logits
# of a one-token decode to the last bit; a prefill batch of 109 tokens moved a gap by 0.37, so a
# prompt is always decoded the same way on both sides of a comparison.
NEAR_TIE = 0.05


@dataclass
class Run:
    """What one generate() gave: its text, the token ids it emitted, and its prompt's ids."""

    prompt: list[int]
    tokens: list[int]
    text: str


def complete(llm: Any, prompt: str, n: int, spec: Any, **sampling: Any) -> Run:
    ids = llm.tokenize(prompt)
    tokens: list[int] = []
    piece = llm.piece

    def emitted(token: int) -> bytes:  # both decoders ask for each emitted token's text once
        tokens.append(token)
        return bytes(piece(token))

    llm.speculation, llm.piece = spec, emitted
    try:
        text = "".join(llm.generate(ids, n, engine.Sampling(**sampling)))
        return Run(ids, tokens, text)
    finally:
        llm.speculation = None
        del llm.piece


def logits_after(llm: Any, prompt: list[int], kept: list[int], tokens: list[int]) -> list[float]:
    """The logits of `tokens` after `prompt` + `kept`, decoded as plain generation decodes
    them: the prompt in one batch, then each generated token alone."""
    C = llm._C
    llm._cached = []
    llm._prefill(prompt)  # from an empty memory
    one = (C.llama_token * 1)()
    for token in kept:
        one[0] = token
        assert C.llama_decode(llm._ctx, C.llama_batch_get_one(one, 1)) == 0
    row = C.llama_get_logits_ith(llm._ctx, -1)
    values = [float(row[t]) for t in tokens]
    llm._cached = prompt + kept
    return values


def end_of_text(llm: Any) -> list[int]:
    C = llm._C
    found = (int(C.llama_vocab_eos(llm._vocab)), int(C.llama_vocab_eot(llm._vocab)))
    return [t for t in found if t >= 0]


def same(llm: Any, got: Run, want: Run, tie: float = NEAR_TIE) -> None:
    """`got` (speculation on) emitted the token ids of `want` (plain decoding), or parted from
    them only at a near tie.

    Where the ids first differ, the plain prefix is decoded again and the two candidates'
    logits read there (an end of text counts as its likeliest end token). A divergence is
    accepted only where they are less than `tie` logits apart (NEAR_TIE; 0 for sampled runs,
    which must match exactly): it is then reported as a warning with its position and margin,
    and the tokens before it were equal. Any other difference fails, with the same report.
    """
    if got.tokens == want.tokens:
        assert got.text == want.text
        return
    pairs = zip(got.tokens, want.tokens)
    at = next(
        (i for i, (x, y) in enumerate(pairs) if x != y), min(len(got.tokens), len(want.tokens))
    )
    ends = end_of_text(llm)
    a = got.tokens[at : at + 1] or ends
    b = want.tokens[at : at + 1] or ends
    logits = logits_after(llm, want.prompt, want.tokens[:at], a + b)
    score_a, score_b = max(logits[: len(a)]), max(logits[len(a) :])
    margin = abs(score_a - score_b)

    def name(t: list[int]) -> str:
        return repr(llm.piece(t[0]).decode("utf-8", "replace")) if t != ends else "end of text"

    report = (
        f"speculation parted from plain decoding at generated token {at}: {name(a)} "
        f"(logit {score_a:.4f}) vs {name(b)} (logit {score_b:.4f}), margin {margin:.4f} "
        f"(a near tie is < {tie}); text {got.text[:80]!r} vs {want.text[:80]!r}"
    )
    assert margin < tie, report
    warnings.warn(report, stacklevel=2)


def same_text(a: str, b: str) -> None:
    """Equal texts (a server's replies: no engine here to read the margin of a difference)."""
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    assert a == b, (
        f"speculation changed the text at character {at}: {a[at:][:40]!r} vs {b[at:][:40]!r}"
    )


def ngram() -> speculate.Speculation:
    """The n-gram drafter as every mode makes it: paced by its measured costs
    (engine/decoding/pace.py), which may draft less under load, never differently."""
    new = speculate.drafters("ngram", 8, 0)
    assert new is not None
    return speculate.Speculation(new(0))


class RandomDrafter:
    def __init__(self, n_vocab: int) -> None:
        self.rng = random.Random(7)
        self.n_vocab = n_vocab
        self.kept: list[int] = []

    def begin(self, tokens: Sequence[int]) -> None:
        pass

    def push(self, token: int) -> None:
        pass

    def propose(self, n_max: int, generating: int = 1) -> list[int]:
        return [self.rng.randrange(self.n_vocab) for _ in range(min(n_max, 4))]

    def accepted(self, n: int) -> None:
        self.kept.append(n)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", [CODE, QUOTE], ids=["code-edit", "quote"])
def test_greedy_text_is_the_same_with_and_without(llm: Any, prompt: str) -> None:
    plain = complete(llm, prompt, 120, None, temp=0.0)
    spec = ngram()
    same(llm, complete(llm, prompt, 120, spec, temp=0.0), plain)
    assert spec is not None and spec.drafted > 0
    if prompt is CODE:  # the answer copies the prompt: most drafts are kept
        assert spec.accepted * 2 > spec.drafted, spec.summary()


@pytest.mark.slow
def test_seeded_sampling_is_the_same_with_and_without(llm: Any) -> None:
    args: dict[str, Any] = {"temp": 0.8, "seed": 1234}
    plain = complete(llm, CODE, 80, None, **args)
    same(llm, complete(llm, CODE, 80, ngram(), **args), plain, tie=0.0)


@pytest.mark.slow
def test_random_drafts_change_nothing(llm: Any) -> None:
    plain = complete(llm, QUOTE, 40, None, temp=0.0)
    drafter = RandomDrafter(llm.n_vocab)
    spec = speculate.Speculation(drafter, name="random")
    same(llm, complete(llm, QUOTE, 40, spec, temp=0.0), plain)
    assert spec.drafted > 0 and drafter.kept


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_n_predict_is_never_exceeded(llm: Any, n: int) -> None:
    plain = complete(llm, CODE, n, None, temp=0.0)
    spec = ngram()
    got = complete(llm, CODE, n, spec, temp=0.0)
    assert llm.produced == len(got.tokens) <= n
    same(llm, got, plain)


@pytest.mark.slow
def test_memory_holds_what_the_model_says_it_holds(llm: Any) -> None:
    # Chat reuses the context's prefix: a second turn over a speculated first must give
    # what a fresh context gives.
    first = complete(llm, CODE, 60, ngram(), temp=0.0)
    held = first.prompt + first.tokens
    assert llm._cached == held[: len(llm._cached)] and len(held) - len(llm._cached) <= 1
    follow = CODE + first.text + "\n\nNow the same function again:\n\n```python\n"
    reused = complete(llm, follow, 60, ngram(), temp=0.0)
    llm._cached = []  # the next prefill clears the memory
    same(llm, reused, complete(llm, follow, 60, None, temp=0.0))


@pytest.mark.slow
def test_grammar_still_holds(llm: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    gbnf = grammar.from_schema(schema)
    prompt = CODE + "def count(items):\n```\n\nThe function's name as JSON: "
    plain = complete(llm, prompt, 60, None, temp=0.0, grammar=gbnf)
    got = complete(llm, prompt, 60, ngram(), temp=0.0, grammar=gbnf)
    same(llm, got, plain)
    assert "name" in json.loads(got.text)


@pytest.mark.slow
def test_a_divergence_that_is_no_near_tie_fails(llm: Any) -> None:
    """same() itself: a run that parts from plain decoding on a clearly worse token fails,
    with the position and the margin; the plain run against itself passes."""
    plain = complete(llm, QUOTE, 8, None, temp=0.0)
    same(llm, plain, plain)
    logits = logits_after(llm, plain.prompt, plain.tokens[:5], list(range(llm.n_vocab)))
    worst = min(range(llm.n_vocab), key=lambda t: logits[t])
    forged = Run(plain.prompt, [*plain.tokens[:5], worst, *plain.tokens[6:]], plain.text + "?")
    with pytest.raises(AssertionError, match=r"at generated token 5: .* margin (\d+)\.") as caught:
        same(llm, forged, plain)
    margin = float(str(caught.value).split("margin ")[1].split()[0])
    assert margin == pytest.approx(logits[plain.tokens[5]] - logits[worst], abs=1e-3)
    assert margin > 1.0


@pytest.mark.slow
def test_one_shot_verbose_stop_and_none(smollm2_pyz: Path) -> None:
    args = ("-p", CODE, "--temp", "0", "-n", "60", "-t", "2", "--stop", "return")
    on = run_pyz(smollm2_pyz, *args, "--verbose")
    off = run_pyz(smollm2_pyz, *args, "--spec-type", "none", "--verbose")
    assert on.returncode == off.returncode == 0, on.stderr
    assert on.stdout == off.stdout and "return" not in on.stdout
    assert "speculation (ngram): drafted " in on.stderr
    assert "speculation (" not in off.stderr


def test_system_info_says_what_speculation_a_run_uses(tiny_pyz: Path) -> None:
    assert "speculation: ngram (" in run_pyz(tiny_pyz, "--system-info").stdout
    none = run_pyz(tiny_pyz, "--system-info", "--spec-type", "none").stdout
    assert "speculation: none" in none


@pytest.mark.parametrize(
    "args,text",
    [
        (("--spec-type", "bogus"), "Invalid value for '--spec-type'"),
        (("--spec-draft-n-max", "0"), "Invalid value for '--spec-draft-n-max'"),
        (("--spec-draft-n-min", "-1"), "Invalid value for '--spec-draft-n-min'"),
    ],
)
def test_bad_speculation_flags_are_usage_errors(
    tiny_pyz: Path, args: tuple[str, ...], text: str
) -> None:
    result = run_pyz(tiny_pyz, *args)
    assert_clean_error(result, 2, text)


def drafter(tokens: list[int]) -> speculate.NgramDrafter:
    d = speculate.NgramDrafter(8, 0)
    d.begin(tokens)
    return d


def test_ngram_lookup_and_backoff() -> None:
    assert drafter([1, 2, 3, 4, 5, 9, 2, 3]).lookup(3) == [4, 5, 9]
    assert drafter([7, 1, 2, 3, 4, 1, 2, 3]).lookup(3) == [4, 1, 2]  # the longest tail wins
    assert drafter([1, 2, 9, 2, 8, 2]).lookup(2) == [8, 2]  # the latest copy wins
    assert drafter([1, 2, 3]).lookup(3) == []
    d = drafter([5, 6, 7, 8, 5, 6])
    assert d.propose(8) == [7, 8]  # starts short
    d.accepted(2)
    for token in [9, 10, 11, 5, 6]:
        d.push(token)
    assert len(d.propose(8)) == 4  # kept whole: grows
    d = drafter([1, 2, 1])
    for _ in range(3):
        assert d.propose(8)
        d.accepted(0)
    assert d.propose(8) == []  # misses in a row: a pause


def test_busy_batches_draft_only_what_pays() -> None:
    d = drafter([1, 2, 3, 1, 2])
    assert d.propose(8, generating=4) == [3, 1]  # hopeful at first
    d.accepted(0)
    assert d.propose(8, generating=4) == [3]
    d.accepted(0)
    assert d.rate < 4 / (4 + 3)
    assert d.propose(8, generating=4) == []  # too few kept for a full batch
    assert d.propose(8, generating=1) == [3]  # alone, drafting still pays

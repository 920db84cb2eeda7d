"""Speculative decoding in the server's batched scheduler: several requests at once give the
same text with drafts as without, every request feature keeps working, and the drafts show
in replies' timings and in /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import openai
import pytest
import requests
from conftest import WEATHER, Server
from test_speculate import CODE, QUOTE, RandomDrafter, Run, same, same_text

from runtime.engine.decoding import grammar, speculate
from runtime.engine.decoding import model as engine
from runtime.serve.batch import Scheduler
from runtime.serve.jobs import Job

pytestmark = pytest.mark.slow

FREE = "Write a short story about a lighthouse keeper who finds a message in a bottle."
SLOTS = 3


@pytest.fixture(scope="module")
def llm(smollm2: Path) -> Iterator[Any]:
    from runtime.engine.devices import cpu
    from runtime.sources.source import ModelSource

    engine.set_verbose(False)
    engine.start_backend(cpu.choose().path)
    source = ModelSource(smollm2, 0, smollm2.stat().st_size, "smollm2")
    with engine.Model(source, n_ctx=2048, n_threads=2, n_seq_max=SLOTS) as m:
        yield m


def ngram(seq: int) -> Any:
    return speculate.NgramDrafter(8, 0)


class Ran:
    """What each job of a scheduler run said: its text, its "done" event, its log-probs."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.texts = ["" for _ in jobs]
        self.dones: list[dict[str, Any]] = [{} for _ in jobs]


def run(
    llm: Any,
    prompts: list[Any],
    drafters: Optional[Callable[[int], Any]],
    n: int = 80,
    stops: tuple[str, ...] = (),
    logprobs: Optional[int] = None,
    **sampling: Any,
) -> Ran:
    """Run one job per prompt (text, or tokens) on a fresh scheduler, all at once, to their ends."""
    jobs = [
        Job(
            llm.tokenize(p) if isinstance(p, str) else p,
            n,
            engine.Sampling(**({"temp": 0.0} | sampling)),
            stops=stops,
            logprobs=logprobs,
        )
        for p in prompts
    ]
    ran = Ran(jobs)
    for i, job in enumerate(jobs):

        def on_event(kind: str, value: Any, i: int = i) -> None:
            if kind == "text":
                ran.texts[i] += value
            elif kind == "done":
                ran.dones[i] = value
            elif kind == "error":
                raise AssertionError(value)

        job.on_event = on_event
    scheduler = Scheduler(llm, SLOTS, drafters)
    memory = llm._C.llama_get_memory(llm._ctx)
    for slot in scheduler.slots:  # each run starts from empty sequences
        llm._C.llama_memory_seq_rm(memory, slot.seq, -1, -1)
    try:
        for job in jobs:
            scheduler.admit(job)
        while scheduler.active:
            scheduler.step()
        for slot in scheduler.slots:  # the slot's tokens are what its sequence holds
            held = llm._C.llama_memory_seq_pos_max(memory, slot.seq) + 1
            assert held == len(slot.cached), (slot.seq, held, len(slot.cached))
    finally:
        scheduler.close()
    return ran


def emitted(ran: Ran) -> list[Run]:
    """Each job's prompt, token ids and text (its ids are read from its log-probs)."""
    return [
        Run(job.prompt, [t for t, _, _ in job.token_logprobs], text)
        for job, text in zip(ran.jobs, ran.texts)
    ]


def test_concurrent_greedy_requests_give_the_same_text(llm: Any) -> None:
    prompts = [CODE, QUOTE, FREE]
    plain = run(llm, prompts, None, logprobs=0)
    spec = run(llm, prompts, ngram, logprobs=0)
    for a, b in zip(emitted(spec), emitted(plain)):
        same(llm, a, b)
    timings = [d["timings"] for d in spec.dones]
    tokens = [d["completion_tokens"] for d in spec.dones]
    assert tokens == [d["completion_tokens"] for d in plain.dones]
    assert timings[0]["draft_n_accepted"] * 2 > timings[0]["draft_n"] > 0, timings[0]
    assert "draft_n" not in plain.dones[0]["timings"]


def test_random_drafts_change_nothing(llm: Any) -> None:
    drafters: list[RandomDrafter] = []

    def new(seq: int) -> RandomDrafter:
        drafters.append(RandomDrafter(llm.n_vocab))
        return drafters[-1]

    plain = run(llm, [QUOTE, CODE], None, n=40, logprobs=0)
    spec = run(llm, [QUOTE, CODE], new, n=40, logprobs=0)
    for a, b in zip(emitted(spec), emitted(plain)):
        same(llm, a, b)
    assert all(d.kept for d in drafters)


@pytest.mark.parametrize("prompt", [CODE, QUOTE], ids=["code-edit", "quote"])
def test_seeded_sampling_is_the_same_with_and_without(llm: Any, prompt: str) -> None:
    # One request at a time: beside others, a sampled text depends on what shares its
    # batches (their kernels round a little differently), with or without speculation.
    args: dict[str, Any] = {"temp": 0.8, "seed": 1234}
    same_text(
        run(llm, [prompt], ngram, n=60, **args).texts[0],
        run(llm, [prompt], None, n=60, **args).texts[0],
    )


@pytest.mark.parametrize("n", [1, 2, 5])
def test_max_tokens_is_never_exceeded(llm: Any, n: int) -> None:
    spec = run(llm, [CODE, QUOTE], ngram, n=n)
    assert [d["completion_tokens"] for d in spec.dones] == [n, n]
    plain = run(llm, [CODE, QUOTE], None, n=n)
    assert spec.texts == plain.texts


def test_the_context_limit_is_never_exceeded(llm: Any) -> None:
    # A prompt that nearly fills the context: drafts must stop at its end.
    # A prompt that repeats itself nearly to the context's end: drafts must stop there.
    prompt = (llm.tokenize(CODE) * 40)[: 2048 - 30]
    spec, plain = run(llm, [prompt], ngram, n=200), run(llm, [prompt], None, n=200)
    assert spec.texts == plain.texts
    done = spec.dones[0]
    assert done["finish_reason"] == "length"
    assert len(prompt) + done["completion_tokens"] == 2048  # the last one is never decoded
    assert done["timings"]["draft_n_accepted"] > 0


def test_stop_strings_leak_nothing(llm: Any) -> None:
    plain = run(llm, [CODE, QUOTE], None, stops=("return", "farmers"))
    spec = run(llm, [CODE, QUOTE], ngram, stops=("return", "farmers"))
    assert spec.texts == plain.texts
    assert all(d["finish_reason"] == "stop" for d in spec.dones), spec.dones
    assert "return" not in spec.texts[0] and "farmers" not in spec.texts[1]


def test_logprobs_are_those_of_the_emitted_tokens(llm: Any) -> None:
    plain = run(llm, [CODE], None, n=30, logprobs=2)
    spec = run(llm, [CODE], ngram, n=30, logprobs=2)
    a, b = spec.jobs[0].token_logprobs, plain.jobs[0].token_logprobs
    assert [t for t, _, _ in a] == [t for t, _, _ in b]
    for (_, x, top_x), (_, y, top_y) in zip(a, b):
        assert x == pytest.approx(y, abs=1e-2)
        assert [t for t, _ in top_x] == [t for t, _ in top_y]


def test_grammar_still_holds(llm: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    gbnf = grammar.from_schema(schema)
    prompt = CODE + "def count(items):\n```\n\nThe function's name as JSON: "
    plain = run(llm, [prompt], None, n=60, grammar=gbnf)
    spec = run(llm, [prompt], ngram, n=60, grammar=gbnf)
    assert spec.texts == plain.texts
    assert "name" in json.loads(spec.texts[0])


@pytest.fixture(scope="module")
def servers(smollm2_pyz: Path) -> Iterator[tuple[Server, Server]]:
    args = ("-c", "2048", "--parallel", "2", "--temp", "0")
    on = Server(smollm2_pyz, *args)
    off = Server(smollm2_pyz, *args, "--spec-type", "none")
    yield on, off
    for srv in (on, off):
        print("SERVER STDERR:", srv.stop()[-2000:])


def chat(srv: Server, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none")
    messages = [{"role": "user", "content": CODE}]
    return client.chat.completions.create(model="any", messages=messages, max_tokens=60, **extra)  # type: ignore[call-overload]


def test_server_replies_are_the_same_and_say_their_drafts(
    servers: tuple[Server, Server],
) -> None:
    on, off = servers
    a, b = chat(on), chat(off)
    same_text(a.choices[0].message.content, b.choices[0].message.content)
    timings = a.model_extra["timings"]
    assert timings["draft_n"] > 0 and timings["draft_n_accepted"] > 0, timings
    assert timings["predicted_n"] == a.usage.completion_tokens
    assert "draft_n" not in b.model_extra["timings"]
    pieces = [c.choices[0].delta.content or "" for c in chat(on, stream=True) if c.choices]
    assert "".join(pieces) == a.choices[0].message.content
    assert len(pieces) < a.usage.completion_tokens  # accepted drafts go out together
    # n=2: two slots, one of which reuses the prompt's cached prefix; the other computes it
    # in another batch shape, which can round a near-tie the other way later on (so it does
    # with --spec-type none too): the first choice is compared.
    two = chat(on, n=2)
    assert two.choices[0].message.content == a.choices[0].message.content
    assert [c.finish_reason for c in two.choices] == ["length", "length"]
    metrics = requests.get(f"{on.url}/metrics", timeout=10).text
    drafted = [ln for ln in metrics.splitlines() if ln.startswith("llamapyz_draft_tokens_total")]
    assert drafted and float(drafted[0].split()[-1]) > 0, metrics


def test_ollama_routes_speculate_too(servers: tuple[Server, Server]) -> None:
    body: dict[str, Any] = {"model": "any", "prompt": QUOTE, "raw": True, "stream": False}
    body["options"] = {"num_predict": 40, "temperature": 0}
    replies = [requests.post(f"{s.url}/api/generate", json=body, timeout=120) for s in servers]
    assert [r.status_code for r in replies] == [200, 200]
    same_text(replies[0].json()["response"], replies[1].json()["response"])


def counted(srv: Server, name: str = "llamapyz_draft_tokens_total") -> float:
    """A counter of the server's /metrics (by default: draft tokens verified so far)."""
    metrics = requests.get(f"{srv.url}/metrics", timeout=10).text
    [line] = [ln for ln in metrics.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[-1])


@pytest.fixture(scope="module")
def twins(smollm2_pyz: Path) -> Iterator[tuple[Server, Server]]:
    """Speculation on and off, one slot each, sent the same requests in the same order: their
    caches hold the same prefixes computed in the same batch shapes. (A prompt decoded in one
    batch rather than token by token moved a near tie of SmolLM2's by 0.37 logits, enough to
    change a reply; `servers` has had other requests on one side.)"""
    args = ("-c", "2048", "--parallel", "1", "--temp", "0")
    on = Server(smollm2_pyz, *args)
    off = Server(smollm2_pyz, *args, "--spec-type", "none")
    yield on, off
    for srv in (on, off):
        print("SERVER STDERR:", srv.stop()[-2000:])


def test_tool_calls_are_the_same_with_and_without(twins: tuple[Server, Server]) -> None:
    ask: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    calls, streamed, gains = [], [], []
    for srv in twins:
        before = counted(srv)
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none")
        args: Any = {"model": "m", "messages": ask, "tools": [WEATHER], "tool_choice": "required"}
        out = client.chat.completions.create(**args, max_tokens=60, temperature=0)
        assert out.choices[0].finish_reason == "tool_calls", out
        [call] = out.choices[0].message.tool_calls or []
        calls.append((call.function.name, json.loads(call.function.arguments)))  # type: ignore[union-attr]
        pieces = []
        for chunk in client.chat.completions.create(
            **args, max_tokens=60, temperature=0, stream=True
        ):
            for c in chunk.choices:
                pieces += [
                    d.function.arguments or "" for d in c.delta.tool_calls or [] if d.function
                ]
        streamed.append(json.loads("".join(pieces)))
        gains.append(counted(srv) - before)
    assert calls[0] == calls[1] and calls[0][0] == "get_weather", calls
    assert streamed == [calls[0][1], calls[1][1]]
    # The call's JSON copies the tool's schema from the prompt: drafts were verified.
    assert gains[0] > 0 and gains[1] == 0, gains


def test_ollama_chat_is_the_same_with_and_without(twins: tuple[Server, Server]) -> None:
    on, off = twins
    before = [counted(on), counted(off, "llamapyz_requests_total")]
    body: dict[str, Any] = {"model": "any", "messages": [{"role": "user", "content": CODE}]}
    body |= {"stream": False, "options": {"num_predict": 40, "temperature": 0}}
    replies = [requests.post(f"{s.url}/api/chat", json=body, timeout=120).json() for s in twins]
    same_text(replies[0]["message"]["content"], replies[1]["message"]["content"])
    assert replies[0]["eval_count"] == replies[1]["eval_count"] > 0
    # The Ollama route drafted, and /metrics counts its requests as it counts OpenAI's.
    assert counted(on) > before[0] and counted(off, "llamapyz_requests_total") == before[1] + 1

"""llama-server's OpenAI surface, as real clients use it: model names, tools, usage, logprobs,
n, sampling fields, /v1/responses and the utility routes, against a real .pyz server."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import WEATHER, Server

pytestmark = pytest.mark.slow

TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server(smollm2_server: Server) -> Server:
    return smollm2_server


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def call(server: Server, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.url + path, data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
            kind = response.headers.get("content-type", "")
            return response.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_any_model_name_is_served_under_the_one_id(client: openai.OpenAI) -> None:
    [entry] = client.models.list().data
    assert entry.id == "SmolLM2-135M-Instruct.Q4_1"
    out = client.chat.completions.create(
        model="gpt-4o-mini", messages=ASK, max_tokens=2, temperature=0
    )
    assert out.model == entry.id


def test_a_request_without_model_is_served_by_the_loaded_one(server: Server) -> None:
    # The request llama.cpp's server docs show: no `model` field at all.
    status, chat = call(server, "/v1/chat/completions", {"messages": ASK, "max_tokens": 2})
    assert status == 200, chat
    assert chat["model"] == "SmolLM2-135M-Instruct.Q4_1" and chat["choices"][0]["message"]
    status, done = call(server, "/v1/completions", {"prompt": "Paris is", "max_tokens": 2})
    assert status == 200 and done["choices"][0]["text"], done
    status, vectors = call(server, "/v1/embeddings", {"input": "Paris"})
    assert status == 200 and len(vectors["data"][0]["embedding"]) == 576, vectors
    status, response = call(server, "/v1/responses", {"input": "Hi", "max_output_tokens": 2})
    assert status == 200 and response["status"] in ("completed", "incomplete"), response
    # As `curl URL -d '{…}'` sends it: a form's content type, read as JSON as llama-server does.
    body = json.dumps({"messages": ASK, "max_tokens": 2}).encode()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    request = urllib.request.Request(server.url + "/v1/chat/completions", data=body, headers=form)
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert json.loads(reply.read())["choices"][0]["message"]["content"]


def test_alias_names_the_model(smollm2_pyz: Path) -> None:
    srv = Server(smollm2_pyz, "--alias", "tiny-chat", "-c", "512")
    try:
        assert "serving tiny-chat on" in srv.banner
        cli = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in cli.models.list().data] == ["tiny-chat"]
        out = cli.completions.create(model="anything", prompt="Hi", max_tokens=1)
        assert out.model == "tiny-chat"
    finally:
        srv.stop()


@pytest.mark.parametrize("choice", ["required", "named"])
def test_a_required_or_named_tool_is_called(client: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = (
        "required"
        if choice == "required"
        else {"type": "function", "function": {"name": "get_time"}}
    )
    out = client.chat.completions.create(
        model="m",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice=tool_choice,
        max_tokens=60,
        temperature=0,
    )
    picked = out.choices[0]
    assert picked.finish_reason == "tool_calls"
    [tool_call] = picked.message.tool_calls or []
    assert tool_call.id.startswith("call_") and tool_call.type == "function"
    fn = tool_call.function  # type: ignore[union-attr]
    args = json.loads(fn.arguments)
    if choice == "named":
        assert fn.name == "get_time" and isinstance(args["zone"], str)
    else:
        assert fn.name in ("get_weather", "get_time") and len(args) == 1
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_streamed_tool_calls_reassemble_and_usage_comes_last(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    heads, pieces, finish = [], [], None
    for chunk in chunks:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                assert d.index == 0
                if d.id:
                    heads.append((d.id, d.type, d.function.name if d.function else None))
                elif d.function and d.function.arguments:
                    assert d.function.name is None  # the name comes once
                    pieces.append(d.function.arguments)
            finish = c.finish_reason or finish
    assert len(heads) == 1 and heads[0][1:] == ("function", "get_weather")
    assert len(pieces) > 1  # the arguments come in fragments
    assert json.loads("".join(pieces))["city"]
    assert finish == "tool_calls"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_a_tool_result_goes_back_to_the_model(server: Server, client: openai.OpenAI) -> None:
    convo: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees"},
    ]
    status, shown = call(server, "/apply-template", {"messages": convo, "tools": [WEATHER]})
    assert status == 200
    prompt = shown["prompt"]  # SmolLM2's template has no tools: they are written as text
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nSunny, 24 degrees\n</tool_response>" in prompt
    assert '"name": "get_weather"' in prompt.split("<|im_start|>user")[0]  # in the system part
    out = client.chat.completions.create(
        model="m", messages=convo, tools=[WEATHER], max_tokens=24, temperature=0
    )
    assert out.choices[0].message.content


def test_logprobs_are_the_model_distribution(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="m", messages=ASK, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5
    )
    content = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == out.usage.completion_tokens  # type: ignore[union-attr]
    text = out.choices[0].message.content or ""
    assert "".join(t.token for t in content) == text
    for entry in content:
        top = entry.top_logprobs
        assert len(top) == 5
        assert top[0].token == entry.token and top[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert sum(math.exp(t.logprob) for t in top) <= 1.0 + 1e-6
        assert bytes(entry.bytes or []).decode() == entry.token
    plain = client.chat.completions.create(model="m", messages=ASK, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == text
    done = client.completions.create(
        model="m", prompt="The capital of France is", max_tokens=3, temperature=0, logprobs=2
    )
    lp = done.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == done.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_n_choices_each_in_its_own_slot(server: Server, client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="m", messages=ASK, n=2, max_tokens=8, temperature=1.0, seed=7
    )
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.content != out.choices[1].message.content  # seeds differ
    assert out.usage is not None
    made = out.usage.completion_tokens
    assert made == 16 or all(c.finish_reason for c in out.choices)
    stream = client.chat.completions.create(
        model="m", messages=ASK, n=2, max_tokens=4, temperature=0, stream=True
    )
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts[0] == texts[1] != ""  # greedy: both choices agree
    status, error = call(server, "/v1/chat/completions", {"model": "m", "messages": ASK, "n": 3})
    assert status == 400 and error["error"]["param"] == "n"
    assert "--parallel" in error["error"]["message"]


def test_seed_penalties_and_logit_bias_change_sampling(
    client: openai.OpenAI, server: Server
) -> None:
    def say(**kw: Any) -> str:
        out = client.chat.completions.create(model="m", messages=ASK, max_tokens=8, **kw)
        return out.choices[0].message.content or ""

    assert say(temperature=1.0, seed=11) == say(temperature=1.0, seed=11)
    greedy = say(temperature=0)
    first = call(server, "/tokenize", {"content": greedy})[1]["tokens"][0]
    banned = say(temperature=0, logit_bias={str(first): -100})
    assert not banned.startswith(greedy[:3]) or banned != greedy
    assert say(temperature=0, frequency_penalty=2.0, presence_penalty=2.0, max_completion_tokens=8)


def test_responses_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.responses.create(
        model="m", input="Say hello.", instructions="Answer in a few words.", max_output_tokens=12
    )
    assert whole.object == "response" and whole.status in ("completed", "incomplete")
    assert whole.output_text and whole.usage is not None and whole.usage.output_tokens > 0
    kinds, text = [], ""
    for event in client.responses.create(
        model="m", input="Say hello.", max_output_tokens=12, stream=True
    ):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    for kind in (
        "response.output_item.added",
        "response.output_text.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert text
    called = client.responses.create(
        model="m",
        input="What is the weather in Paris?",
        tools=[{"type": "function", **WEATHER["function"]}],
        tool_choice="required",
        max_output_tokens=60,
    )
    [item] = [o for o in called.output if o.type == "function_call"]
    assert item.name == "get_weather" and json.loads(item.arguments)["city"]


def test_langchain_bind_tools_and_structured_output(server: Server) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    @tool
    def get_weather(city: str) -> str:
        """The current weather of a city."""
        return "sunny"

    class City(BaseModel):
        name: str
        country: str

    llm = ChatOpenAI(
        base_url=server.url + "/v1",
        api_key="unused",
        model="gpt-4o-mini",
        temperature=0,
        max_tokens=60,  # type: ignore[arg-type]
    )
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Rome?")
    assert [c["name"] for c in reply.tool_calls] == ["get_weather"]  # type: ignore[attr-defined]
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)  # type: ignore[attr-defined]
    city = llm.with_structured_output(City).invoke("Name a city in Italy.")
    assert isinstance(city, City) and city.name


def test_utility_routes(server: Server, client: openai.OpenAI) -> None:
    status, tokens = call(server, "/tokenize", {"content": "Hello world", "with_pieces": True})
    assert status == 200 and [t["piece"] for t in tokens["tokens"]] == ["Hello", " world"]
    ids = [t["id"] for t in tokens["tokens"]]
    assert call(server, "/detokenize", {"tokens": ids}) == (200, {"content": "Hello world"})
    status, props = call(server, "/props")
    assert status == 200 and props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 2048
    status, spec = call(server, "/openapi.json")
    assert status == 200 and "/v1/chat/completions" in spec["paths"]
    before = call(server, "/metrics")[1]
    client.completions.create(model="m", prompt="Hi", max_tokens=3, temperature=0)
    after = call(server, "/metrics")[1]

    def value(text: str, name: str) -> float:
        return float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith(name + " ")))

    assert value(after, "llamapyz_requests_total") == value(before, "llamapyz_requests_total") + 1
    assert (
        value(after, "llamapyz_generated_tokens_total")
        >= value(before, "llamapyz_generated_tokens_total") + 1
    )
    for name in (
        "llamapyz_slots_busy",
        "llamapyz_queue_length",
        "llamapyz_tokens_per_second_count",
    ):
        assert name in after


BAD: list[tuple[dict[str, Any], str]] = [
    ({"tools": "x"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    (
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ({"parallel_tool_calls": "maybe"}, "parallel_tool_calls"),
    ({"stream_options": {"include_usage": "lots"}}, "stream_options.include_usage"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"n": 0}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": "a"}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 500}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"seed": "x"}, "seed"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    (
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}},
                    },
                }
            ],
            "tool_choice": "required",
        },
        "tools",
    ),
]


def test_bad_fields_get_a_4xx_naming_them_and_the_server_keeps_serving(
    server: Server, client: openai.OpenAI
) -> None:
    for extra, param in BAD:
        status, error = call(
            server,
            "/v1/chat/completions",
            {"model": "m", "messages": ASK, "max_tokens": 2, **extra},
        )
        assert status == 400, (extra, error)
        assert error["error"]["param"] == param, (extra, error)
        assert error["error"]["message"].startswith(param.split(".")[0]), error
    for path, body, param in [
        ("/v1/completions", {"model": "m", "prompt": "x", "logprobs": 50}, "logprobs"),
        ("/v1/completions", {"model": "m", "prompt": "x", "echo": True}, "echo"),
        ("/v1/responses", {"input": 3}, "input"),
        ("/v1/responses", {"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ("/v1/responses", {"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
    ]:
        status, error = call(server, path, body)
        assert status == 400 and error["error"]["param"] == param, (path, body, error)
    out = client.chat.completions.create(model="m", messages=ASK, max_tokens=2)
    assert out.choices[0].message.content
    assert server.proc.poll() is None


def test_health_is_503_while_the_model_loads(smollm2_pyz: Path) -> None:
    import subprocess
    import time

    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(smollm2_pyz), "--server", "--port", str(port), "--nobrowser"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: list[tuple[int, Any]] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    seen.append((r.status, json.loads(r.read())["status"]))
                    break
            except urllib.error.HTTPError as exc:
                seen.append((exc.code, json.loads(exc.read())["status"]))
            except (ConnectionError, urllib.error.URLError):
                pass  # not accepting yet: the CPU variant is being chosen
            time.sleep(0.005)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert seen[-1] == (200, "ok")
    assert (503, "loading") in seen and set(seen[:-1]) == {(503, "loading")}


def test_a_model_that_fails_to_load_under_server_is_one_line(smollm2_pyz: Path) -> None:
    from conftest import run_pyz

    # The context's memory cannot be had: llama.cpp fails while the server already answers.
    huge = run_pyz(smollm2_pyz, "--server", "--port", "0", "--nobrowser", "-c", "100000000")
    assert huge.returncode == 1 and huge.stdout == ""
    assert "Traceback" not in huge.stderr
    last = huge.stderr.strip().splitlines()[-1]  # after the one line that says where it runs
    assert last.startswith("Error: llama.cpp could not create a context of 100000000 tokens")

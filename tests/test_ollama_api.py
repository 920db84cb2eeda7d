"""Ollama's native API (/api/*), driven by the official `ollama` client against a real .pyz server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from conftest import WEATHER, Server, build_session_pyz, write_tiny_gguf

pytestmark = pytest.mark.slow
HI = [{"role": "user", "content": "What is 2 + 2?"}]
FIM = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]


@pytest.fixture(scope="module")
def server(smollm2_server: Server) -> Server:
    return smollm2_server


@pytest.fixture(scope="module")
def client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Iterator[Server]:
    """A tiny model with fill-in-the-middle tokens, serving one foreign origin besides local ones."""
    gguf = write_tiny_gguf(tmp_path_factory.mktemp("fim") / "fim.gguf", extra_tokens=FIM)
    pyz = build_session_pyz(tmp_path_factory, session_cache, str(gguf))
    srv = Server(pyz, "--chat-template", "chatml", "--cors-origin", "https://app.example")
    yield srv
    srv.stop()


def test_list_show_ps_and_version(client: ollama.Client, server: Server) -> None:
    listed = client.list().models
    assert [m.model for m in listed] == ["SmolLM2-135M-Instruct.Q4_1:latest"]
    entry = listed[0]
    assert entry.details is not None
    assert entry.details.format == "gguf" and entry.details.family == "llama"
    assert entry.details.quantization_level == "Q4_1"
    assert entry.details.parameter_size == "134.52M"
    assert entry.digest is not None and len(entry.digest) == 64
    # The .pyz's manifest holds the weights' sha256: the digest is it, not a guess.
    assert entry.size is not None and entry.size > 90_000_000

    shown = client.show(entry.model or "")
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] == 134515008
    assert shown.capabilities == ["completion", "embedding", "tools"]
    assert "{% for message in messages %}" in (shown.template or "")
    assert "num_ctx        2048" in (shown.parameters or "")

    running = client.ps().models
    assert [m.model for m in running] == [entry.model]
    assert running[0].context_length == 2048
    assert running[0].size_vram == 0
    assert running[0].expires_at is not None and running[0].expires_at.year > 2100

    version = httpx.get(server.url + "/api/version").json()
    assert version == {"version": "0.12.0"}  # the Ollama release whose API this follows


def test_chat_whole_and_streamed_agree(client: ollama.Client) -> None:
    whole = client.chat(model="any-name", messages=HI, options={"num_predict": 12})
    text = whole.message.content or ""
    assert "4" in text
    assert whole.message.role == "assistant"
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.model == "SmolLM2-135M-Instruct.Q4_1:latest"
    assert whole.eval_count is not None and 0 < whole.eval_count <= 12
    assert whole.prompt_eval_count is not None and whole.prompt_eval_count > 10
    for field in ("total_duration", "prompt_eval_duration", "eval_duration"):
        assert (getattr(whole, field) or 0) > 0, field
    assert (whole.total_duration or 0) >= (whole.eval_duration or 0)

    parts = list(client.chat(model="x", messages=HI, options={"num_predict": 12}, stream=True))
    assert len(parts) > 2
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == text
    assert parts[-1].eval_count == whole.eval_count
    assert parts[-1].done_reason == whole.done_reason


ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# SmolLM2 does not call tools on its own: `format` holds it to the shape of one call, so the
# reply is a call every time, and what is tested is that the server finds it and answers it.
ONE_CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": WEATHER["function"]["parameters"],
    },
    "required": ["name", "arguments"],
}


def test_chat_returns_tool_calls_whole_and_streamed(client: ollama.Client) -> None:
    whole = client.chat(
        model="x", messages=ASK, tools=[WEATHER], format=ONE_CALL, options={"num_predict": 40}
    )
    [call] = whole.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(call.function.arguments, dict)
    assert isinstance(call.function.arguments["city"], str)
    assert whole.message.content == ""  # the call's JSON is not also given as text
    assert whole.done_reason == "stop"

    parts = list(
        client.chat(
            model="x",
            messages=ASK,
            tools=[WEATHER],
            format=ONE_CALL,
            options={"num_predict": 40},
            stream=True,
        )
    )
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done  # all calls in one line, as Ollama
    assert with_calls[0].message.tool_calls == whole.message.tool_calls
    assert "".join(p.message.content or "" for p in parts) == ""
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_without_tools_the_same_reply_is_text(client: ollama.Client) -> None:
    out = client.chat(model="x", messages=ASK, format=ONE_CALL, options={"num_predict": 40})
    assert out.message.tool_calls is None
    assert json.loads(out.message.content or "")["name"] == "get_weather"


def test_a_tool_result_goes_back_to_the_model(client: ollama.Client) -> None:
    called: Any = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
    ]
    answered = [
        *called,
        {"role": "tool", "content": "Sunny, 24 degrees", "tool_name": "get_weather"},
    ]
    before = client.chat(model="x", messages=called, tools=[WEATHER], options={"num_predict": 1})
    out = client.chat(model="x", messages=answered, tools=[WEATHER], options={"num_predict": 24})
    assert out.message.content and not out.message.tool_calls
    # The result is read by the model: the prompt is longer by it (SmolLM2's template has no
    # tools, so the call and its result are written as text, as the OpenAI routes do).
    assert (out.prompt_eval_count or 0) > (before.prompt_eval_count or 0) + 8
    assert "Sunny" in (out.message.content or "")


def test_generate_raw_context_and_system(client: ollama.Client) -> None:
    first = client.generate(
        model="x", prompt="The capital of France is", raw=True, options={"num_predict": 4}
    )
    assert "Paris" in first.response
    assert first.done_reason == "length" and first.eval_count == 4
    # The context is the prompt's tokens and the reply's, read again as text.
    assert first.context is not None and len(first.context) > (first.prompt_eval_count or 0)
    # The context carries the conversation on: the next prompt is read after it.
    more = client.generate(
        model="x", prompt=".", raw=True, context=first.context, options={"num_predict": 2}
    )
    assert more.prompt_eval_count == len(first.context) + 1

    plain = client.generate(model="x", prompt="Say hi.", options={"num_predict": 2})
    told = client.generate(
        model="x", prompt="Say hi.", system="You are a pirate.", options={"num_predict": 2}
    )
    # The chat template wraps the prompt, and the system message replaces its default one.
    assert told.prompt_eval_count != plain.prompt_eval_count


def test_generate_streams_ndjson(server: Server) -> None:
    body = {"model": "x", "prompt": "Count: 1, 2, 3,", "raw": True, "options": {"num_predict": 5}}
    with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    last = lines[-1]
    assert last["eval_count"] == 5 and last["done_reason"] == "length"
    for field in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[field], int), field
    assert all("response" in line and "created_at" in line for line in lines)


def test_empty_prompt_loads(server: Server) -> None:
    gen = httpx.post(server.url + "/api/generate", json={"model": "x"}).json()
    assert gen["done"] and gen["done_reason"] == "load" and gen["response"] == ""
    chat = httpx.post(server.url + "/api/chat", json={"model": "x", "messages": []}).json()
    assert chat["done_reason"] == "load" and chat["message"]["content"] == ""


def test_a_body_sent_as_curl_sends_it_is_json(server: Server) -> None:
    """`curl URL -d '{…}'`, as Ollama's own examples do, says it is a form: Ollama reads JSON."""
    body = json.dumps(
        {"model": "x", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    )
    for content_type in ("application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(server.url + "/api/generate", content=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["done"] and r.json()["eval_count"] == 2


def test_embed_and_embeddings(client: ollama.Client) -> None:
    out = client.embed(model="x", input=["a cat", "a dog"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 576
    assert abs(sum(v * v for v in out.embeddings[0]) - 1) < 1e-4
    assert out.embeddings[0] != out.embeddings[1]
    assert (out.prompt_eval_count or 0) >= 4
    short = client.embed(model="x", input="a cat", dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(sum(v * v for v in short) - 1) < 1e-4
    legacy = client.embeddings(model="x", prompt="a cat").embedding
    assert len(legacy) == 576
    assert legacy == pytest.approx(out.embeddings[0], abs=1e-5)


def test_embed_truncates_long_input_by_default(server: Server) -> None:
    long = "cat " * 2100
    cut = httpx.post(server.url + "/api/embed", json={"model": "x", "input": long}, timeout=300)
    assert cut.status_code == 200
    assert 2000 <= cut.json()["prompt_eval_count"] <= 2048
    kept = httpx.post(
        server.url + "/api/embed", json={"model": "x", "input": long, "truncate": False}
    )
    assert kept.status_code == 400
    assert "longer than the 2048 an embedding may take" in kept.json()["error"]


def test_format_json_and_schema(client: ollama.Client) -> None:
    out = client.generate(
        model="x",
        prompt="Describe a person as JSON.",
        format="json",
        options={"num_predict": 48},
    )
    assert out.response.lstrip().startswith("{")
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
    }
    reply = client.chat(
        model="x",
        messages=[{"role": "user", "content": "How old is Bob?"}],
        format=schema,
        options={"num_predict": 24},
    )
    value = json.loads(reply.message.content or "")
    assert isinstance(value["age"], int)


def test_options_reach_the_sampler(client: ollama.Client, server: Server) -> None:
    seeded = {"temperature": 1.5, "seed": 7, "num_predict": 8, "top_k": 100, "top_p": 1}
    a = client.generate(model="x", prompt="Once upon a time", raw=True, options=seeded)
    b = client.generate(model="x", prompt="Once upon a time", raw=True, options=seeded)
    c = client.generate(
        model="x", prompt="Once upon a time", raw=True, options={**seeded, "seed": 8}
    )
    assert a.response == b.response
    assert a.response != c.response
    stopped = client.generate(
        model="x",
        prompt="Count: 1, 2, 3,",
        raw=True,
        options={"num_predict": 16, "temperature": 0, "stop": ["5"]},
    )
    assert "5" not in stopped.response and "4" in stopped.response
    assert stopped.done_reason == "stop"


def test_num_ctx_is_answered_within_the_loaded_context(server: Server) -> None:
    body = {"model": "x", "messages": HI, "stream": False}
    big = httpx.post(
        server.url + "/api/chat",
        json={**body, "options": {"num_ctx": 32768, "num_predict": 2}},
        timeout=120,
    )
    assert big.status_code == 200 and big.headers["x-context-length"] == "2048"
    small = httpx.post(
        server.url + "/api/chat",
        json={**body, "options": {"num_ctx": 40, "num_predict": 100}},
        timeout=120,
    )
    assert small.status_code == 200 and small.headers["x-context-length"] == "40"
    reply = small.json()
    assert reply["prompt_eval_count"] + reply["eval_count"] <= 40
    tiny = httpx.post(server.url + "/api/chat", json={**body, "options": {"num_ctx": 8}})
    assert tiny.status_code == 400
    assert "longer than the context of 8" in tiny.json()["error"]


MSG = [{"role": "user", "content": "hi"}]
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/api/chat", {"messages": MSG, "format": "yaml"}, 'format: give "json" or a JSON schema'),
    ("/api/chat", {"messages": MSG, "format": {"type": "nonsense"}}, "format: cannot turn"),
    ("/api/chat", {"messages": MSG, "think": True}, "does not support thinking"),
    ("/api/chat", {"messages": MSG, "think": "high"}, "think: give true or false"),
    ("/api/chat", {"messages": MSG, "tools": [{"type": "function"}]}, "tools.0.function"),
    ("/api/chat", {"messages": MSG, "tools": "x"}, "tools: Input should be a valid list"),
    (
        "/api/chat",
        {"messages": MSG, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
        "tools.0.function.name",
    ),
    (
        "/api/chat",
        {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
        "messages[0].images: this model has no vision",
    ),
    ("/api/chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ("/api/chat", {"messages": "hi"}, "messages: Input should be a valid list"),
    ("/api/chat", {"messages": MSG, "options": {"mirostat": 2}}, "options.mirostat: is not"),
    ("/api/chat", {"messages": MSG, "options": {"num_gpu": 9}}, "options.num_gpu: is set when"),
    ("/api/chat", {"messages": MSG, "options": {"bogus": 1}}, "options.bogus: is not an option"),
    ("/api/chat", {"messages": MSG, "options": {"num_predict": 0}}, "options.num_predict"),
    ("/api/chat", {"messages": MSG, "options": {"num_predict": "x"}}, "options.num_predict"),
    ("/api/chat", {"messages": MSG, "options": {"temperature": -1}}, "options.temperature"),
    ("/api/chat", {"messages": MSG, "options": {"top_p": 5}}, "options.top_p"),
    ("/api/chat", {"messages": MSG, "options": {"stop": [""]}}, "options.stop"),
    ("/api/chat", {"messages": MSG, "options": "fast"}, "options: Input should be"),
    ("/api/chat", {"messages": MSG, "stream": "maybe"}, "stream: Input should be"),
    ("/api/chat", {"messages": MSG, "logprobs": True}, "logprobs: "),
    ("/api/generate", {"prompt": "hi", "suffix": "bye"}, "no fill-in-the-middle tokens"),
    ("/api/generate", {"prompt": "hi", "template": "{{ .Prompt }}"}, "template: "),
    ("/api/generate", {"prompt": "hi", "images": ["aGk="]}, "images: this model has no vision"),
    ("/api/generate", {"prompt": "hi", "context": [-5]}, "context: token ids run from 0"),
    ("/api/embed", {"input": ""}, "input: give non-empty text"),
    ("/api/embed", {"input": ["a", ""]}, "input[1]: give non-empty text"),
    ("/api/embed", {"input": 5}, "input"),
    ("/api/embed", {"input": "hi", "dimensions": 100000}, "dimensions: the model's"),
    ("/api/embed", {"input": "hi", "dimensions": 0}, "dimensions"),
    ("/api/embeddings", {}, "prompt: Field required"),
    ("/api/show", {"verbose": "loud"}, "verbose: "),
]


@pytest.mark.parametrize(("path", "body", "said"), BAD, ids=[f"{p} {b}" for p, b, _ in BAD])
def test_bad_values_get_a_4xx_error(
    server: Server, path: str, body: dict[str, Any], said: str
) -> None:
    r = httpx.post(server.url + path, json={"model": "x", **body}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert isinstance(error, str) and said in error, error
    assert httpx.get(server.url + "/api/version").status_code == 200  # still serving


def test_a_request_without_model_is_refused_as_ollama_refuses_it(server: Server) -> None:
    # Ollama 0.12's answers: chat and show want a name, the others find no model ''.
    for path, body, status, said in [
        ("/api/chat", {"messages": MSG}, 400, "model is required"),
        ("/api/show", {}, 400, "model is required"),
        ("/api/generate", {"prompt": "hi"}, 404, "model '' not found"),
        ("/api/embed", {"input": "hi"}, 404, "model '' not found"),
        ("/api/embeddings", {"prompt": "hi"}, 404, "model '' not found"),
    ]:
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert (r.status_code, r.json()) == (status, {"error": said}), path
    shown = httpx.post(server.url + "/api/show", json={"name": "x"}, timeout=60)
    assert shown.status_code == 200  # `name`, the older spelling, still names it


def test_malformed_requests_get_ollama_errors(server: Server) -> None:
    broken = httpx.post(server.url + "/api/chat", content=b"{not json")
    assert broken.status_code == 400
    assert broken.json() == {"error": "the request body is not valid JSON"}
    assert httpx.get(server.url + "/api/chat").json() == {"error": "Method Not Allowed"}
    assert httpx.get(server.url + "/api/pull").status_code in (404, 405)
    # The OpenAI routes keep their own error shape.
    v1 = httpx.post(server.url + "/v1/chat/completions", content=b"{not json").json()
    assert v1["error"]["code"] == "invalid_json"


def test_fill_in_the_middle(fim_server: Server) -> None:
    def generate(**body: Any) -> dict[str, Any]:
        r = httpx.post(
            fim_server.url + "/api/generate",
            json={
                "model": "x",
                "stream": False,
                "options": {"num_predict": 3, "temperature": 0},
                **body,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        reply: dict[str, Any] = r.json()
        return reply

    prefix = generate(prompt="the cat", raw=True)["prompt_eval_count"]  # BOS + prefix
    suffix = generate(prompt="home", raw=True)["prompt_eval_count"]  # BOS + suffix
    filled = generate(prompt="the cat", suffix="home")
    # BOS, <fim_prefix>, the prefix, <fim_suffix>, the suffix, <fim_middle>.
    assert filled["prompt_eval_count"] == prefix + suffix - 1 + 3
    assert filled["eval_count"] == 3
    shown = httpx.post(fim_server.url + "/api/show", json={"model": "x"}).json()
    assert "insert" in shown["capabilities"]


def preflight(server: Server, origin: str) -> httpx.Response:
    return httpx.options(
        server.url + "/api/chat",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )


def test_cors_local_origins_allowed_foreign_refused(server: Server) -> None:
    local = preflight(server, "http://localhost:3000")
    assert local.status_code == 204
    assert local.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in local.headers["access-control-allow-methods"]
    assert local.headers["access-control-allow-headers"] == "content-type"
    foreign = preflight(server, "https://evil.example")
    assert foreign.status_code == 403
    assert "--cors-origin https://evil.example" in foreign.json()["error"]
    assert "access-control-allow-origin" not in foreign.headers
    # Not only the preflight: a simple request from a foreign page is refused too.
    sneaky = httpx.post(
        server.url + "/api/generate",
        content=b'{"model": "x", "prompt": "hi"}',
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert sneaky.status_code == 403
    tags = httpx.get(server.url + "/api/tags", headers={"Origin": "http://127.0.0.1:5173"})
    assert tags.status_code == 200
    assert tags.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    v1 = httpx.get(server.url + "/v1/models", headers={"Origin": "https://evil.example"})
    assert v1.status_code == 403 and v1.json()["error"]["code"] == "cors"


def test_cors_origin_flag_allows_one_more(fim_server: Server) -> None:
    named = preflight(fim_server, "https://app.example")
    assert named.status_code == 204
    assert named.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight(fim_server, "https://other.example").status_code == 403

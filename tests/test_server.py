"""The OpenAI-compatible server, driven by the official `openai` client over real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Server, assert_clean_error, default_sigint, run_pyz

KEY = "sesame"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_pyz: Path) -> Iterator[Server]:
    srv = Server(smollm2_pyz, "--api-key", KEY, "-c", "2048")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def post(server: Server, path: str, body: bytes, key: str | None = KEY) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(server.url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_banner_and_models_list(server: Server, client: openai.OpenAI) -> None:
    assert f"on {server.url} (chat page and /v1 API)" in server.banner
    models = client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct.Q4_1"]  # the file's stem
    assert "/" not in models[0].id and " " not in models[0].id


def test_chat_completion_and_stream_agree(client: openai.OpenAI, model_id: str) -> None:
    messages: Any = [{"role": "user", "content": "What is 2 + 2?"}]
    whole = client.chat.completions.create(
        model=model_id, messages=messages, temperature=0, max_tokens=40
    )
    text = whole.choices[0].message.content or ""
    assert "4" in text
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=model_id, messages=messages, temperature=0, max_tokens=40, stream=True
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completion(client: openai.OpenAI, model_id: str) -> None:
    out = client.completions.create(
        model=model_id, prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert "Paris" in out.choices[0].text
    assert out.choices[0].finish_reason == "length"


def test_embeddings_have_the_model_width(client: openai.OpenAI, model_id: str) -> None:
    out = client.embeddings.create(model=model_id, input=["hello world", "bonjour"])
    vectors = [d.embedding for d in out.data]
    assert [len(v) for v in vectors] == [576, 576]  # SmolLM2-135M's n_embd
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3
    assert vectors[0] != vectors[1]


def test_json_response_formats(client: openai.OpenAI, model_id: str) -> None:
    messages: Any = [
        {"role": "user", "content": "Give me a JSON object with a cat's name and age."}
    ]
    out = client.chat.completions.create(
        model=model_id,
        messages=messages,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(out.choices[0].message.content or ""), dict)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
        "required": ["name", "legs"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model=model_id,
        messages=messages,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}},
    )
    value = json.loads(out.choices[0].message.content or "")
    assert set(value) == {"name", "legs"}
    assert isinstance(value["name"], str) and isinstance(value["legs"], int)


def test_api_key_is_required(server: Server, model_id: str) -> None:
    body = json.dumps({"model": model_id, "prompt": "hi", "max_tokens": 1}).encode()
    for key in (None, "wrong"):
        status, error = post(server, "/v1/completions", body, key=key)
        assert status == 401
        assert error["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_bad_requests_get_4xx_and_the_server_keeps_serving(
    server: Server, client: openai.OpenAI, model_id: str
) -> None:
    cases = [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"model": model_id}).encode(), 400, "invalid_value"),
        (
            json.dumps(
                {
                    "model": model_id,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": -5,
                }
            ).encode(),
            400,
            "invalid_value",
        ),
        (
            json.dumps(
                {"model": model_id, "messages": [{"role": "user", "content": "word " * 3000}]}
            ).encode(),
            400,
            "context_length_exceeded",
        ),
    ]
    for body, status, code in cases:
        got, error = post(server, "/v1/chat/completions", body)
        assert (got, error["error"]["code"]) == (status, code), error
        assert error["error"]["message"]
    out = client.completions.create(
        model=model_id, prompt="The capital of France is", temperature=0, max_tokens=4
    )
    assert "Paris" in out.choices[0].text
    assert server.proc.poll() is None


def health(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/health", timeout=30) as response:
        return dict(json.loads(response.read()))


def test_a_client_that_goes_away_stops_its_generation(
    server: Server, client: openai.OpenAI, model_id: str
) -> None:
    before = health(server)["cancelled"]
    stream = client.completions.create(
        model=model_id, prompt="Once upon a time", temperature=0.8, max_tokens=1500, stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    # The server counts the requests it stopped because their client went away.
    deadline = time.monotonic() + 120
    while health(server)["cancelled"] == before:
        assert time.monotonic() < deadline, health(server)
        time.sleep(0.1)
    status = health(server)
    assert status["busy"] == 0 and status["cancelled"] == before + 1
    out = client.completions.create(
        model=model_id, prompt="The capital of France is", temperature=0, max_tokens=4
    )
    assert "Paris" in out.choices[0].text


def test_chat_page_is_served(server: Server) -> None:
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        page = response.read().decode()
    assert "<title>llamapyz</title>" in page
    # Nothing from a CDN: no script, style or image is fetched from anywhere else.
    assert not re.search(r"""\b(src|href)=["']?(https?:)?//""", page)
    assert 'fetch("http' not in page and "import(" not in page
    assert "marked v18" in page  # the Markdown renderer is inlined, not linked


def test_port_in_use_is_one_line(smollm2_pyz: Path, server: Server) -> None:
    result = run_pyz(smollm2_pyz, "--server", "--port", str(server.port), "--nobrowser")
    assert_clean_error(
        result, 1, f"cannot listen on 127.0.0.1:{server.port} (Address already in use)"
    )


def test_embedding_flag_and_json_schema_flag(smollm2_pyz: Path, tmp_path: Path) -> None:
    out = run_pyz(smollm2_pyz, "--embedding", "-p", "hello world")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 576
    schema = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
    out = run_pyz(
        smollm2_pyz, "-p", "The capital of France as JSON:", "-j", schema, "--temp", "0", "-n", "40"
    )
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) == {"city"}
    gbnf = tmp_path / "yn.gbnf"
    gbnf.write_text('root ::= " yes" | " no"\n')
    out = run_pyz(
        smollm2_pyz, "-p", "Is the sky blue? Answer:", "--grammar", str(gbnf), "--temp", "0"
    )
    assert out.stdout in (" yes", " no")
    gbnf.write_text("root ::= (\n")
    bad = run_pyz(smollm2_pyz, "-p", "x", "--grammar", str(gbnf))
    assert_clean_error(bad, 1, "the grammar is not valid GBNF")


def test_server_without_key_and_a_warning_for_open_addresses(smollm2_pyz: Path) -> None:
    srv = Server(smollm2_pyz, "--host", "0.0.0.0")
    try:
        assert "warning: listening on 0.0.0.0" in srv.banner
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
    finally:
        srv.stop()
    assert os.environ.get("LLAMAPYZ_API_KEY") is None


def test_concurrent_requests_share_the_forward_pass(
    server: Server, client: openai.OpenAI, model_id: str
) -> None:
    import threading

    prompts = [
        "The capital of France is",
        "The capital of Italy is",
        "The capital of Germany is",
        "The capital of Spain is",
    ]
    answers: dict[str, str] = {}

    def ask(prompt: str) -> None:
        out = client.completions.create(model=model_id, prompt=prompt, temperature=0, max_tokens=48)
        answers[prompt] = out.choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    busiest = 0
    while any(t.is_alive() for t in threads):
        busiest = max(busiest, health(server)["busy"])
        time.sleep(0.02)
    assert busiest >= 2, "the requests never ran together"
    assert "Paris" in answers[prompts[0]] and "Rome" in answers[prompts[1]]
    assert "Berlin" in answers[prompts[2]] and "Madrid" in answers[prompts[3]]


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("started", [default_sigint, ignore_sigint], ids=["default", "ignored"])
def test_sigint_stops_the_server_unless_it_was_started_ignoring_it(
    tiny_pyz: Path, started: Callable[[], None]
) -> None:
    # `nohup ./m.pyz --server &` starts it with SIGINT ignored: it stays ignored, as nohup
    # means (uvicorn would install its own handler); SIGTERM stops it either way.
    srv = Server(tiny_pyz, preexec_fn=started)
    srv.proc.send_signal(signal.SIGINT)
    if started is default_sigint:
        assert srv.proc.wait(timeout=30) == 130  # as a shell reports Ctrl-C
        return
    time.sleep(1.0)
    assert srv.proc.poll() is None
    with urllib.request.urlopen(srv.url + "/health", timeout=30) as r:
        assert r.status == 200
    srv.stop()
    assert srv.proc.returncode == -signal.SIGTERM  # uvicorn ends by raising it again

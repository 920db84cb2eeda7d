"""Images through the server, as a user sees them: a .pyz packed with the tiny projector takes
OpenAI's image_url parts, /v1/responses' input_image and Ollama's images; the prompt's tokens
count the image's; the scheduler decodes an image once and reuses it the next turn (/metrics);
several clients at once, some with images, all finish; every bad image is a 400 naming the
problem, and the server goes on serving."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import requests
from conftest import Server, build_session_pyz, image_bytes, write_tiny_projector

pytestmark = pytest.mark.slow
IMAGE_TOKENS = 16  # the tiny projector: 32 px images in 8 px patches
# More tokens than without the image: its own, and the text read in two runs around it may
# take one more.
SPLIT = (IMAGE_TOKENS, IMAGE_TOKENS + 1)
CTX = 512
QUESTION = "What is this?"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pictures")
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        (d / f"{name}.png").write_bytes(image_bytes("png", 40, 30, seed=seed))
    return d


@pytest.fixture(scope="module")
def vision_pyz(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> Path:
    projector = write_tiny_projector(tmp_path_factory.mktemp("proj") / "proj.gguf", width=64)
    return build_session_pyz(
        tmp_path_factory, session_cache, str(tiny_gguf), "--mmproj", str(projector)
    )


@pytest.fixture(scope="module")
def server(vision_pyz: Path) -> Iterator[Server]:
    srv = Server(vision_pyz, "-c", str(CTX), "--parallel", "4", "-n", "8")
    yield srv
    print("SERVER STDERR:", srv.stop()[-3000:])


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def user(*images: str, text: str = QUESTION) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def chat(server: Server, messages: list[dict[str, Any]], **fields: Any) -> requests.Response:
    body = {"messages": messages, "max_tokens": 8, "seed": 5, **fields}
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def counter(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"llamapyz_{name}_total ")]
    return float(line.split()[-1])


def test_the_openai_client_sends_an_image_and_its_tokens_count(
    client: openai.OpenAI, pictures: Path
) -> None:
    plain = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, seed=5
    )
    seen = client.chat.completions.create(
        model="m", messages=user(data_url(pictures / "a.png")), max_tokens=8, seed=5
    )
    two = client.chat.completions.create(
        model="m", messages=user(data_url(pictures / "a.png"), data_url(pictures / "b.png"))
    )
    assert seen.choices[0].message.content
    assert seen.usage is not None and plain.usage is not None and two.usage is not None
    assert two.usage.prompt_tokens == seen.usage.prompt_tokens + IMAGE_TOKENS
    # the text is tokenized in two runs around the image: one token more, or none
    assert seen.usage.prompt_tokens - plain.usage.prompt_tokens in SPLIT
    raw = base64.b64encode((pictures / "a.png").read_bytes()).decode()  # base64 without data:
    again = client.chat.completions.create(model="m", messages=user(raw), max_tokens=8, seed=5)
    assert again.choices[0].message.content == seen.choices[0].message.content


def test_same_image_and_seed_same_text_another_image_other_logprobs(
    server: Server, pictures: Path
) -> None:
    def first_logprobs(name: str) -> list[float]:
        reply = chat(server, user(data_url(pictures / name)), logprobs=True, top_logprobs=5)
        assert reply.status_code == 200, reply.text
        first = reply.json()["choices"][0]["logprobs"]["content"][0]
        return [t["logprob"] for t in first["top_logprobs"]]

    texts = [
        chat(server, user(data_url(pictures / "a.png")), temperature=1.0).json()["choices"][0]
        for _ in range(2)
    ]
    assert texts[0]["message"]["content"] == texts[1]["message"]["content"]
    a, a_again, b = first_logprobs("a.png"), first_logprobs("a.png"), first_logprobs("b.png")
    assert max(abs(x - y) for x, y in zip(a, a_again)) < 1e-4
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3


def test_the_second_turn_with_the_same_image_encodes_nothing(
    server: Server, pictures: Path
) -> None:
    encoded, hits = counter(server, "images_encoded"), counter(server, "image_cache_hits")
    turn = user(data_url(pictures / "c.png"))
    first = chat(server, turn)
    assert first.status_code == 200, first.text
    assert counter(server, "images_encoded") == encoded + 1
    answer = first.json()["choices"][0]["message"]["content"]
    turn += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And then?"},
    ]
    second = chat(server, turn)
    assert second.status_code == 200, second.text
    assert counter(server, "images_encoded") == encoded + 1  # the image's tokens were reused
    assert counter(server, "image_cache_hits") == hits + 1
    assert second.json()["usage"]["prompt_tokens"] > first.json()["usage"]["prompt_tokens"]


def test_four_clients_two_with_images_all_complete(server: Server, pictures: Path) -> None:
    one = chat(server, user(data_url(pictures / "a.png"))).json()["usage"]["prompt_tokens"]
    asks = [
        user(data_url(pictures / "a.png")),
        [{"role": "user", "content": QUESTION}],
        user(data_url(pictures / "d.png"), data_url(pictures / "b.png")),
        [{"role": "user", "content": QUESTION}],
    ]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda m: chat(server, m, max_tokens=16), asks))
    for reply in replies:
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
    counts = [r.json()["usage"]["prompt_tokens"] - one for r in replies]
    assert counts[0] == 0 and counts[2] == IMAGE_TOKENS  # the second image's tokens
    assert counts[1] == counts[3] and -counts[1] in SPLIT


def test_responses_take_input_image(client: openai.OpenAI, pictures: Path) -> None:
    plain = client.responses.create(model="m", input=QUESTION, max_output_tokens=8)
    content = [
        {"type": "input_image", "image_url": data_url(pictures / "a.png"), "detail": "auto"},
        {"type": "input_text", "text": QUESTION},
    ]
    seen = client.responses.create(
        model="m", input=[{"role": "user", "content": content}], max_output_tokens=8
    )
    assert seen.output_text
    assert seen.usage is not None and plain.usage is not None
    assert seen.usage.input_tokens - plain.usage.input_tokens in SPLIT


def test_the_ollama_client_sends_images(server: Server, pictures: Path) -> None:
    client = ollama.Client(host=server.url)
    plain = client.chat(model="m", messages=[{"role": "user", "content": QUESTION}])
    seen = client.chat(
        model="m",
        messages=[{"role": "user", "content": QUESTION, "images": [pictures / "a.png"]}],
    )
    assert seen.message.content
    assert (seen.prompt_eval_count or 0) - (plain.prompt_eval_count or 0) in SPLIT
    made = client.generate(model="m", prompt=QUESTION, images=[(pictures / "b.png").read_bytes()])
    alone = client.generate(model="m", prompt=QUESTION)
    assert made.done and made.done_reason in ("stop", "length")  # a random model may stop at once
    assert (made.prompt_eval_count or 0) - (alone.prompt_eval_count or 0) in SPLIT
    shown = client.show("m")
    assert shown.capabilities is not None and "vision" in shown.capabilities
    info = requests.post(f"{server.url}/api/show", json={"model": "m"}, timeout=10).json()
    assert info["projector_info"]["clip.projector_type"] == "mlp"
    assert info["projector_info"]["clip.vision.image_size"] == 32


def png_header(width: int, height: int) -> bytes:
    return image_bytes("png", 4, 4)[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD: list[tuple[str, str]] = [
    ("data:image/png;base64,@@not base64@@", "messages[0].content[0]: is not valid base64"),
    (b64(b"RIFF\0\0\0\0WEBPVP8 "), "messages[0].content[0] is a WebP image, which cannot be read"),
    (b64(b"hello, world"), "messages[0].content[0] is not an image that can be read"),
    (b64(png_header(10_000, 10_000)), "is 10000 x 10000 pixels, over the 50 megapixels"),
    (b64(image_bytes("png", 40, 30)[:60]), "could not be decoded as PNG"),
    ("http://127.0.0.1:9/cat.png", "unless the server runs with --allow-remote-media"),
    ("file:///etc/passwd", "file:// URLs are read only under --media-path DIR"),
    ("ftp://example.com/cat.png", "ftp:// URLs are not read"),
]


@pytest.mark.parametrize(("url", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_image_is_a_400_naming_it(
    server: Server, pictures: Path, url: str, message: str
) -> None:
    reply = chat(server, user(url))
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    ollama_reply = requests.post(
        f"{server.url}/api/generate",
        json={"model": "m", "prompt": "hi", "images": [url.split(",")[-1]], "stream": False},
        timeout=60,
    )
    assert ollama_reply.status_code == 400 and "images[0]" in ollama_reply.json()["error"]
    assert chat(server, user(data_url(pictures / "a.png"))).status_code == 200  # still serving


def test_too_large_and_too_many_image_tokens_are_400s(server: Server, pictures: Path) -> None:
    huge = "data:image/png;base64," + "A" * 28_000_000  # 21 MB once decoded
    reply = chat(server, user(huge))
    assert reply.status_code == 400
    assert "is 21.0 MB, over the 20 MB an image may be" in reply.json()["error"]["message"]
    many = [data_url(pictures / "a.png")] * (CTX // IMAGE_TOKENS + 1)
    reply = chat(server, user(*many))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert (
        f"({len(many) * IMAGE_TOKENS} of them for {len(many)} images), more than the "
        in (error["message"])
    )
    assert chat(server, user(data_url(pictures / "a.png"))).status_code == 200


def test_the_marker_typed_beside_an_image_is_a_400_and_alone_plain_text(
    server: Server, pictures: Path
) -> None:
    typed = chat(server, user(data_url(pictures / "a.png"), text="what is <__media__>?"))
    assert typed.status_code == 400
    assert typed.json()["error"]["message"] == (
        "messages: the text holds <__media__>, which stands for an image in a prompt with "
        "images; leave it out of the text"
    )
    asked = {"model": "m", "prompt": "<__media__>?", "images": [b64(image_bytes("png"))]}
    ollama_reply = requests.post(f"{server.url}/api/generate", json=asked, timeout=60)
    assert ollama_reply.status_code == 400 and "images: the text holds" in ollama_reply.text
    assert chat(server, [{"role": "user", "content": "what is <__media__>?"}]).status_code == 200


def test_a_model_without_a_projector_refuses_images(tiny_pyz: Path, pictures: Path) -> None:
    srv = Server(tiny_pyz, "-c", str(CTX))
    try:
        reply = chat(srv, user(data_url(pictures / "a.png")))
        assert reply.status_code == 400
        assert reply.json()["error"]["message"] == (
            "messages[0].content[0]: this model has no vision projector; pack it with --mmproj "
            "or pass --mmproj"
        )
        asked = {"model": "m", "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}
        refused = requests.post(f"{srv.url}/api/chat", json=asked, timeout=30)
        assert refused.status_code == 400
        assert "messages[0].images: this model has no vision projector" in refused.json()["error"]
        shown = requests.post(f"{srv.url}/api/show", json={"model": "m"}, timeout=10).json()
        assert "vision" not in shown["capabilities"] and "projector_info" not in shown
        assert chat(srv, [{"role": "user", "content": "hi"}]).status_code == 200
    finally:
        srv.stop()


class _Pictures(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_remote_and_file_urls_where_the_flags_allow(vision_pyz: Path, pictures: Path) -> None:
    handler = lambda *a: _Pictures(*a, directory=str(pictures))  # noqa: E731
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    flags = ("-c", str(CTX), "-n", "8", "--allow-remote-media", "--media-path", str(pictures))
    srv = Server(vision_pyz, *flags)
    try:
        fields = {"logprobs": True, "top_logprobs": 3}
        inline = chat(srv, user(data_url(pictures / "a.png")), **fields)
        assert inline.status_code == 200, inline.text
        for url in (
            f"http://127.0.0.1:{web.server_port}/a.png",
            (pictures / "a.png").as_uri(),
        ):
            fetched = chat(srv, user(url), **fields)
            assert fetched.status_code == 200, fetched.text
            got, want = fetched.json()["choices"][0], inline.json()["choices"][0]
            assert got["message"]["content"] == want["message"]["content"]
            pairs = zip(got["logprobs"]["content"], want["logprobs"]["content"])
            assert max(abs(x["logprob"] - y["logprob"]) for x, y in pairs) < 1e-4
        missing = chat(srv, user(f"http://127.0.0.1:{web.server_port}/nope.png"))
        assert missing.status_code == 400 and "could not fetch" in missing.text
        outside = chat(srv, user("file:///etc/hostname"))
        assert outside.status_code == 400
        assert f"is not under --media-path {pictures.resolve()}" in outside.text
    finally:
        srv.stop()
        web.shutdown()


class _Awkward(http.server.BaseHTTPRequestHandler):
    """Bodies past the caps: a Content-Length over 20 MB, 21 MB with no length, and a PNG that
    comes a byte every half second."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path == "/big.png":
            self.send_header("Content-Length", "20000001")
        self.end_headers()
        body = image_bytes("png", 40, 30)
        try:
            if self.path == "/slow.png":
                for i in range(30):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                for _ in range(21_000_000 // len(body) + 1):
                    self.wfile.write(body)
        except OSError:
            pass  # the server stopped reading: refused


def test_remote_fetches_past_the_caps_are_400s_and_the_server_serves_on(
    vision_pyz: Path, pictures: Path
) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Awkward)
    web.daemon_threads = True
    threading.Thread(target=web.serve_forever, daemon=True).start()
    srv = Server(vision_pyz, "-c", str(CTX), "-n", "8", "--allow-remote-media")
    base = f"http://127.0.0.1:{web.server_port}"
    try:
        for name in ("big.png", "endless.png"):
            refused = chat(srv, user(f"{base}/{name}"))
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["message"] == (
                f"messages[0].content[0]: {base}/{name} is over the 20 MB an image may be"
            )
        began = time.monotonic()
        slow = chat(srv, user(f"{base}/slow.png"))
        spent = time.monotonic() - began
        assert slow.status_code == 400, slow.text
        assert slow.json()["error"]["message"] == (
            f"messages[0].content[0]: {base}/slow.png took over 10 s to fetch"
        )
        assert 10 <= spent < 13  # the cap is 10 s in all, however slowly the bytes come
        assert chat(srv, user(data_url(pictures / "a.png"))).status_code == 200
    finally:
        srv.stop()
        web.shutdown()

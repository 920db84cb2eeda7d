"""Images across the server's slots, as clients see them: an image that another client sent on
another slot is not encoded again (its embeddings are kept in memory) and gives the same reply
as when it was encoded; a text-only client goes on generating while another client's images
are decoded, one image a step; a Qwen2-VL image (M-RoPE: fewer positions than tokens) read on
slot 1 beside another client's sequence answers as the one-shot does, this turn and the next."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import (
    Server,
    build_session_pyz,
    image_bytes,
    pack,
    run_pyz,
    write_tiny_gguf,
    write_tiny_projector,
)
from test_vision import mtmd_greedy

pytestmark = pytest.mark.slow
QUESTION = "What is this?"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pictures")
    for name, seed in (("a", 1), ("b", 2), ("c", 3), ("d", 4)):
        (d / f"{name}.png").write_bytes(image_bytes("png", 64, 64, seed=seed))
    return d


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> Iterator[Server]:
    projector = write_tiny_projector(tmp_path_factory.mktemp("proj") / "proj.gguf", width=64)
    pyz = build_session_pyz(
        tmp_path_factory, session_cache, str(tiny_gguf), "--mmproj", str(projector)
    )
    # -fa off: llama.cpp's CPU flash attention sums a one-token step's parts in FP16 per thread,
    # which rounds by where a sequence's cells lie; slot 1's image would read a hair apart.
    srv = Server(pyz, "-c", "4096", "--parallel", "2", "-fa", "off")
    yield srv
    print("SERVER STDERR:", srv.stop()[-3000:])


def user(*images: Path, text: str = QUESTION) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": base64.b64encode(p.read_bytes()).decode()}}
        for p in images
    ]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def chat(url: str, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": 8, "temperature": 0, **fields}
    with requests.Session() as client:  # each its own client (connection)
        reply = client.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def counter(server: Server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"llamapyz_{name}_total ")]
    return float(line.split()[-1])


class Stream:
    """A streamed chat completion read on a thread: the time each piece of text came."""

    def __init__(self, url: str, messages: list[dict[str, Any]], **fields: Any) -> None:
        body = {"messages": messages, "stream": True, "temperature": 0, **fields}
        self.reply = requests.post(
            f"{url}/v1/chat/completions", json=body, stream=True, timeout=300
        )
        assert self.reply.status_code == 200, self.reply.text
        self.times: list[float] = []
        self.finish: Any = None
        self.began = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.began.wait(120), "no text came"

    def _read(self) -> None:
        try:
            for line in self.reply.iter_lines():
                if not line.startswith(b"data: {"):
                    continue
                for choice in json.loads(line[6:])["choices"]:
                    if choice["delta"].get("content"):
                        self.times.append(time.monotonic())
                        self.began.set()
                    self.finish = choice.get("finish_reason") or self.finish
        except Exception:
            if not self.closed:  # the reading ends with close(); before it, an error
                self.finish = "error"
                raise

    closed = False

    def close(self) -> None:
        self.closed = True
        self.reply.close()  # the server cancels the rest


def no_end(extra: dict[str, Any]) -> dict[str, Any]:
    """Fields that keep a reply going to max_tokens: the tokens that end a turn banned
    (the tiny model's <unk>, <s>, </s>; SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>)."""
    return {"logit_bias": {"0": -100, "1": -100, "2": -100}, **extra}


def test_an_image_another_client_sent_on_another_slot_is_not_encoded_again(
    server: Server, pictures: Path
) -> None:
    encoded, hits = counter(server, "images_encoded"), counter(server, "image_embedding_hits")
    fields = {"logprobs": True, "top_logprobs": 3}
    first = chat(server.url, user(pictures / "a.png"), **fields)  # encoded: slot 0
    assert counter(server, "images_encoded") == encoded + 1
    # another client's long text-only reply takes slot 0 (the longest shared prefix: the
    # template's start), so slot 0 no longer holds the image; slot 1 never did
    busy = Stream(
        server.url, [{"role": "user", "content": "Tell me"}], **no_end({}), max_tokens=3000
    )
    try:
        again = chat(server.url, user(pictures / "a.png"), **fields)  # slot 1: no prefix
        assert busy.finish is None  # slot 0 was busy all along: the image went to slot 1
    finally:
        busy.close()
    assert counter(server, "images_encoded") == encoded + 1  # encoded once
    assert counter(server, "image_embedding_hits") == hits + 1
    got, want = again["choices"][0], first["choices"][0]
    assert got["message"]["content"] == want["message"]["content"]
    pairs = list(zip(got["logprobs"]["content"], want["logprobs"]["content"]))
    assert pairs and max(abs(x["logprob"] - y["logprob"]) for x, y in pairs) < 1e-4
    assert again["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]


def test_a_text_only_client_goes_on_while_another_clients_images_decode(
    smollm2_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    """SmolLM2 and a projector as wide (576) that makes 144 tokens of each image: decoding
    four takes long enough (seconds, on a CPU) to see the text-only client's tokens keep coming between them."""
    wide = write_tiny_projector(tmp_path / "wide.gguf", width=576, image=48, patch=4)
    srv = Server(smollm2_pyz, "--mmproj", str(wide), "-c", "4096", "--parallel", "2")
    try:
        plain = Stream(
            srv.url, [{"role": "user", "content": "Count."}], **no_end({}), max_tokens=400
        )
        try:
            images = [pictures / f"{n}.png" for n in "abcd"]
            seen = chat(srv.url, user(*images), max_tokens=4)
            done = time.monotonic()
            assert plain.finish is None  # the text-only client was generating throughout
        finally:
            plain.close()
    finally:
        srv.stop()
    spent = seen["timings"]
    assert seen["usage"]["prompt_tokens"] > 4 * 144
    end = done - spent["predicted_ms"] / 1000
    start = end - spent["prompt_ms"] / 1000  # the image prompt read, by the server's clock
    during = [t for t in plain.times if start <= t <= end]
    edges = [start, *during, end]
    gap = max(b - a for a, b in zip(edges, edges[1:]))
    # one image a step: the longest wait for a token is about one image's decode, not four
    assert len(during) >= 3, (len(during), spent)
    assert gap < 0.6 * (end - start), (gap, end - start, len(during))


def test_an_mrope_image_on_slot_1_beside_another_client_answers_as_the_one_shot(
    tmp_path: Path, pictures: Path
) -> None:
    """Qwen2-VL's M-RoPE: a 64 px picture in 4 px patches is 8 x 8 tokens, which take 8
    positions (mtmd's n_pos), not 64. With another client generating on slot 0, the image goes
    to slot 1, whose text after it the scheduler reads at the prompt's positions: the one-shot's
    greedy text, and llama.cpp's own (`mtmd_greedy`). The next turn resends the image: the
    slot's copy is reused (nothing encoded, a cache hit) and the reply is a fresh one-shot's of
    the whole conversation."""
    model = write_tiny_gguf(tmp_path / "qwen.gguf", architecture="qwen2vl")
    proj = write_tiny_projector(tmp_path / "proj.gguf", width=64, patch=4, kind="qwen2vl")
    pyz = tmp_path / "qwen.pyz"
    built = pack("build", str(model), "--mmproj", str(proj), "-o", str(pyz))
    assert built.returncode == 0, built.stderr
    image = pictures / "a.png"
    # Flash attention off on both sides: llama.cpp's CPU kernel splits a one-token step's
    # memory among its threads and sums each part's values in FP16, so a sequence whose cells
    # lie elsewhere (slot 1's, after slot 0's) rounds otherwise (1e-2 in a logit with this
    # image), which can flip a near tie; this test compares positions, not that rounding.
    greedy = ("-n", "12", "--temp", "0", "-fa", "off", "--verbose", "--image", str(image))

    def one_shot(text: str) -> tuple[str, int]:
        shot = run_pyz(pyz, *greedy, "-p", text)
        assert shot.returncode == 0, shot.stderr
        (line,) = [x for x in shot.stderr.splitlines() if x.startswith("prompt: ")]
        assert line.endswith(" (64 for 1 image)"), line
        return shot.stdout, int(line.split()[1])

    srv = Server(pyz, "-c", "8192", "--parallel", "2", "-fa", "off")
    try:
        b64 = base64.b64encode(image.read_bytes()).decode()

        def generate(text: str) -> dict[str, Any]:
            body = {"model": "m", "prompt": text, "images": [b64], "raw": True, "stream": False}
            body["options"] = {"temperature": 0, "num_predict": 12}
            reply = requests.post(f"{srv.url}/api/generate", json=body, timeout=300)
            assert reply.status_code == 200, reply.text
            return dict(reply.json())

        busy = Stream(
            srv.url, [{"role": "user", "content": "Tell me"}], **no_end({}), max_tokens=7000
        )
        try:
            first = generate("hello")  # slot 0 is busy: slot 1
            assert counter(srv, "images_encoded") == 1
            then = "hello" + first["response"] + " And then?"
            second = generate(then)  # slot 1 again, the only free one
            assert busy.finish is None  # slot 0 was generating beside both turns
        finally:
            busy.close()
        assert counter(srv, "images_encoded") == 1  # the second turn encoded nothing
        assert counter(srv, "image_cache_hits") == 1  # the slot held the image's tokens
    finally:
        srv.stop()
    for reply, text in ((first, "hello"), (second, then)):
        assert (reply["response"], reply["prompt_eval_count"]) == one_shot(text)
        said, facts = mtmd_greedy(model, proj, image, text, 12, flash_attn="off")
        assert facts == (64, 8, True) and reply["response"] == said

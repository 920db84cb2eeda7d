"""The Ollama row: `/api/chat` streamed against `/v1/chat/completions` streamed, on one server.

One `./model.pyz --server` serves both. A client sends the same conversation to each, with
temperature 0 and the same token limit, reads the stream to its end, and its rate is the
tokens generated over the wall time of the request (HTTP, prompt and framing included). Both
sides decode the same greedy tokens, so the count is the one Ollama's last line gives
(`eval_count`). The sides alternate which goes first. The row holds the Ollama dialect to
the OpenAI one's speed: its framing (NDJSON, per-line timestamps) must cost nothing.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from benchmarks.context import Context
from benchmarks.procs import BenchError
from benchmarks.rows_server import OPENER, REQUEST_TIMEOUT_S, Server, free_port
from benchmarks.rows_start import Setup
from benchmarks.table import Goal, Row

N_TOKENS = 64
MAX_RUNS = 5
GOAL = Goal(">=", 0.95, on_ratio=True)
KEY = "server_ollama_chat_stream"
NAME = "server, /api/chat streamed, generated tok/s, vs /v1/chat/completions streamed"
PEER_NAME = "/v1/chat/completions"
# One template for both sides, that any vocabulary can spell (the smoke run's tiny GGUF
# cannot tokenize chat markers): the row measures the dialects, not a template.
TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}"


def _stream(url: str, body: dict[str, Any]) -> list[bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as resp:
        return [line for line in resp if line.strip()]


def _ollama(server: Server, prompt: str) -> tuple[int, float]:
    body = {
        "model": server.model_id,
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": N_TOKENS},
    }
    start = time.perf_counter()
    lines = _stream(f"{server.base}/api/chat", body)
    wall = time.perf_counter() - start
    last = json.loads(lines[-1])
    if not last.get("done"):
        raise BenchError(f"/api/chat ended without its last line: {lines[-1][:200]!r}")
    return int(last["eval_count"]), wall


def _openai(server: Server, prompt: str) -> float:
    body = {
        "model": server.model_id,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": N_TOKENS,
        "stream": True,
    }
    start = time.perf_counter()
    lines = _stream(f"{server.base}/v1/chat/completions", body)
    wall = time.perf_counter() - start
    if not lines or b"[DONE]" not in lines[-1]:
        raise BenchError("/v1/chat/completions ended without [DONE]")
    return wall


def ollama_rows(ctx: Context, setup: Setup, prompt: str) -> list[Row]:
    port = free_port()
    template = ctx.work / "bench-chat.jinja"
    template.write_text(TEMPLATE, encoding="utf-8")
    server = Server(
        "llamapyz --server",
        [str(setup.pyz), "--server", "--port", str(port), "--nobrowser"]
        + ["-t", str(setup.threads), "--chat-template", str(template)],
        None,
        ctx.env,
        port,
    )
    runs = min(ctx.reps, MAX_RUNS)
    ours: list[float] = []
    peer: list[float] = []
    counts: list[int] = []
    ctx.log(f"Ollama row: /api/chat against /v1/chat/completions, streamed ({runs} runs) ...")
    try:
        server.start()
        server.wait_ready()
        _ollama(server, prompt)  # untimed: warms both paths' shared slot
        _openai(server, prompt)
        for rep in range(runs):
            ctx.quiet()
            sides = ("ours", "peer") if rep % 2 == 0 else ("peer", "ours")
            for side in sides:
                if side == "ours":
                    tokens, wall = _ollama(server, prompt)
                    counts.append(tokens)
                    ours.append(tokens / wall)
                else:
                    wall = _openai(server, prompt)
                    peer.append((counts[-1] if counts else N_TOKENS) / wall)
            ctx.log(f"  run {rep + 1}/{runs}: /api/chat {ours[-1]:.1f}, /v1 {peer[-1]:.1f} tok/s")
    finally:
        server.stop()
    return [
        Row(
            key=KEY,
            name=NAME,
            unit="tok/s",
            ours=ours,
            peer_name=PEER_NAME,
            peer=peer,
            goal=GOAL,
            extra={"command": server.cmd, "prompt": prompt, "tokens": counts},
        )
    ]

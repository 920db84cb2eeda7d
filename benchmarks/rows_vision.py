"""Vision rows: a .pyz packed with its projector against llama-server --mmproj on the same pair
(benchmarks/vision_pair.py), and what a first start with an image writes.

Both servers run side by side for the whole measurement with SLOTS slots and CTX of context, the
same threads and chat template (chatml, which any vocabulary spells), and get one untimed image
request and one untimed text request first. Each repetition's picture is new to both
(a fresh PNG, the same for both sides), so neither finds its embeddings or its tokens cached;
the sides take turns going first.

- Time to first token: one client, /v1/chat/completions streamed, the picture then IMAGE_TEXT,
  temperature 0, FIRST_TOKENS tokens at most; from sending the request (encoded beforehand) to
  the first chunk that carries text (or ends the reply, where its first token is its end), as a
  client sees it: the upload, decoding the PNG, encoding the image, reading its tokens, a step.
- Text beside images: three clients each stream up to TEXT_TOKENS tokens of a text prompt while
  a fourth sends IMAGES_PER_RUN fresh pictures, one at the start and the next each time the
  text clients got another share of their text (by characters; or once the last picture is
  answered, if later); the
  rate is the text clients' tokens (`usage.completion_tokens`) over the time until the last of
  them ended. Both servers encode and decode an image in the loop that steps the other slots,
  so the text waits meanwhile; both do the same work, and the quicker with images and with
  the text between them wins.
- Disk: what a first start with --image writes beyond one without (rows_start.image_disk_row),
  with this pair.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from benchmarks.context import Context
from benchmarks.peers import ONE_SIDED, Peers
from benchmarks.rows_server import MAX_RUNS, Server, free_port
from benchmarks.rows_start import Setup, image_disk_row
from benchmarks.table import Goal, Row
from benchmarks.vision_pair import (
    QUICK_SHAPE,
    SHAPE,
    Pair,
    Pictures,
    Streamed,
    chat_body,
    image_message,
    make_pair,
    stream_chat,
)

SLOTS = 4
CTX = 8192
FIRST_TOKENS = 4
TEXT_TOKENS = 128  # each text client's; 16 in a smoke run
TEXT_CLIENTS = 3
IMAGE_TEXT = "What is in this picture?"
TEXT_PROMPT = "Tell me a long story about a lighthouse keeper and a storm at sea."
# Pictures the image client sends in a run, spread over the text clients' tokens: the same
# work for both servers (sent on a clock, the one slower with images would be sent more of them).
IMAGES_PER_RUN = 4
PEER_NAME = "llama-server --mmproj"
# "At least 0.95 of llama-server's speed": a time at most 1 / 0.95 of its.
GOAL_FIRST = Goal("<=", 1.053, on_ratio=True)
GOAL_MIXED = Goal(">=", 0.95, on_ratio=True)
KEYS = ("vision_first_token", "vision_text_beside_images")


def _servers(ctx: Context, setup: Setup, pair: Pair, peers: Optional[Peers]) -> dict[str, Server]:
    threads = str(setup.threads)
    shared = ["-t", threads, "-c", str(CTX), "--chat-template", "chatml"]
    port = free_port()
    ours = Server(
        "llamapyz --server (projector packed)",
        [str(pair.pyz), "--server", "--port", str(port), "--nobrowser", "--parallel", str(SLOTS)]
        + shared,
        None,
        ctx.env,
        port,
    )
    if peers is None:
        return {"ours": ours}
    port = free_port()
    peer = Server(
        PEER_NAME,
        [str(peers.server), "-m", str(pair.model), "--mmproj", str(pair.projector)]
        + ["--port", str(port), "-np", str(SLOTS), *shared],
        peers.bin,  # ggml also looks for backends in the working directory
        peers.env(ctx.env),
        port,
    )
    return {"ours": ours, "peer": peer}


def _order(rep: int, servers: dict[str, Server]) -> list[str]:
    sides = ("ours", "peer") if rep % 2 == 0 else ("peer", "ours")
    return [s for s in sides if s in servers]


@dataclass
class Firsts:
    """Time to first token per side, and what the servers said about each reply."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "peer": []})
    replies: dict[str, list[Streamed]] = field(default_factory=lambda: {"ours": [], "peer": []})
    busy: list[float] = field(default_factory=list)


def _first_tokens(ctx: Context, servers: dict[str, Server], pictures: Pictures) -> Firsts:
    firsts = Firsts()
    for rep in range(ctx.reps):
        picture = pictures.fresh()
        bodies = {
            s: chat_body(srv, image_message(picture, IMAGE_TEXT), FIRST_TOKENS)
            for s, srv in servers.items()
        }
        firsts.busy.append(ctx.quiet())
        for side in _order(rep, servers):
            reply = stream_chat(servers[side], bodies[side])
            firsts.seconds[side].append(reply.first_s)
            firsts.replies[side].append(reply)
        peer = f"{firsts.seconds['peer'][-1]:.3f} s" if firsts.seconds["peer"] else "-"
        ctx.log(
            f"  image prompt {rep + 1}/{ctx.reps}: first token llamapyz "
            f"{firsts.seconds['ours'][-1]:.3f} s, {PEER_NAME} {peer}"
        )
    return firsts


@dataclass
class Mixed:
    """One run of three text clients beside an image client."""

    tokens: list[int]  # each text client's
    chunks: list[int]  # each text client's chunks that carried text
    wall_s: float  # until the last text client ended
    images: list[float]  # the image client's times to first token, in that window


class Progress:
    """The characters of text the text clients have received, which the image client waits on
    (characters, not chunks: one server may send two tokens' text in one chunk)."""

    def __init__(self) -> None:
        self.chars = 0
        self.changed = threading.Condition()
        self.done = False

    def add(self, chars: int) -> None:
        with self.changed:
            self.chars += chars
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def reached(self, chars: int) -> bool:
        """Wait until the text clients have `chars` in all: False if they ended first."""
        with self.changed:
            self.changed.wait_for(lambda: self.done or self.chars >= chars)
            return not self.done


def _mixed_run(server: Server, text: bytes, pictures: list[bytes], every: int) -> Mixed:
    """The text clients and the image client start together; the image client sends its first
    picture at once and the next each time the text clients got `every` more characters (or
    once the last picture is answered, if that took longer), until they are done (a reply that
    ends after them is awaited, not counted)."""
    barrier = threading.Barrier(TEXT_CLIENTS + 2)
    progress = Progress()
    replies: list[Optional[Streamed]] = [None] * TEXT_CLIENTS
    images: list[float] = []
    errors: list[BaseException] = []

    def text_client(i: int) -> None:
        barrier.wait()
        try:
            replies[i] = stream_chat(server, text, progress.add)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    def image_client() -> None:
        barrier.wait()
        try:
            for k, body in enumerate(pictures):
                if not progress.reached(k * every):
                    return
                reply = stream_chat(server, body)
                if not progress.done:
                    images.append(reply.first_s)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=text_client, args=(i,)) for i in range(TEXT_CLIENTS)]
    threads.append(threading.Thread(target=image_client))
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads[:-1]:
        t.join()
    wall = time.perf_counter() - start
    progress.finish()
    threads[-1].join()
    if errors:
        raise errors[0]
    done = [r for r in replies if r is not None]
    return Mixed([r.tokens for r in done], [r.chunks for r in done], wall, images)


def _mixed(
    ctx: Context, servers: dict[str, Server], pictures: Pictures, prompt: str, tokens: int
) -> dict[str, list[Mixed]]:
    """Runs of the text clients (`tokens` each at most) beside IMAGES_PER_RUN pictures, spread
    by the characters of one untimed reply to the same prompt (temperature 0: both servers
    write about the same text)."""
    runs = min(ctx.reps, MAX_RUNS)
    sample = stream_chat(servers["ours"], chat_body(servers["ours"], prompt, tokens))
    every = max(1, TEXT_CLIENTS * len(sample.text) // IMAGES_PER_RUN)
    done: dict[str, list[Mixed]] = {side: [] for side in servers}
    for rep in range(runs):
        pool = [pictures.fresh() for _ in range(IMAGES_PER_RUN)]
        bodies = {
            s: (
                chat_body(srv, prompt, tokens),
                [chat_body(srv, image_message(p, IMAGE_TEXT), FIRST_TOKENS) for p in pool],
            )
            for s, srv in servers.items()
        }
        ctx.quiet()
        for side in _order(rep, servers):
            done[side].append(_mixed_run(servers[side], *bodies[side], every))
        line = ", ".join(
            f"{side} {sum(m[-1].tokens) / m[-1].wall_s:.1f} tok/s ({len(m[-1].images)} images)"
            for side, m in done.items()
        )
        ctx.log(f"  {TEXT_CLIENTS} text clients beside images, run {rep + 1}/{runs}: {line}")
    return done


def _warm(server: Server, pictures: Pictures, prompt: str) -> None:
    """The first requests pay for what a start defers; neither is timed."""
    stream_chat(server, chat_body(server, image_message(pictures.fresh(), IMAGE_TEXT), 1))
    stream_chat(server, chat_body(server, prompt, 1))


def _server_rows(
    pair: Pair,
    servers: dict[str, Server],
    firsts: Firsts,
    mixed: dict[str, list[Mixed]],
    text_tokens: int,
) -> list[Row]:
    skipped = None if "peer" in servers else ONE_SIDED
    common: dict[str, Any] = {
        "pair": pair.describe(),
        "llamapyz_command": servers["ours"].cmd,
        "peer_command": servers["peer"].cmd if "peer" in servers else None,
        "busy_before_rep": firsts.busy,
    }
    replies = firsts.replies
    rate = {side: [sum(m.tokens) / m.wall_s for m in runs] for side, runs in mixed.items()}
    return [
        Row(
            key=KEYS[0],
            name=f"image prompt, time to first token ({pair.shape.tokens} image tokens), "
            f"vs {PEER_NAME}",
            unit="s",
            ours=firsts.seconds["ours"],
            peer_name=PEER_NAME,
            peer=firsts.seconds["peer"],
            goal=GOAL_FIRST,
            skipped=skipped,
            extra={
                **common,
                "max_tokens": FIRST_TOKENS,
                "text": IMAGE_TEXT,
                "llamapyz_prompt_tokens": [r.prompt_tokens for r in replies["ours"]],
                "peer_prompt_tokens": [r.prompt_tokens for r in replies["peer"]],
                "llamapyz_prompt_ms": [r.prompt_ms for r in replies["ours"]],
                "peer_prompt_ms": [r.prompt_ms for r in replies["peer"]],
                "llamapyz_text": replies["ours"][0].text if replies["ours"] else None,
                "peer_text": replies["peer"][0].text if replies["peer"] else None,
            },
        ),
        Row(
            key=KEYS[1],
            name=f"server, {TEXT_CLIENTS} text clients while a 4th sends images, their total "
            f"tok/s, vs {PEER_NAME} -np {SLOTS}",
            unit="tok/s",
            ours=rate["ours"],
            peer_name=PEER_NAME,
            peer=rate.get("peer", []),
            goal=GOAL_MIXED,
            skipped=skipped,
            extra={
                **common,
                "max_tokens": text_tokens,
                "images_per_run": IMAGES_PER_RUN,
                **{
                    f"{'llamapyz' if side == 'ours' else 'peer'}_{what}": [
                        getattr(m, what) for m in runs
                    ]
                    for side, runs in mixed.items()
                    for what in ("tokens", "chunks", "wall_s", "images")
                },
            },
        ),
    ]


def vision_rows(
    ctx: Context, setup: Setup, peers: Optional[Peers], prompt: str, quick: bool
) -> list[Row]:
    """The image prompt's first token and text clients beside images, against llama-server
    --mmproj (llamapyz's side alone when the peers are not built), and a first start's disk."""
    pair = make_pair(ctx, setup.model, QUICK_SHAPE if quick else SHAPE)
    text_tokens = 16 if quick else TEXT_TOKENS
    ctx.log(f"vision rows: {pair.describe()}")
    pictures = Pictures(pair.shape.image)
    servers = _servers(ctx, setup, pair, peers)
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
            _warm(server, pictures, prompt or TEXT_PROMPT)
        ctx.log(f"image prompt, time to first token ({ctx.reps} runs) ...")
        firsts = _first_tokens(ctx, servers, pictures)
        ctx.log(f"{TEXT_CLIENTS} text clients while a 4th sends images ...")
        mixed = _mixed(ctx, servers, pictures, prompt or TEXT_PROMPT, text_tokens)
    finally:
        for server in servers.values():
            server.stop()
    rows = _server_rows(pair, servers, firsts, mixed, text_tokens)
    picture = ctx.work / "picture.png"
    picture.write_bytes(pictures.fresh())
    rows.append(image_disk_row(ctx, pair.pyz, pair.projector, picture, min(ctx.reps, MAX_RUNS)))
    rows[-1].extra["pair"] = pair.describe()
    return rows

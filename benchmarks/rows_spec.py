"""Speculation rows: `./model.pyz --server` (speculation on, its default) against llama-server's
default (no speculation) and against llama-server's own n-gram modes, workload by workload.

Every server runs side by side for the whole measurement (an idle one takes no CPU). Each
repetition sends every workload a fresh prompt (benchmarks/workloads.py) to every server in
turn, the order alternating, /v1/completions, N_TOKENS at most, temperature 0 unless a row says
otherwise; a rate is the tokens generated over the generation's time (the reply's
`timings.predicted_ms`, llama-server's field, which both report: a short answer's wall time is
mostly reading its prompt, the same on both sides); four clients at once count wall time.
Beside the table: the verify cost curve T(k)/T(1) (llama-bench, the same model and variant;
and as a verify step pays it, with logits on every position: benchmarks/verify_cost.py),
which bounds what a draft can win, and per workload the copy ratio (the share of the answer's
4-grams that the prompt held), the acceptance rate and the mean accepted length.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from benchmarks.context import REPO, Context, bench_cache
from benchmarks.peers import NOT_BUILT, Peers
from benchmarks.procs import BenchError
from benchmarks.rows_server import OPENER, Server, free_port
from benchmarks.rows_start import Setup
from benchmarks.table import Goal, Row
from benchmarks.workloads import WORKLOADS, code_edit, copy_ratio

N_TOKENS = 128
MIN_REPS = 5
CTX = 8192
SLOTS = 4
PEER_MODES = ("ngram-simple", "ngram-mod", "ngram-map-k", "ngram-cache")
CURVE = (1, 2, 3, 4, 6, 8, 16)
GOALS = {
    "verbatim quote": 2.0,
    "code edit": 1.7,
    "RAG": 1.15,
    "summary": 1.15,
    "free-form": 0.97,
}
PEER = "llama-server"
ROW_NAMES = {*WORKLOADS, "mixed", "seeded", "draft"}  # what --only may name


@dataclass
class Reply:
    tokens: int
    wall: float
    text: str
    drafted: int
    accepted: int
    steps: int
    generation_ms: float  # the reply's timings.predicted_ms (both servers report it)

    @property
    def rate(self) -> float:
        """Generated tokens per second of generation (the prompt's reading apart: a short
        answer's wall time is mostly its prompt, the same on both sides)."""
        if self.generation_ms > 0:
            return 1000.0 * self.tokens / self.generation_ms
        return self.tokens / self.wall


@dataclass
class Side:
    """One server and what it answered, workload by workload."""

    server: Server
    replies: dict[str, list[Reply]] = field(default_factory=dict)

    def rates(self, workload: str) -> list[float]:
        return [r.rate for r in self.replies.get(workload, [])]


def ask(server: Server, prompt: str, temp: float = 0.0, seed: Optional[int] = None) -> Reply:
    body: dict[str, Any] = {
        "model": server.model_id,
        "prompt": prompt,
        "max_tokens": N_TOKENS,
        "temperature": temp,
    }
    if seed is not None:
        body["seed"] = seed
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.base}/v1/completions", data, {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with OPENER.open(request, timeout=600) as resp:
            reply = json.load(resp)
    except (urllib.error.URLError, OSError) as exc:
        raise BenchError(f"{server.name}: /v1/completions failed ({exc})") from None
    wall = time.perf_counter() - start
    timings = reply.get("timings") or {}
    return Reply(
        int(reply["usage"]["completion_tokens"]),
        wall,
        str(reply["choices"][0]["text"]),
        int(timings.get("draft_n", 0)),
        int(timings.get("draft_n_accepted", 0)),
        int(timings.get("draft_steps", 0)),
        float(timings.get("predicted_ms", 0.0)),
    )


def _start(name: str, cmd: list[str], cwd: Optional[Path], env: dict[str, str]) -> Server:
    port = free_port()
    server = Server(name, [*cmd, "--port", str(port)], cwd, env, port)
    server.start()
    server.wait_ready()
    ask(server, "Hello")  # the first request pays for what a start defers
    return server


def _ours(ctx: Context, setup: Setup, name: str, *extra: str) -> Server:
    cmd = [str(setup.pyz), "--server", "--nobrowser", "-t", str(setup.threads)]
    cmd += ["-c", str(CTX), "--parallel", str(SLOTS), "--chat-template", "chatml", *extra]
    return _start(name, cmd, None, ctx.env)


def _peer(ctx: Context, setup: Setup, peers: Peers, name: str, *extra: str) -> Server:
    cmd = [str(peers.server), "-m", str(setup.model), "-t", str(setup.threads)]
    cmd += ["-np", str(SLOTS), "-c", str(CTX), *extra]
    return _start(name, cmd, peers.bin, peers.env(ctx.env))


def verify_curve(ctx: Context, setup: Setup, peers: Peers) -> dict[int, float]:
    """T(k)/T(1): the cost of one batch of k tokens in single decode steps (llama-bench)."""
    cmd = [str(peers.bench), "-m", str(setup.model), "-t", str(setup.threads), "-n", "0"]
    cmd += ["-p", ",".join(map(str, CURVE)), "-r", "3", "-o", "json"]
    done = subprocess.run(
        cmd, cwd=peers.bin, env=peers.env(ctx.env), capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise BenchError(f"llama-bench failed: {done.stderr.strip()[-300:]}")
    speed = {int(r["n_prompt"]): float(r["avg_ts"]) for r in json.loads(done.stdout)}
    return {k: k * speed[1] / speed[k] for k in CURVE if k in speed}


def verify_cost(ctx: Context, setup: Setup) -> dict[int, float]:
    """T(k)/T(1) with logits on every position, as a verify step decodes (our engine)."""
    cmd = [sys.executable, "-m", "benchmarks.verify_cost", str(setup.model), str(setup.threads)]
    cmd.append(",".join(map(str, CURVE)))
    done = subprocess.run(cmd, cwd=REPO, env=ctx.env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"benchmarks.verify_cost failed: {done.stderr.strip()[-300:]}")
    return {int(k): v for k, v in json.loads(done.stdout).items()}


def f16_of(model: Path) -> Path:
    """`model` requantized to F16 (the draft-model row's target), made once into the cache."""
    out = bench_cache() / f"{model.stem}.F16.gguf"
    if out.exists():
        return out
    from runtime.engine.backend import bindings

    C = bindings()
    params = C.llama_model_quantize_default_params()
    params.ftype = C.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    tmp = out.with_suffix(".part")
    if C.llama_model_quantize(str(model).encode(), str(tmp).encode(), params) != 0:
        raise BenchError(f"llama_model_quantize could not make an F16 copy of {model}")
    tmp.rename(out)
    return out


def _summary(replies: list[Reply]) -> dict[str, Any]:
    drafted = sum(r.drafted for r in replies)
    accepted = sum(r.accepted for r in replies)
    steps = sum(r.steps for r in replies)
    return {
        "acceptance": accepted / drafted if drafted else None,
        "mean_accepted_per_draft": accepted / steps if steps else None,
        "tokens": [r.tokens for r in replies],
    }


def _rounds(ctx: Context, sides: dict[str, Side], prompts: dict[str, list[str]]) -> None:
    """Every workload's prompt of each repetition to every side, in alternating order."""
    names = list(sides)
    reps = len(next(iter(prompts.values())))
    for rep in range(reps):
        ctx.quiet()
        order = names if rep % 2 == 0 else names[::-1]
        for workload, texts in prompts.items():
            for name in order:
                reply = ask(sides[name].server, texts[rep])
                sides[name].replies.setdefault(workload, []).append(reply)
        ours = sides["ours"]
        line = ", ".join(f"{w} {ours.rates(w)[-1]:.0f}" for w in prompts)
        ctx.log(f"  spec run {rep + 1}/{reps}: llamapyz tok/s {line}")


def spec_rows(
    ctx: Context, setup: Setup, peers: Optional[Peers], only: Optional[set[str]] = None
) -> list[Row]:
    """The speculation rows, in the issue's order (`only`: those of ROW_NAMES)."""
    want = ROW_NAMES if only is None else only
    workloads = {w: make for w, make in WORKLOADS.items() if w in want}
    if peers is None:
        return [
            Row("spec", "speculation rows", "tok/s", [], Goal(">=", 1.0, True), skipped=NOT_BUILT)
        ]
    reps = max(MIN_REPS, min(ctx.reps, 7))
    ctx.log(f"speculation rows: {len(workloads)} workloads x {reps} repetitions ...")
    curve = verify_curve(ctx, setup, peers)
    ctx.log("  verify cost T(k)/T(1): " + ", ".join(f"{k}: {v:.2f}" for k, v in curve.items()))
    paid = verify_cost(ctx, setup)
    ctx.log(
        "  ... with logits on every position: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in paid.items())
    )
    started: list[Server] = []
    try:
        sides = {
            "ours": Side(_ours(ctx, setup, "llamapyz --server")),
            "peer": Side(_peer(ctx, setup, peers, PEER)),
        }
        for mode in PEER_MODES:
            sides[mode] = Side(
                _peer(ctx, setup, peers, f"{PEER} --spec-type {mode}", "--spec-type", mode)
            )
        started += [s.server for s in sides.values()]
        prompts = {w: [make(100 + rep) for rep in range(reps)] for w, make in workloads.items()}
        rows: list[Row] = []
        if prompts:
            _rounds(ctx, sides, prompts)
            rows = _workload_rows(sides, prompts, curve, paid)
        if "mixed" in want:
            none = _ours(ctx, setup, "llamapyz --spec-type none", "--spec-type", "none")
            started.append(none)
            rows.append(_mixed_row(ctx, sides["ours"].server, none, reps))
        if "seeded" in want:
            rows.append(_seeded_row(ctx, sides["ours"].server, sides["peer"].server, reps))
    finally:
        for server in started:
            server.stop()
    if "draft" in want:
        rows += _draft_rows(ctx, setup, peers, reps)
    return rows


def _workload_rows(
    sides: dict[str, Side],
    prompts: dict[str, list[str]],
    curve: dict[int, float],
    paid: dict[int, float],
) -> list[Row]:
    rows: list[Row] = []
    ours, peer = sides["ours"], sides["peer"]
    for workload, texts in prompts.items():
        replies = ours.replies[workload]
        extra = _summary(replies)
        extra["copy_ratio"] = statistics.median(
            copy_ratio(p, r.text) for p, r in zip(texts, replies)
        )
        extra["verify_curve"] = curve
        extra["verify_curve_all_logits"] = paid
        extra["same_text_as_peer"] = sum(
            a.text == b.text for a, b in zip(replies, peer.replies[workload])
        )
        goal = GOALS.get(workload)
        rows.append(
            Row(
                f"spec_{workload.replace(' ', '_').lower()}",
                f"speculation: {workload}, 1 client, temp 0, vs {PEER} default",
                "tok/s",
                ours.rates(workload),
                Goal(">=", goal if goal is not None else 1.0, on_ratio=True),
                peer_name=PEER,
                peer=peer.rates(workload),
                extra=extra,
            )
        )
        best = max(PEER_MODES, key=lambda m: statistics.median(sides[m].rates(workload)))
        rows.append(
            Row(
                f"spec_{workload.replace(' ', '_').lower()}_vs_ngram",
                f"speculation: {workload}, vs {PEER}'s best n-gram mode ({best})",
                "tok/s",
                ours.rates(workload),
                Goal(">=", 1.0, on_ratio=True),
                peer_name=f"{PEER} --spec-type {best}",
                peer=sides[best].rates(workload),
                extra={
                    "peer_modes": {
                        m: statistics.median(sides[m].rates(workload)) for m in PEER_MODES
                    },
                    "peer_acceptance": _summary(sides[best].replies[workload])["acceptance"],
                },
            )
        )
    return rows


def _mixed_row(ctx: Context, ours: Server, none: Server, reps: int) -> Row:
    """Four clients at once, four workloads, against llamapyz with speculation off."""
    from benchmarks.rows_server import concurrent

    mixed = ["code edit", "verbatim quote", "summary", "free-form"]
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for rep in range(reps):
        ctx.quiet()
        batch = [WORKLOADS[w](200 + rep * 4 + i) for i, w in enumerate(mixed)]
        for side, server in (
            (("on", ours), ("off", none)) if rep % 2 == 0 else (("off", none), ("on", ours))
        ):
            server.max_tokens = N_TOKENS
            tokens, wall, _ = concurrent(server, batch)
            rates[side].append(tokens / wall)
    return Row(
        "spec_4_clients_mixed",
        "speculation: 4 clients, mixed workloads, vs llamapyz --spec-type none",
        "tok/s",
        rates["on"],
        Goal(">=", 0.97, on_ratio=True),
        peer_name="llamapyz --spec-type none",
        peer=rates["off"],
    )


def _seeded_row(ctx: Context, ours: Server, peer: Server, reps: int) -> Row:
    replies: dict[str, list[Reply]] = {"ours": [], "peer": []}
    for rep in range(reps):
        ctx.quiet()
        prompt = code_edit(300 + rep)
        for side, server in (("ours", ours), ("peer", peer)):
            replies[side].append(ask(server, prompt, temp=0.8, seed=1234 + rep))
    return Row(
        "spec_code_edit_sampled",
        f"speculation: code edit, temp 0.8 seeded, vs {PEER} default",
        "tok/s",
        [r.rate for r in replies["ours"]],
        Goal(">=", 1.3, on_ratio=True),
        peer_name=PEER,
        peer=[r.rate for r in replies["peer"]],
        extra=_summary(replies["ours"]),
    )


def _draft_rows(ctx: Context, setup: Setup, peers: Peers, reps: int) -> list[Row]:
    """SmolLM2 at F16 as the target, the Q4_1 file as its draft: llamapyz -md against the F16
    alone (llamapyz --spec-type none) and against llama-server -md --spec-type draft-simple."""
    target = f16_of(setup.model)
    threads = str(setup.threads)
    cmd = [str(setup.pyz), "--server", "--nobrowser", "-t", threads, "-m", str(target)]
    cmd += ["-c", str(CTX), "--parallel", "1", "--chat-template", "chatml"]
    started: list[Server] = []
    try:
        with_draft = _start(
            "llamapyz -md", [*cmd, "-md", str(setup.model), "--spec-type", "draft"], None, ctx.env
        )
        started.append(with_draft)
        alone = _start("llamapyz F16", [*cmd, "--spec-type", "none"], None, ctx.env)
        started.append(alone)
        pcmd = [str(peers.server), "-m", str(target), "-t", threads, "-np", "1", "-c", str(CTX)]
        pcmd += ["-md", str(setup.model), "--spec-type", "draft-simple"]
        peer = _start(f"{PEER} -md", pcmd, peers.bin, peers.env(ctx.env))
        started.append(peer)
        rates: dict[str, list[float]] = {"draft": [], "alone": [], "peer": []}
        replies: list[Reply] = []
        for rep in range(reps):
            ctx.quiet()
            prompt = WORKLOADS["free-form"](400 + rep)
            for side, server in (("draft", with_draft), ("alone", alone), ("peer", peer)):
                reply = ask(server, prompt)
                rates[side].append(reply.rate)
                if side == "draft":
                    replies.append(reply)
    finally:
        for server in started:
            server.stop()
    extra = _summary(replies)
    return [
        Row(
            "spec_draft_model",
            "speculation: F16 target, its Q4_1 as draft (-md), free-form, vs the F16 alone",
            "tok/s",
            rates["draft"],
            Goal(">=", 1.5, on_ratio=True),
            peer_name="llamapyz F16 --spec-type none",
            peer=rates["alone"],
            extra=extra,
        ),
        Row(
            "spec_draft_model_vs_peer",
            f"speculation: the same, vs {PEER} -md --spec-type draft-simple",
            "tok/s",
            rates["draft"],
            Goal(">=", 1.0, on_ratio=True),
            peer_name=f"{PEER} -md",
            peer=rates["peer"],
            extra=extra,
        ),
    ]

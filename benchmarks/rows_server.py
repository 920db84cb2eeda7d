"""Server rows: `./model.pyz --server` against llama.cpp's llama-server on the same GGUF, threads
and CPU variant: generated tokens per second for one client, and in all for four at once.

Both servers run side by side for the whole measurement (an idle one takes no CPU) and get
one untimed request first. A client sends /v1/completions with a fixed prompt, max_tokens
N_TOKENS and temperature 0, and counts the tokens generated from the reply's
`usage.completion_tokens` (`ignore_eos` is llama-server's alone, so both may stop early at
the same place); its rate is those tokens over the wall time of the request, as a client sees
it, prompt and HTTP included. Four clients send at the same moment; their rate is all their
tokens over the time until the last reply. Both servers get PEER_SLOTS slots (llama-server
-np, llamapyz --parallel), so that either may serve four requests at once. The one-client
request follows the four-client ones of the run before: both servers then hold earlier
requests in their other slots, as a server in use does.

A request during which the server process got less than STARVED of threads x wall CPU
seconds (ggml's threads spin while they wait) shared the CPUs with other work: it is sent
again, at most MAX_TRIES times.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

from benchmarks.context import Context
from benchmarks.engine_speed import GEN_PROMPT
from benchmarks.gpu_side import GpuSide
from benchmarks.peers import NOT_BUILT, ONE_SIDED, Peers, loaded_variant
from benchmarks.procs import BenchError
from benchmarks.rows_start import Setup
from benchmarks.table import Goal, Row

N_TOKENS = 128
CLIENTS = 4
PEER_SLOTS = 4
PEER_CTX = 8192
MAX_RUNS = 5
STARVED = 0.9
MAX_TRIES = 3
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 600.0
GOAL_ONE = Goal(">=", 0.95, on_ratio=True)
GOAL_MANY = Goal(">=", 0.8, on_ratio=True)
PEER_NAME = "llama-server"
# Requests go straight to 127.0.0.1, never through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as resp:
        data: dict[str, Any] = json.load(resp)
        return data


@dataclass
class Server:
    """A server process, its log, and its OpenAI-compatible base URL."""

    name: str
    cmd: list[str]
    cwd: Optional[Path]
    env: dict[str, str]
    port: int
    log: IO[bytes] = field(default_factory=tempfile.TemporaryFile)
    proc: Optional[subprocess.Popen[bytes]] = None
    model_id: str = ""
    max_tokens: int = N_TOKENS

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def _tail(self) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-8:])

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        """Until /health answers 200 (llama-server answers 503 while it loads)."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                with OPENER.open(f"{self.base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        else:
            raise BenchError(f"{self.name} did not answer /health in {READY_TIMEOUT_S:.0f} s")
        with OPENER.open(f"{self.base}/v1/models", timeout=10) as resp:
            self.model_id = json.load(resp)["data"][0]["id"]

    def complete(self, prompt: str) -> tuple[int, float, str]:
        """One /v1/completions request: (tokens generated, wall seconds, text)."""
        body = {
            "model": self.model_id,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        start = time.perf_counter()
        try:
            data = _post(f"{self.base}/v1/completions", body)
        except (urllib.error.URLError, OSError) as exc:
            raise BenchError(
                f"{self.name}: /v1/completions failed ({exc}):\n{self._tail()}"
            ) from None
        wall = time.perf_counter() - start
        tokens = int(data["usage"]["completion_tokens"])
        if tokens < 1:
            raise BenchError(f"{self.name} generated nothing for {prompt!r}")
        return tokens, wall, str(data["choices"][0]["text"])

    def cpu_seconds(self) -> float:
        """User and system CPU time of the server process so far, all its threads."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            return 0.0
        # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def concurrent(server: Server, prompts: list[str]) -> tuple[int, float, list[int]]:
    """All prompts at the same moment, one client thread each: (tokens, wall, per-client)."""
    barrier = threading.Barrier(len(prompts) + 1)
    results: list[Optional[tuple[int, float, str]]] = [None] * len(prompts)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        barrier.wait()
        try:
            results[i] = server.complete(prompts[i])
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    counts = [r[0] for r in results if r is not None]
    return sum(counts), wall, counts


def undisturbed(
    ctx: Context,
    server: Server,
    threads: int,
    send: Callable[[], tuple[int, float]],
    starved: float = STARVED,
) -> tuple[int, float, float, int]:
    """`send` (tokens, wall) until the server got its share of the CPUs meanwhile, at most
    MAX_TRIES times (once in a smoke run, or on a GPU: `starved` 0): (tokens, wall, CPU
    share, tries)."""
    tries = MAX_TRIES if ctx.reps > 1 and starved > 0 else 1
    for attempt in range(1, tries + 1):
        if attempt > 1:
            ctx.quiet()
        cpu = server.cpu_seconds()
        tokens, wall = send()
        share = (server.cpu_seconds() - cpu) / (wall * threads) if wall > 0 else 0.0
        if share >= starved or attempt == tries:
            return tokens, wall, share, attempt
        ctx.log(f"  ({server.name} got {share:.0%} of the CPUs: other work ran meanwhile; again)")
    raise AssertionError("unreachable")


@dataclass
class Samples:
    one: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "peer": []})
    many: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "peer": []})
    tokens_one: dict[str, list[int]] = field(default_factory=lambda: {"ours": [], "peer": []})
    tokens_many: dict[str, list[list[int]]] = field(
        default_factory=lambda: {"ours": [], "peer": []}
    )
    text: dict[str, str] = field(default_factory=dict)
    busy: list[float] = field(default_factory=list)
    share_one: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "peer": []})
    share_many: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "peer": []})
    redone: int = 0


def _servers(
    ctx: Context, setup: Setup, peers: Optional[Peers], gpu: Optional[GpuSide] = None
) -> dict[str, Server]:
    threads = str(setup.threads)
    max_tokens = gpu.tg if gpu else N_TOKENS
    port = free_port()
    # /v1/completions uses no chat template; naming one spares a GGUF that has none (the smoke
    # test's tiny one) the guess, which tokenizes chat markers that its vocabulary cannot.
    ours = Server(
        "llamapyz --server",
        [str(setup.pyz), "--server", "--port", str(port), "--nobrowser", "-t", threads]
        + ["--parallel", str(PEER_SLOTS), "--chat-template", "chatml"]
        + (gpu.ours_flags() if gpu else []),
        None,
        {**ctx.env, **(gpu.env if gpu else {})},
        port,
        max_tokens=max_tokens,
    )
    if peers is None:
        return {"ours": ours}
    port = free_port()
    peer = Server(
        PEER_NAME,
        [str(peers.server), "-m", str(setup.model), "-t", threads, "--port", str(port)]
        + ["-np", str(PEER_SLOTS), "-c", str(PEER_CTX)]
        + (gpu.server_flags() if gpu else []),
        peers.bin,  # ggml also looks for backends in the working directory
        peers.env(ctx.env),
        port,
        max_tokens=max_tokens,
    )
    return {"ours": ours, "peer": peer}


def _measure(
    ctx: Context, servers: dict[str, Server], prompt: str, threads: int, starved: float
) -> Samples:
    samples = Samples()
    runs = min(ctx.reps, MAX_RUNS)
    for rep in range(runs):
        samples.busy.append(ctx.quiet())
        order = tuple(
            s for s in (("ours", "peer") if rep % 2 == 0 else ("peer", "ours")) if s in servers
        )
        for side in order:
            server = servers[side]
            texts: list[str] = []

            def one(server: Server = server, texts: list[str] = texts) -> tuple[int, float]:
                tokens, wall, text = server.complete(prompt)
                texts.append(text)
                return tokens, wall

            tokens, wall, share, tries = undisturbed(ctx, server, threads, one, starved)
            samples.redone += tries - 1
            samples.one[side].append(tokens / wall)
            samples.tokens_one[side].append(tokens)
            samples.share_one[side].append(share)
            samples.text.setdefault(side, texts[-1])
        for side in reversed(order):
            server = servers[side]
            counts: list[list[int]] = []

            def many(
                server: Server = server, counts: list[list[int]] = counts
            ) -> tuple[int, float]:
                tokens, wall, each = concurrent(server, [prompt] * CLIENTS)
                counts.append(each)
                return tokens, wall

            tokens, wall, share, tries = undisturbed(ctx, server, threads, many, starved)
            samples.redone += tries - 1
            samples.many[side].append(tokens / wall)
            samples.tokens_many[side].append(counts[-1])
            samples.share_many[side].append(share)
        peer_one = f"{samples.one['peer'][-1]:.1f}" if samples.one["peer"] else "-"
        peer_many = f"{samples.many['peer'][-1]:.1f}" if samples.many["peer"] else "-"
        ctx.log(
            f"  run {rep + 1}/{runs}: 1 client: llamapyz {samples.one['ours'][-1]:.1f}, "
            f"{PEER_NAME} {peer_one} tok/s; {CLIENTS} clients: llamapyz "
            f"{samples.many['ours'][-1]:.1f}, {PEER_NAME} {peer_many} tok/s"
        )
    return samples


KEYS = ("server_1_client", f"server_{CLIENTS}_clients")
NAMES = (
    "server, 1 client, generated tok/s, vs llama-server",
    f"server, {CLIENTS} clients at once, total tok/s, vs llama-server -np {PEER_SLOTS}",
)


def skipped_rows(why: str = NOT_BUILT) -> list[Row]:
    return [
        Row(key=k, name=n, unit="tok/s", ours=[], goal=g, peer_name=PEER_NAME, skipped=why)
        for k, n, g in zip(KEYS, NAMES, (GOAL_ONE, GOAL_MANY))
    ]


def server_rows(
    ctx: Context,
    setup: Setup,
    peers: Optional[Peers],
    prompt: str,
    gpu: Optional[GpuSide] = None,
) -> list[Row]:
    """One client and four, against llama-server; skipped when the peers are not built. With
    `gpu`, both servers put the same layers on the same device (llamapyz's alone is measured
    when the peers are not built, and the rows say so)."""
    if peers is None and gpu is None:
        return skipped_rows()
    prompt = prompt or GEN_PROMPT
    servers = _servers(ctx, setup, peers, gpu)
    ctx.log(f"servers: 1 client and {CLIENTS} at once ({min(ctx.reps, MAX_RUNS)} runs) ...")
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
            server.complete(prompt)  # untimed: the first request pays for warming up
        loaded = loaded_variant(servers["peer"].log_text()) if "peer" in servers else None
        want = f"libggml-cpu-{setup.variant}.so" if setup.variant else None
        if want and loaded and loaded != want:
            raise BenchError(f"llama-server loaded {loaded}, not {want}")
        where = (
            {k: gpu.check_log(srv.name, srv.log_text(), k == "ours") for k, srv in servers.items()}
            if gpu
            else {}
        )
        samples = _measure(ctx, servers, prompt, setup.threads, STARVED if gpu is None else 0.0)
    finally:
        for server in servers.values():
            server.stop()
    skipped = None if "peer" in servers else ONE_SIDED
    keys = [gpu.key(k) for k in KEYS] if gpu else list(KEYS)
    names = [gpu.name(n) for n in NAMES] if gpu else list(NAMES)
    common = {
        "llamapyz_command": servers["ours"].cmd,
        "peer_command": servers["peer"].cmd if "peer" in servers else None,
        "gpu_lines": where,
        "peer_cpu_backend": loaded,
        "prompt": prompt,
        "max_tokens": servers["ours"].max_tokens,
        "llamapyz_text": samples.text.get("ours"),
        "peer_text": samples.text.get("peer"),
        "busy_before_rep": samples.busy,
        "requests_redone_for_cpu_share": samples.redone,
    }
    return [
        Row(
            key=keys[0],
            name=names[0],
            unit="tok/s",
            ours=samples.one["ours"],
            peer_name=PEER_NAME,
            peer=samples.one["peer"],
            goal=GOAL_ONE,  # 0.95: issue 12's goal for the GPU rows too
            skipped=skipped,
            extra={
                **common,
                "llamapyz_tokens": samples.tokens_one["ours"],
                "peer_tokens": samples.tokens_one["peer"],
                "llamapyz_cpu_share": samples.share_one["ours"],
                "peer_cpu_share": samples.share_one["peer"],
            },
        ),
        Row(
            key=keys[1],
            name=names[1],
            unit="tok/s",
            ours=samples.many["ours"],
            peer_name=PEER_NAME,
            peer=samples.many["peer"],
            goal=GOAL_ONE if gpu else GOAL_MANY,
            skipped=skipped,
            extra={
                **common,
                "clients": CLIENTS,
                "llamapyz_tokens": samples.tokens_many["ours"],
                "peer_tokens": samples.tokens_many["peer"],
                "llamapyz_cpu_share": samples.share_many["ours"],
                "peer_cpu_share": samples.share_many["peer"],
            },
        ),
    ]

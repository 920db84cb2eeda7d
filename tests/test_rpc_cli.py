"""llama.cpp's RPC backend from the .pyz itself: `--rpc-worker` and `--rpc`, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_clean_error, default_sigint, free_port, run_pyz

PROMPT = "the quick brown fox"
ARGS = ("-p", PROMPT, "-n", "12", "--temp", "0")


class Worker:
    def __init__(self, pyz: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [str(pyz), "--rpc-worker", *(args or (str(self.port),))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,  # stop() interrupts it
        )
        self.banner = self.proc.stderr.readline() if self.proc.stderr else ""
        deadline = time.monotonic() + 60
        while True:  # ready when it accepts a connection
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert self.proc.poll() is None, self.banner + (
                self.proc.stderr.read() if self.proc.stderr else ""
            )
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def workers(bare_pyz: Path) -> Iterator[list[Worker]]:
    pool = [Worker(bare_pyz), Worker(bare_pyz)]
    yield pool
    for w in pool:
        w.stop()


def rpc_list(pool: list[Worker]) -> str:
    return ",".join(f"127.0.0.1:{w.port}" for w in pool)


def test_split_over_two_workers_gives_the_local_text(tiny_pyz: Path, workers: list[Worker]) -> None:
    assert workers[0].banner.startswith(f"llamapyz RPC worker on 127.0.0.1:{workers[0].port}: CPU ")
    local = run_pyz(tiny_pyz, *ARGS)
    split = run_pyz(tiny_pyz, *ARGS, "--rpc", rpc_list(workers), "-ngl", "99", "--verbose")
    assert split.returncode == 0, split.stderr
    assert split.stdout == local.stdout and local.stdout.strip()
    assert f"using device RPC0 (127.0.0.1:{workers[0].port})" in split.stderr
    assert f"using device RPC1 (127.0.0.1:{workers[1].port})" in split.stderr
    weighted = run_pyz(
        tiny_pyz, *ARGS, "--rpc", rpc_list(workers), "--tensor-split", "3,1,1", "--rpc-local"
    )
    assert weighted.returncode == 0, weighted.stderr
    assert weighted.stdout == local.stdout
    info = run_pyz(tiny_pyz, "--system-info", "--rpc", rpc_list(workers))
    assert f"RPC1: 127.0.0.1:{workers[1].port} (RPC worker" in info.stdout


@pytest.mark.slow
def test_smollm2_split_and_served(smollm2_pyz: Path, workers: list[Worker]) -> None:
    import openai
    from conftest import Server

    args = ("-p", "The capital of France is", "-n", "16", "--temp", "0")
    local = run_pyz(smollm2_pyz, *args)
    split = run_pyz(smollm2_pyz, *args, "--rpc", rpc_list(workers))
    assert split.returncode == 0, split.stderr
    assert split.stdout == local.stdout and "Paris" in local.stdout
    srv = Server(smollm2_pyz, "--rpc", rpc_list(workers), "-np", "1")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        model = client.models.list().data[0].id
        out = client.completions.create(
            model=model, prompt="The capital of France is", temperature=0, max_tokens=16
        )
        assert out.choices[0].text == local.stdout
    finally:
        srv.stop()


@pytest.mark.slow
def test_speculation_through_workers_gives_the_same_text(
    smollm2_pyz: Path, workers: list[Worker]
) -> None:
    """Drafts verified on the workers (the verify batch and the rollback of its rejected
    positions go over RPC): the text of --spec-type none, one-shot and served."""
    import openai
    from conftest import Server
    from test_speculate import CODE

    args = ("-p", CODE, "-n", "24", "--temp", "0", "--rpc", rpc_list(workers), "--verbose")
    on = run_pyz(smollm2_pyz, *args)
    off = run_pyz(smollm2_pyz, *args, "--spec-type", "none")
    assert on.returncode == off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert f"using device RPC1 (127.0.0.1:{workers[1].port})" in on.stderr
    assert on.stdout == off.stdout and "count" in on.stdout
    drafted = re.search(r"speculation \(ngram\): drafted (\d+) tokens, accepted (\d+)", on.stderr)
    assert drafted and int(drafted[2]) > 0, on.stderr[-2000:]
    assert "speculation (" not in off.stderr
    srv = Server(smollm2_pyz, "--rpc", rpc_list(workers), "-np", "1", "--temp", "0")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        out = client.completions.create(model="m", prompt=CODE, temperature=0, max_tokens=24)
        assert out.choices[0].text == off.stdout
        timings = (out.model_extra or {})["timings"]
        assert timings["draft_n_accepted"] > 0, timings
    finally:
        srv.stop()


def test_unreachable_worker_and_malformed_lists(tiny_pyz: Path) -> None:
    port = free_port()
    assert_clean_error(
        run_pyz(tiny_pyz, *ARGS, "--rpc", f"127.0.0.1:{port}"),
        1,
        f"cannot reach the RPC worker 127.0.0.1:{port} (Connection refused)",
    )
    for bad in ("127.0.0.1", "127.0.0.1:99999", "127.0.0.1:50052,,", "host name:1"):
        result = run_pyz(tiny_pyz, *ARGS, "--rpc", bad)
        assert result.returncode == 1, (bad, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("Error: ")
        assert len(result.stderr.strip().splitlines()) == 1


def test_worker_port_in_use_and_open_address_warning(bare_pyz: Path, workers: list[Worker]) -> None:
    busy = run_pyz(bare_pyz, "--rpc-worker", str(workers[0].port))
    assert_clean_error(
        busy, 1, f"cannot listen on 127.0.0.1:{workers[0].port} (Address already in use)"
    )
    port = free_port()
    exposed = Worker(bare_pyz, f"0.0.0.0:{port}", port=port)
    try:
        assert "warning" in exposed.banner.lower() and "0.0.0.0" in exposed.banner
    finally:
        exposed.stop()


@pytest.mark.slow
def test_worker_killed_mid_generation(smollm2_pyz: Path, workers: list[Worker]) -> None:
    client = subprocess.Popen(
        [
            str(smollm2_pyz),
            "-p",
            "Once upon a time",
            "-n",
            "2000",
            "--temp",
            "0.8",
            "--rpc",
            rpc_list(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    client.stdout.read(20)  # the story has started
    os.kill(workers[1].proc.pid, signal.SIGKILL)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 1, err
    assert "Traceback" not in err and "ggml_abort" not in err
    assert f"lost the connection to the RPC worker 127.0.0.1:{workers[1].port}" in err


@pytest.fixture()
def two_hosts() -> Iterator[list[tuple[str, str]]]:
    """Two test hosts made here: network namespaces joined to this one by veth pairs.
    Yields (namespace, address) for each; skips, saying why, without the rights to make them."""
    import shutil

    ip = shutil.which("ip")
    if ip is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    tag = str(os.getpid())[-5:]
    made: list[tuple[str, str]] = []

    def sh(*args: str) -> None:
        subprocess.run([ip, *args], check=True, capture_output=True, text=True)

    try:
        for i in (1, 2):
            ns, host_if, ns_if = f"lpz{tag}w{i}", f"lpz{tag}h{i}", f"lpz{tag}n{i}"
            sh("netns", "add", ns)
            made.append((ns, f"10.231.{i}.2"))
            sh("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            sh("link", "set", ns_if, "netns", ns)
            sh("addr", "add", f"10.231.{i}.1/24", "dev", host_if)
            sh("link", "set", host_if, "up")
            sh("-n", ns, "addr", "add", f"10.231.{i}.2/24", "dev", ns_if)
            sh("-n", ns, "link", "set", ns_if, "up")
            sh("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns, _ in made:
            subprocess.run([ip, "netns", "del", ns], capture_output=True)
        pytest.skip(f"cannot make network namespaces here ({exc.stderr.strip()})")
    yield made
    for i, (ns, _) in enumerate(made, start=1):
        subprocess.run([ip, "link", "del", f"lpz{tag}h{i}"], capture_output=True)
        subprocess.run([ip, "netns", "del", ns], capture_output=True)


@pytest.mark.slow
def test_workers_on_two_other_hosts(
    tiny_pyz: Path, bare_pyz: Path, two_hosts: list[tuple[str, str]]
) -> None:
    procs = []
    try:
        for ns, address in two_hosts:
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, str(bare_pyz), "--rpc-worker", f"{address}:50052"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        banners = [p.stderr.readline() for p in procs if p.stderr]
        assert all("warning" in b.lower() for b in banners), banners  # not loopback: said so
        deadline = time.monotonic() + 60
        for _, address in two_hosts:
            while True:
                with socket.socket() as s:
                    s.settimeout(1)
                    if s.connect_ex((address, 50052)) == 0:
                        break
                assert time.monotonic() < deadline
                time.sleep(0.1)
        workers = ",".join(f"{address}:50052" for _, address in two_hosts)
        local = run_pyz(tiny_pyz, *ARGS)
        split = run_pyz(tiny_pyz, *ARGS, "--rpc", workers, "--verbose")
        assert split.returncode == 0, split.stderr
        assert split.stdout == local.stdout
        assert f"using device RPC1 ({two_hosts[1][1]}:50052)" in split.stderr
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_server_survives_a_lost_worker_and_says_so(
    smollm2_pyz: Path, workers: list[Worker]
) -> None:
    import json
    import threading
    import urllib.error
    import urllib.request

    from conftest import Server

    srv = Server(smollm2_pyz, "--rpc", rpc_list(workers), "-np", "1")

    def post(body: dict[str, object]) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            srv.url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def health() -> dict[str, object]:
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as response:
            return dict(json.loads(response.read()))

    try:
        model = health()["model"]
        results: list[tuple[int, dict[str, object]]] = []
        long = {
            "model": model,
            "prompt": "Once upon a time",
            "max_tokens": 1500,
            "temperature": 0.8,
        }
        thread = threading.Thread(target=lambda: results.append(post(long)))
        thread.start()
        deadline = time.monotonic() + 60
        while health()["busy"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(workers[1].proc.pid, signal.SIGKILL)
        thread.join(timeout=120)
        status, body = results[0]
        assert status == 503, body
        assert f"lost the connection to the RPC worker 127.0.0.1:{workers[1].port}" in str(body)
        later, body = post({"model": model, "prompt": "Hi", "max_tokens": 2})
        assert later == 503 and "the model cannot run" in str(body)
        assert "lost the connection" in str(health()["lost"])
        assert srv.proc.poll() is None  # still serving, and saying why it cannot answer
    finally:
        err = srv.stop()
    assert "the engine stopped: lost the connection to the RPC worker" in err

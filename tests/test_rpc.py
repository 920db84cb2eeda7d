"""llama.cpp's RPC backend: real workers and clients as processes on 127.0.0.1.

Workers run `runtime.rpc.worker.worker_main` (ggml's own RPC server) in child processes; clients are
child processes that load a model through `engine.Model` with its layers offloaded to them.
Until the engine takes an offload plan itself, the client script applies `rpc.Offload` to the
llama_model_params the engine passes to llama.cpp's load function (see CLIENT).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import assert_clean_error, free_port

from runtime.rpc import client as rpc
from runtime.rpc import endpoints as rpc_endpoints
from runtime.rpc import lost
from runtime.rpc import protocol as rpc_protocol
from runtime.rpc import worker as rpc_worker
from runtime.rpc.endpoints import RpcError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "the quick brown fox"
START_TIMEOUT = 180  # the first worker may probe the CPU variants
RUN_TIMEOUT = 180

# A client: loads the model (offloaded to --rpc workers when given), prints the text at
# temperature 0. With --pause it prints "<started>" after the first piece and waits for a
# line on stdin before it goes on, so that a test can stop a worker mid-generation.
CLIENT = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from runtime.engine.devices import cpu
from runtime.engine.decoding import model as engine
from runtime.rpc import client as rpc
from runtime.rpc import lost
from runtime.rpc.endpoints import RpcError, parse_endpoints
from runtime.sources.source import ModelSource

model, spec, mode, n_predict = Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
verbose, pause = "verbose" in mode, "pause" in mode
engine.set_verbose(verbose)
engine.start_backend(cpu.choose().path)
if spec:
    try:
        devices = rpc.add_servers(parse_endpoints(spec), timeout=10)
        offload = rpc.plan_offload(
            devices, include_local="local" in mode, n_layer=rpc.layer_count(model)
        )
    except RpcError as exc:
        sys.stderr.write(f"Error: {exc}\\n")
        sys.exit(1)
    if verbose:
        for line in rpc.devices_summary():
            sys.stderr.write(f"device: {line}\\n")
    C = engine.bindings()
    for name in ("llama_model_load_from_file", "llama_model_load_from_file_ptr"):
        real = getattr(C, name)

        def load(source, params, real=real):
            offload.apply(params)  # what engine.Model should do itself with an Offload
            return real(source, params)

        setattr(C, name, load)
source = ModelSource(model, 0, model.stat().st_size, str(model))
with engine.Model(source, n_ctx=256, n_batch=64, n_threads=1) as llm:
    pieces = llm.generate(llm.tokenize(sys.argv[6]), n_predict, engine.Sampling(temp=0.0))
    for i, piece in enumerate(pieces):
        sys.stdout.write(piece)
        sys.stdout.flush()
        if pause and i == 0:
            sys.stdout.write("<started>\\n")
            sys.stdout.flush()
            sys.stdin.readline()
"""


def worker_command(address: str, *extra: str) -> list[str]:
    code = f"from runtime.rpc import worker; worker.worker_main({[address, *extra]!r})"
    return [sys.executable, "-c", code]


class Worker:
    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                worker_command(f"127.0.0.1:{port}", "--threads", "1"),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the worker exited with {self.proc.returncode}: {self.output()}")
            try:
                rpc_protocol.check_endpoint("127.0.0.1", self.port, timeout=2)
                return
            except RpcError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the worker did not start: {self.output()}")
                time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started = [Worker(free_port(), tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            worker.stop()


def client(
    tmp_path: Path,
    model: Path,
    spec: str = "",
    mode: str = "",
    n_predict: int = 24,
    prompt: str = PROMPT,
) -> list[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    return [sys.executable, str(script), str(ROOT), str(model), spec, mode, str(n_predict), prompt]


def run_client(tmp_path: Path, model: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client(tmp_path, model, *args),  # type: ignore[arg-type]
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------- the split


@pytest.mark.parametrize("mode", ["", "local"], ids=["all-on-workers", "one-layer-here"])
def test_split_over_two_workers_gives_the_local_text(
    tmp_path: Path, tiny_gguf: Path, workers: list[Worker], mode: str
) -> None:
    local = run_client(tmp_path, tiny_gguf)
    assert local.returncode == 0, local.stderr
    assert len(local.stdout.split()) >= 3

    spec = ",".join(w.endpoint for w in workers)
    split = run_client(tmp_path, tiny_gguf, spec, mode + " verbose")
    assert split.returncode == 0, split.stderr
    assert split.stdout == local.stdout
    # The layers really went to both workers: llama.cpp names each buffer by its endpoint.
    for worker in workers:
        assert f"RPC0[{worker.endpoint}] model buffer size" in split.stderr, split.stderr
        assert f": {worker.endpoint} (RPC worker, " in split.stderr
    # 2 layers + the output layer; "local" keeps the first of the three units here.
    expected = "offloaded 2/3 layers" if mode == "local" else "offloaded 3/3 layers"
    assert expected in split.stderr, split.stderr
    assert "device: CPU: " in split.stderr
    for worker in workers:
        assert "Accepted client connection" in worker.output()


@pytest.mark.slow
def test_smollm2_split_over_two_workers_gives_the_local_text(
    tmp_path: Path, smollm2: Path, workers: list[Worker], session_cache: Path
) -> None:
    prompt = "The capital of France is"
    local = run_client(tmp_path, smollm2, "", "", 32, prompt)
    assert local.returncode == 0, local.stderr
    assert len(local.stdout.split()) >= 5

    spec = ",".join(w.endpoint for w in workers)
    split = run_client(tmp_path, smollm2, spec, "verbose", 32, prompt)
    assert split.returncode == 0, split.stderr
    assert split.stdout == local.stdout
    assert "offloaded 31/31 layers" in split.stderr
    # The workers keep copies of the large tensors (over 10 MB) in the llamapyz cache.
    assert any((session_cache / "rpc").iterdir())
    assert f"local cache    : {session_cache / 'rpc'}" in workers[0].output()


def test_worker_speaks_the_protocol_version_this_runtime_expects(workers: list[Worker]) -> None:
    assert rpc_protocol.server_version("127.0.0.1", workers[0].port) == rpc_protocol.PROTOCOL
    assert (
        "Starting RPC server v" + ".".join(map(str, rpc_protocol.PROTOCOL)) in workers[0].output()
    )


# --------------------------------------------------------------------------- failures


def test_unreachable_worker_is_one_line_not_an_abort(tmp_path: Path, tiny_gguf: Path) -> None:
    port = free_port()  # nobody listens there
    result = run_client(tmp_path, tiny_gguf, f"127.0.0.1:{port}")
    assert_clean_error(result, 1, f"cannot reach the RPC worker 127.0.0.1:{port}")
    assert result.stderr == (
        f"Error: cannot reach the RPC worker 127.0.0.1:{port} (Connection refused)\n"
    )


def test_unreachable_second_worker_is_named(
    tmp_path: Path, tiny_gguf: Path, workers: list[Worker]
) -> None:
    port = free_port()
    result = run_client(tmp_path, tiny_gguf, f"{workers[0].endpoint},127.0.0.1:{port}")
    assert_clean_error(result, 1, f"Error: cannot reach the RPC worker 127.0.0.1:{port} (")


def test_worker_killed_mid_generation_is_one_line_and_exit_1(
    tmp_path: Path, tiny_gguf: Path, workers: list[Worker]
) -> None:
    spec = ",".join(w.endpoint for w in workers)
    proc = subprocess.Popen(
        client(tmp_path, tiny_gguf, spec, "pause", 100),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        started = proc.stdout.readline()
        assert started.endswith("<started>\n"), (started, proc.stderr and proc.stderr.read())
        victim = workers[1]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        with contextlib.suppress(BrokenPipeError):  # it may notice before it reads
            proc.stdin.write("go on\n")
            proc.stdin.flush()
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert err == (
        f"Error: lost the connection to the RPC worker {victim.endpoint} "
        "(it stopped, or the network failed); the model cannot run without it\n"
    )
    assert "ggml-rpc.cpp" not in err and "Traceback" not in err


def test_worker_gone_between_check_and_connect_is_one_line(tmp_path: Path) -> None:
    """The safety net behind check_endpoint: ggml-rpc's own abort becomes one line."""
    port = free_port()
    code = (
        "from runtime.engine.decoding import model as engine\n"
        "from runtime.engine.devices import cpu\n"
        "from runtime.rpc import client as rpc\n"
        "engine.set_verbose(False)\n"
        "engine.start_backend(cpu.choose().path)\n"
        "rpc.lost.install_abort_message(rpc.ggml())\n"  # what add_servers does before ggml connects
        "add = rpc.proc('ggml_backend_rpc_add_server', rpc._ADD_SERVER)\n"
        f"add(b'127.0.0.1:{port}')\n"  # no check first: ggml-rpc itself fails to connect
        "print('not reached')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert_clean_error(result, 1, f"Error: cannot reach the RPC worker 127.0.0.1:{port}")


def test_abort_messages_from_ggml_rpc_become_one_line() -> None:
    where = "/build/vendor/llama.cpp/ggml/src/ggml-rpc/ggml-rpc.cpp:593: "
    assert (
        lost.abort_message(where + "Failed to connect to 10.0.0.9:50052\n")
        == "Error: cannot reach the RPC worker 10.0.0.9:50052"
    )
    assert "speaks another version" in (
        lost.abort_message(where + "RPC handshake failed for 10.0.0.9:50052") or ""
    )
    assert (
        lost.abort_message(where + "Remote RPC server crashed or returned malformed response") or ""
    ).startswith("Error: lost the connection to an RPC worker")
    assert lost.abort_message("/x/ggml.c:12: GGML_ASSERT(x) failed") is None


def test_worker_on_a_busy_port_is_an_rpc_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        message = f"cannot listen on 127.0.0.1:{port} (Address already in use)"
        with pytest.raises(RpcError) as caught:
            rpc_worker.serve_worker("127.0.0.1", port, 1, tmp_path / "cache")
        assert str(caught.value) == message
        result = subprocess.run(
            worker_command(f"127.0.0.1:{port}"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
    assert_clean_error(result, 1, message)
    assert result.stderr == f"Error: {message}\n"


def test_worker_listens_on_ipv4_only() -> None:
    with pytest.raises(RpcError, match=r"cannot listen on \[::1\]:50052 .*IPv4 only"):
        rpc_worker.check_listen("::1", 50052)
    with pytest.raises(RpcError, match=r"cannot reach the RPC worker \[::1\]:50052 .*IPv4"):
        rpc_protocol.check_endpoint("::1", 50052)


def test_localhost_worker_listens_on_127_0_0_1() -> None:
    assert rpc_worker.check_listen("localhost", free_port()) == "127.0.0.1"


# --------------------------------------------------------------------------- the handshake


@contextlib.contextmanager
def fake_worker(reply: Optional[bytes]) -> Iterator[int]:
    """A socket that reads one HELLO and answers `reply` (None: never answers)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
                if reply:
                    with contextlib.suppress(OSError):
                        conn.recv(1)
            else:
                done.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        done.set()
        thread.join(10)
        server.close()


def hello_reply(major: int, minor: int, patch: int) -> bytes:
    return (28).to_bytes(8, "little") + bytes([major, minor, patch, 0]) + bytes(24)


def test_handshake_reads_the_version() -> None:
    with fake_worker(hello_reply(*rpc_protocol.PROTOCOL)) as port:
        rpc_protocol.check_endpoint("127.0.0.1", port)


@pytest.mark.parametrize(
    "reply, timeout, message",
    [
        (hello_reply(6, 1, 0), 5.0, "speaks RPC protocol 6.1.0 and this llamapyz speaks 7.0.0"),
        (hello_reply(7, 9, 0), 5.0, "speaks RPC protocol 7.9.0"),
        (b"", 5.0, "closed the connection during the handshake"),
        ((3).to_bytes(8, "little") + b"abc", 5.0, "with a 3-byte message"),
        (None, 0.5, "did not answer the handshake in 0.5 s"),
    ],
    ids=["old-major", "newer-minor", "closed", "wrong-size", "silent"],
)
def test_handshake_refuses_another_protocol(
    reply: Optional[bytes], timeout: float, message: str
) -> None:
    with fake_worker(reply) as port, pytest.raises(RpcError) as caught:
        rpc_protocol.check_endpoint("127.0.0.1", port, timeout=timeout)
    assert message in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)


# --------------------------------------------------------------------------- parsing


def test_parse_endpoints() -> None:
    assert rpc_endpoints.parse_endpoints("host1:50052,host2:50052") == [
        ("host1", 50052),
        ("host2", 50052),
    ]
    assert rpc_endpoints.parse_endpoints(" 10.0.0.2:1 , [::1]:50052 ") == [
        ("10.0.0.2", 1),
        ("::1", 50052),
    ]
    assert rpc_endpoints.parse_endpoints("gpu-box.local:65535") == [("gpu-box.local", 65535)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--rpc needs at least one worker, as HOST:PORT"),
        ("  ", "--rpc needs at least one worker, as HOST:PORT"),
        ("a:1,,b:2", "--rpc: 'a:1,,b:2' has an empty item; separate workers with one comma"),
        ("a:1,", "--rpc: 'a:1,' has an empty item"),
        (
            "host1",
            "--rpc: 'host1' has no port; give it as HOST:PORT (a worker's usual port is 50052)",
        ),
        ("host1:", "--rpc: 'host1:' has a bad port ''; a port is a number from 1 to 65535"),
        ("host1:0", "has a bad port '0'"),
        ("host1:65536", "has a bad port '65536'"),
        ("host1:http", "has a bad port 'http'"),
        ("host1:-5", "has a bad port '-5'"),
        (":50052", "--rpc: ':50052' has no host; give it as HOST:PORT"),
        ("bad_host:50052", "--rpc: 'bad_host:50052' has a bad host 'bad_host'"),
        ("300.1.2.3:50052", "has a bad host '300.1.2.3'"),
        ("-x:50052", "has a bad host '-x'"),
        ("::1:50052", "--rpc: write the IPv6 address in '::1:50052' in brackets, as [::1]:50052"),
        ("[::1:50052", "opens a bracket it does not close"),
        ("[::1]", "--rpc: '[::1]' has no port"),
        ("[1.2.3.4]:5", "which is not an IPv6 address"),
        ("a:1,a:1", "--rpc: a:1 is named twice"),
        (
            ",".join(f"h{i}:1" for i in range(17)),
            "--rpc names 17 workers; llama.cpp takes at most 16",
        ),
    ],
)
def test_malformed_rpc_lists(text: str, message: str) -> None:
    with pytest.raises(RpcError) as caught:
        rpc_endpoints.parse_endpoints(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_loopback_and_warning() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]", "LOCALHOST"):
        assert rpc_endpoints.is_loopback(host), host
        assert rpc_endpoints.exposure_warning(host, 50052) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        assert not rpc_endpoints.is_loopback(host), host
        warning = rpc_endpoints.exposure_warning(host, 50052) or ""
        assert rpc_endpoints.format_endpoint(host, 50052) in warning and "trust" in warning


# --------------------------------------------------------------------------- the plan


def test_plan_offload_all_on_workers() -> None:
    plan = rpc.plan_offload([11, 22])
    assert plan.n_gpu_layers == -1 and plan.local_layers is None
    assert list(plan.devices) == [11, 22, None]
    assert list(plan.tensor_split)[:3] == [1.0, 1.0, 0.0]
    assert len(plan.tensor_split) == rpc_endpoints.MAX_SERVERS


def test_plan_offload_keeps_a_share_here() -> None:
    plan = rpc.plan_offload([11, 22], [2, 1, 1], include_local=True, n_layer=30)
    assert plan.local_layers == 8 and plan.n_gpu_layers == 23  # 31 units: 30 layers + output
    assert list(plan.tensor_split)[:3] == [2.0, 1.0, 0.0]
    everything_here = rpc.plan_offload([11], [0, 1], include_local=True, n_layer=4)
    assert everything_here.n_gpu_layers == 0


@pytest.mark.parametrize(
    "weights, include_local, n_layer, message",
    [
        ([1], False, None, "the split has 1 weights for 2 devices"),
        ([1, 1], True, 4, "the split has 2 weights for 3 devices (the workers, then this machine)"),
        ([1, -1], False, None, "numbers >= 0"),
        ([0, 0], False, None, "not all 0"),
        ([1, float("nan")], False, None, "numbers >= 0"),
        (None, True, None, "needs its layer count"),
        ([0, 0, 1], True, 0, "needs its layer count"),
    ],
)
def test_plan_offload_refuses(
    weights: Optional[list[float]], include_local: bool, n_layer: Optional[int], message: str
) -> None:
    with pytest.raises(RpcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rpc.plan_offload([11, 22], weights, include_local=include_local, n_layer=n_layer)


def test_apply_to_params_sets_the_fields(tiny_gguf: Path) -> None:
    import ctypes

    from runtime.engine.decoding import model as engine

    C = engine.bindings()
    params = C.llama_model_default_params()
    params.n_gpu_layers = 0
    plan = rpc.apply_to_params(params, [11, 22], [3, 1])
    assert params.devices == ctypes.addressof(plan.devices)
    assert params.n_gpu_layers == -1
    assert params.split_mode == C.LLAMA_SPLIT_MODE_LAYER
    assert [params.tensor_split[i] for i in range(3)] == [3.0, 1.0, 0.0]


def test_layer_count(tiny_gguf: Path, tmp_path: Path) -> None:
    assert rpc.layer_count(tiny_gguf) == 2
    embedded = tmp_path / "embedded.bin"
    embedded.write_bytes(b"\0" * 65536 + tiny_gguf.read_bytes())
    assert rpc.layer_count(embedded, 65536) == 2
    with pytest.raises(RpcError, match="cannot read the layer count"):
        rpc.layer_count(embedded)


@pytest.mark.slow
def test_layer_count_smollm2(smollm2: Path) -> None:
    assert rpc.layer_count(smollm2) == 30


def test_bundled_rpc_library_is_found() -> None:
    assert rpc.rpc_library().name == "libggml-rpc.so"


def test_worker_keeps_its_cache_in_the_llamapyz_cache(tmp_path: Path) -> None:
    port = free_port()
    worker = Worker(port, tmp_path / "w.log")
    try:
        worker.wait_ready()
        assert os.path.isdir(Path(os.environ["LLAMAPYZ_CACHE"]) / "rpc")
        assert f"llamapyz RPC worker on 127.0.0.1:{port}: CPU " in worker.output()
    finally:
        worker.stop()

"""Fixtures: a tiny real GGUF written with GGUFWriter, SmolLM2 from a cache, built .pyz files,
and an isolated cache and HOME for every subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import fetch_smollm2  # noqa: E402

# The tests' vision pair, shared with the benchmarks; the tests import it from here.
from tiny_vision import image_bytes, write_tiny_projector  # noqa: E402, F401

from runtime.engine.devices import selftest_model  # noqa: E402

PACK = str(Path(sys.executable).parent / "pack")


def default_sigint() -> None:
    """preexec_fn of a child that a test interrupts: SIGINT as a terminal would deliver it.

    A process started with SIGINT ignored (`nohup`, `cmd &` in a script, some CI runners)
    passes that on to its children, and Python then never raises KeyboardInterrupt: the
    test would test the parent shell instead of the program.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


WORDS = [*selftest_model.WORDS, "home"]


@pytest.fixture(params=["parent-default", "parent-ignores-sigint"])
def parent_sigint(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test process's own SIGINT, as a terminal or as `nohup make test &` leaves it."""
    ignored = request.param == "parent-ignores-sigint"
    previous = signal.signal(
        signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler
    )
    yield str(request.param)
    signal.signal(signal.SIGINT, previous)


def write_tiny_gguf(
    path: Path,
    *,
    chat_template: str | None = None,
    seed: int = 2,
    extra_tokens: list[str] | None = None,
    vision_keys: bool = False,
    architecture: str = "llama",
) -> Path:
    """A runnable llama model: 2 layers, 64 wide, random F32 weights, an ASCII SentencePiece vocab.
    `architecture="qwen2vl"`: the same weights as Qwen2-VL's text model, whose rotary positions
    come in sections (M-RoPE: time, row, column), as the qwen2vl projector's images want."""
    import gguf

    rng = np.random.default_rng(seed)
    n_embd, n_head, n_ff, n_layer = 64, 4, 128, 2
    # Byte fallback tokens, as real SentencePiece vocabularies have for every byte: llama.cpp's
    # tokenizer throws on a character it can spell no other way. Printable ASCII first.
    ascii_bytes = [0x0A, *range(0x20, 0x7F)]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in ascii_bytes]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * len(ascii_bytes)
    pieces = ["\u2581" + w for w in WORDS] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [".", ",", "\u2581"]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    for extra in extra_tokens or []:
        tokens.append(extra)
        types.append(gguf.TokenType.CONTROL)
    n_first = len(tokens)
    # The other byte tokens come last, with weights of their own drawn after the rest, so the
    # tokens and weights above stay as they were: llama.cpp's SentencePiece tokenizer needs all
    # 256 (the validator refuses a vocabulary without them). Their outputs are near zero, so
    # they are never among the likeliest and output stays valid UTF-8.
    other_bytes = [b for b in range(256) if b not in ascii_bytes]
    tokens += [f"<0x{b:02X}>" for b in other_bytes]
    types += [gguf.TokenType.BYTE] * len(other_bytes)
    n_vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"tiny-{architecture}")
    writer.add_context_length(256)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    if architecture == "qwen2vl":  # the head's 8 rotary pairs: 2 for time, 3 each for y and x
        writer.add_rope_dimension_sections([2, 3, 3, 0])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) for i in range(n_vocab)])
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if vision_keys:  # a vision tower merged into the model, as Ollama's newer blobs have it
        writer.add_uint32("llama.vision.block_count", 1)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    late = np.random.default_rng(seed + 1000)  # the weights of the tokens that come last
    n_late = n_vocab - n_first

    def rows(first: np.ndarray, scale: float) -> np.ndarray:
        extra = (late.standard_normal((n_late, n_embd)) * scale).astype(np.float32)
        return np.concatenate([first, extra])

    writer.add_tensor("token_embd.weight", rows(weight(n_first, n_embd), 0.2))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    output = weight(n_first, n_embd)
    output[3 : 3 + len(ascii_bytes)] *= 0.05  # byte tokens: rarely the likeliest, as in real models
    writer.add_tensor("output.weight", rows(output, 0.001))
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(p + name + ".weight", weight(n_embd, n_embd))
        writer.add_tensor(p + "ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(p + "ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(p + "ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One llamapyz cache for the session: the runtime zip and CPU choice are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_env(
    session_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLAMAPYZ_CACHE", str(session_cache))
    monkeypatch.setenv("LLAMAPYZ_DEV_CACHE", str(fetch_smollm2.dev_cache()))
    for var in ("XDG_CACHE_HOME", "SHIV_ROOT", "LLAMAPYZ_CPU_VARIANT"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return fetch_smollm2.fetch()


def pack(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the real `pack` command."""
    return subprocess.run(
        [PACK, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        **kw,  # type: ignore[call-overload]
    )


def run_pyz(
    pyz: Path, *args: str, cwd: Path | None = None, input: str | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a .pyz as a user does: as an executable file."""
    return subprocess.run(
        [str(pyz), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        input=input,
        timeout=600,
        **kw,  # type: ignore[call-overload]
    )


def build_session_pyz(factory: pytest.TempPathFactory, cache: Path, *args: str) -> Path:
    out = factory.mktemp("pyz") / "model.pyz"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    result = pack("build", *args, "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_pyz(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path
) -> Path:
    return build_session_pyz(tmp_path_factory, session_cache, str(tiny_gguf))


@pytest.fixture(scope="session")
def bare_pyz(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    return build_session_pyz(tmp_path_factory, session_cache, "--no-weights")


@pytest.fixture(scope="session")
def smollm2_pyz(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, smollm2: Path
) -> Path:
    return build_session_pyz(tmp_path_factory, session_cache, str(smollm2))


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    """One clear line on stderr containing `text`, the exit code, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert text in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    if code == 1:
        # Where the model ran (`runtime.engine.devices.gpu`) is said once it has loaded; an error
        # in a later step (a grammar, a template) follows that line.
        lines = [x for x in result.stderr.strip().splitlines() if not x.startswith(PLACEMENT)]
        assert len(lines) == 1, result.stderr


PLACEMENT = ("no GPU found (", "offloaded ", "warning: -ngl ")


# A tool that every server test offers the model.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`pyz --server` on a free port, started when it says "serving"; `launcher` runs it (an
    emulator, a chroot and the Python inside it), `env` replaces the environment."""

    def __init__(
        self,
        pyz: Path,
        *args: str,
        preexec_fn: Callable[[], None] | None = None,
        launcher: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*launcher, str(pyz), "--server", "--port", str(self.port), "--nobrowser", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
            env=env,
        )
        deadline = time.monotonic() + (300 if launcher else 120)
        self.banner = ""
        while "serving" not in self.banner:
            line = self.proc.stderr.readline() if self.proc.stderr else ""
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"the server stopped: {self.proc.returncode}: {self.banner}")
            self.banner += line
            assert time.monotonic() < deadline, self.banner

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture(scope="module")
def smollm2_server(smollm2_pyz: Path) -> Iterator[Server]:
    """SmolLM2 serving both API dialects, two slots, greedy unless a request says otherwise."""
    srv = Server(smollm2_pyz, "-c", "2048", "--parallel", "2", "--temp", "0")
    yield srv
    print("SERVER STDERR:", srv.stop()[-3000:])

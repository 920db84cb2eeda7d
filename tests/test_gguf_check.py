"""The GGUF check: every kind of broken file the issue lists is refused, in-process, by `pack build`,
by `-m` and by a server; good files (SmolLM2, the fixtures) pass; mutations of a real header
raise nothing but the check's own error and never kill a process with a signal."""

from __future__ import annotations

import json
import random
import struct
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, pack, run_pyz, write_tiny_gguf

from runtime.engine.devices import selftest_model
from runtime.file import gguf_check
from runtime.file.gguf_check import GGUFError, check

LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
RECURSE = "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}"
N_EMBD = 32


def write_model(
    path: Path,
    *,
    byte_tokens: bool = True,
    n_scores: int | None = None,
    eos: int = 2,
    embd_vocab: int | None = None,
    chat_template: str | None = None,
    tokenizer: str = "llama",
    pre: str | None = None,
) -> Path:
    """A small llama GGUF with a knob for each way a converter gets one wrong."""
    import gguf

    rng = np.random.default_rng(5)
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    if byte_tokens:
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        types += [gguf.TokenType.BYTE] * 256
    pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581", " ", "\u0120"]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("broken")
    w.add_context_length(64)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(1)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(N_EMBD // 2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model(tokenizer)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(n_scores if n_scores is not None else n_vocab)])
    w.add_token_types(types)
    if tokenizer == "gpt2":
        w.add_token_merges(["a b", "c d"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(eos)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def t(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", t(embd_vocab or n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", t(n_vocab, N_EMBD))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", t(N_EMBD, N_EMBD))
    w.add_tensor("blk.0.ffn_gate.weight", t(64, N_EMBD))
    w.add_tensor("blk.0.ffn_up.weight", t(64, N_EMBD))
    w.add_tensor("blk.0.ffn_down.weight", t(N_EMBD, 64))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _truncated(path: Path) -> Path:
    write_model(path)
    path.write_bytes(path.read_bytes()[:-1000])
    return path


def _overlapping(path: Path) -> Path:
    """output.weight's offset set to token_embd.weight's: two tensors on the same bytes."""
    write_model(path)
    data = bytearray(path.read_bytes())
    at = data.index(_string("output.weight")) + len(_string("output.weight"))
    n_dims = struct.unpack_from("<I", data, at)[0]
    offset_at = at + 4 + 8 * n_dims + 4
    struct.pack_into("<Q", data, offset_at, 0)  # token_embd.weight starts the data
    path.write_bytes(bytes(data))
    return path


def _huge_array(path: Path) -> Path:
    """The scores array claims 2^40 floats in a header of a few KB."""
    write_model(path)
    data = bytearray(path.read_bytes())
    at = data.index(_string("tokenizer.ggml.scores")) + len(_string("tokenizer.ggml.scores"))
    assert struct.unpack_from("<II", data, at) == (9, 6)  # an array of float32
    struct.pack_into("<Q", data, at + 8, 1 << 40)
    path.write_bytes(bytes(data))
    return path


BROKEN: dict[str, tuple[Callable[[Path], Path], str]] = {
    "spm-without-byte-tokens": (
        lambda p: write_model(p, byte_tokens=False),
        "its SentencePiece vocabulary lacks byte tokens (<0x00>...<0xFF>; missing <0x00> and 228 more)",
    ),
    "mismatched-arrays": (
        lambda p: write_model(p, n_scores=100),
        "its vocabulary has 288 tokens but 100 scores (tokenizer.ggml.scores)",
    ),
    "special-id-out-of-range": (
        lambda p: write_model(p, eos=999),
        "tokenizer.ggml.eos_token_id is 999, outside its vocabulary of 288 tokens",
    ),
    "embedding-of-wrong-vocab": (
        lambda p: write_model(p, embd_vocab=280),
        "the tensor token_embd.weight is for 280 tokens, but the vocabulary has 288",
    ),
    "tensor-past-eof": (_truncated, "past the end of the file"),
    "overlapping-tensors": (
        _overlapping,
        "the tensors token_embd.weight and output.weight overlap",
    ),
    "2^40-element-array": (_huge_array, "the 1099511627776 items of tokenizer.ggml.scores"),
}
TEMPLATES = {
    "looping-template": (LOOP, "it ran for more than 2 s"),
    "recursive-template": (RECURSE, "it recursed too deeply"),
}
STOPPED = "the chat template was stopped: "  # what chat and server say, then the reason


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each broken kind, written once, with the text its refusal must hold."""
    where = tmp_path_factory.mktemp("broken")
    files = {kind: (make(where / f"{kind}.gguf"), why) for kind, (make, why) in BROKEN.items()}
    for kind, (source, why) in TEMPLATES.items():
        files[kind] = (write_model(where / f"{kind}.gguf", chat_template=source), why)
    return files


@pytest.mark.parametrize("kind", list(BROKEN))
def test_each_broken_kind_is_refused_in_process(
    broken: dict[str, tuple[Path, str]], kind: str
) -> None:
    path, why = broken[kind]
    with pytest.raises(GGUFError) as info:
        check(path)
    message = str(info.value)
    assert message.startswith((f"{path}: ", f"{path} is truncated: ")), message
    assert why in message, message
    assert "\n" not in message


def test_good_files_pass(smollm2: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """No false refusals: SmolLM2 (BPE), the tiny fixture (SentencePiece), the self-test model,
    the chat fixture, a well-made file of this module, and a file without a vocabulary."""
    header = check(smollm2)
    assert header.arrays["tokenizer.ggml.tokens"] == (gguf_check.STRING, 49152)
    assert len(header.tensors) == 272 and header.meta["tokenizer.ggml.model"] == "gpt2"
    check(tiny_gguf)
    check(write_tiny_gguf(tmp_path / "chat.gguf", extra_tokens=["<|im_start|>", "<|im_end|>"]))
    selftest_model.write(tmp_path / "selftest.gguf")
    check(tmp_path / "selftest.gguf")
    check(write_model(tmp_path / "good.gguf"))
    import gguf

    bare = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    bare.add_tensor("t.weight", np.ones((4, 32), dtype=np.float32))
    bare.write_header_to_file()
    bare.write_kv_data_to_file()
    bare.write_tensors_to_file()
    bare.close()
    check(tmp_path / "bare.gguf")


def test_type_sizes_match_gguf_py() -> None:
    import gguf

    for kind, sizes in gguf.GGML_QUANT_SIZES.items():
        assert gguf_check.TYPE_SIZES.get(int(kind)) == sizes, kind


@pytest.mark.slow
@pytest.mark.parametrize("kind", [*BROKEN, *TEMPLATES])
def test_pack_build_refuses(broken: dict[str, tuple[Path, str]], kind: str, tmp_path: Path) -> None:
    path, why = broken[kind]
    out = tmp_path / "out"
    out.mkdir()
    result = pack("build", str(path), "-o", str(out / "x.pyz"))
    assert_clean_error(result, 1, why)
    assert result.stderr.startswith((f"Error: {path}: ", f"Error: {path} is truncated: "))
    if kind in TEMPLATES:
        assert (
            "its chat template (tokenizer.chat_template) was stopped on a sample" in result.stderr
        )
    assert list(out.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BROKEN))
def test_run_and_server_refuse(
    broken: dict[str, tuple[Path, str]], kind: str, bare_pyz: Path
) -> None:
    path, why = broken[kind]
    assert_clean_error(run_pyz(bare_pyz, "-m", str(path), "-p", "hi", "-n", "2"), 1, why)
    server = run_pyz(bare_pyz, "-m", str(path), "--server", "--port", "0", "--nobrowser")
    assert_clean_error(server, 1, why)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TEMPLATES))
def test_template_refused_in_chat(
    broken: dict[str, tuple[Path, str]], kind: str, bare_pyz: Path
) -> None:
    path, why = broken[kind]
    result = run_pyz(bare_pyz, "-m", str(path), "--chat", "-n", "2", input="hi\n")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"Error: {STOPPED}{why}", result.stderr


@pytest.mark.slow
def test_server_answers_a_stopped_template_with_400_and_keeps_serving(
    broken: dict[str, tuple[Path, str]], bare_pyz: Path
) -> None:
    from conftest import Server
    from test_server import post

    path, why = broken["looping-template"]
    srv = Server(bare_pyz, "-m", str(path), "-c", "64")
    try:
        model = json.loads(urllib.request.urlopen(srv.url + "/v1/models").read())["data"][0]["id"]
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(2):
            status, body = post(srv, "/v1/chat/completions", json.dumps(chat).encode(), key=None)
            assert status == 400 and body["error"]["message"] == STOPPED + why, body
        text = {"model": model, "prompt": "ab", "max_tokens": 2}
        status, body = post(srv, "/v1/completions", json.dumps(text).encode(), key=None)
        assert status == 200 and body["choices"][0]["finish_reason"] in ("length", "stop"), body
        assert srv.proc.poll() is None
    finally:
        srv.stop()


@pytest.mark.slow
def test_llama_cpp_reason_is_its_first_error_line(bare_pyz: Path, tmp_path: Path) -> None:
    """A file the check passes but llama.cpp refuses: the reason, not 'failed to load model'."""
    path = write_model(tmp_path / "pre.gguf", tokenizer="gpt2", pre="no-such-pre-tokenizer")
    check(path)
    result = run_pyz(bare_pyz, "-m", str(path), "-p", "hi")
    assert_clean_error(
        result,
        1,
        "error loading model vocabulary: unknown pre-tokenizer type: 'no-such-pre-tokenizer'",
    )


def _mutants(good: bytes, data_start: int, n: int) -> list[tuple[str, bytes]]:
    """`n` damaged copies of `good`'s header: flipped bits, zeroed and maxed 8-byte lengths,
    cuts. Deterministic."""
    rng = random.Random(14)
    out = []
    for i in range(n):
        data = bytearray(good)
        how = i % 4
        at = rng.randrange(4, data_start)
        if how == 0:
            data[at] ^= 1 << rng.randrange(8)
            what = f"bit flip at {at}"
        elif how == 1:
            data[at : at + 8] = bytes(8)
            what = f"zeroed 8 bytes at {at}"
        elif how == 2:
            data[at : at + 8] = b"\xff" * 8
            what = f"maxed 8 bytes at {at}"
        else:
            cut = rng.randrange(0, len(good))
            data = data[:cut]
            what = f"cut at {cut}"
        out.append((what, bytes(data)))
    return out


def test_fuzzed_headers_raise_only_the_checks_error(tiny_gguf: Path, tmp_path: Path) -> None:
    good = tiny_gguf.read_bytes()
    start = check(tiny_gguf).data_start
    path = tmp_path / "m.gguf"
    refused = 0
    for what, data in _mutants(good, start, 400):
        path.write_bytes(data)
        try:
            check(path)
        except GGUFError as exc:
            refused += 1
            assert str(exc).startswith(f"{path}") and "\n" not in str(exc), (what, exc)
        except Exception as exc:  # anything else is a bug in the check
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    assert 100 < refused < 400  # most damage is caught; some lands in text and passes


@pytest.mark.slow
def test_fuzzed_headers_never_kill_a_run(tiny_gguf: Path, bare_pyz: Path, tmp_path: Path) -> None:
    good = tiny_gguf.read_bytes()
    start = check(tiny_gguf).data_start
    mutants = _mutants(good, start, 400)
    passing, refused = [], []
    for i, (what, data) in enumerate(mutants):
        path = tmp_path / f"m{i}.gguf"
        path.write_bytes(data)
        try:
            check(path)
            passing.append((what, path))
        except GGUFError:
            refused.append((what, path))
    sample = passing[:: max(1, len(passing) // 8)][:8] + refused[:: len(refused) // 4][:4]
    for what, path in sample:
        result = run_pyz(bare_pyz, "-m", str(path), "-p", "the quick", "-n", "2", "--temp", "0")
        assert result.returncode in (0, 1), (what, result.returncode, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (what, result.stderr)

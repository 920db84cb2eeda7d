"""Ollama's store and llamafile's habits, end to end through real .pyz files: `-m ollama:NAME`,
`pack build ollama:NAME`, default arguments baked into a file, llamafile's flags and files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import assert_clean_error, pack, run_pyz
from test_llamafile import write_zip
from test_ollama import LICENSE, SYSTEM, Store, full_layers

PROMPT = "the quick brown fox"


@pytest.fixture()
def store(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    s = Store(tmp_path / "ollama")
    s.add("smol", layers=full_layers(tiny_gguf.read_bytes()))  # temperature 0, num_predict 5
    s.add("plain", layers=[("model", tiny_gguf.read_bytes())])
    monkeypatch.setenv("OLLAMA_MODELS", str(s.root))
    return s


def out(pyz: Path, *args: str, **kw: object) -> str:
    result = run_pyz(pyz, *args, **kw)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ollama_model_runs_with_its_params(bare_pyz: Path, tiny_gguf: Path, store: Store) -> None:
    via_ollama = out(bare_pyz, "-m", "ollama:smol", "-p", PROMPT)
    assert via_ollama == out(bare_pyz, "-m", str(tiny_gguf), "-p", PROMPT, "--temp", "0", "-n", "5")
    # The user's flags win over the Modelfile's.
    longer = out(bare_pyz, "-m", "ollama:smol", "-p", PROMPT, "-n", "9")
    assert longer == out(bare_pyz, "-m", str(tiny_gguf), "-p", PROMPT, "--temp", "0", "-n", "9")
    assert len(longer) > len(via_ollama)
    # As Ollama users type it, without the prefix, and by digest.
    assert out(bare_pyz, "-m", "smol:latest", "-p", PROMPT) == via_ollama
    digest = json.loads(
        (store.root / "manifests/registry.ollama.ai/library/plain/latest").read_text()
    )
    hex_digest = digest["layers"][0]["digest"].split(":")[1]
    args = ("-p", PROMPT, "--temp", "0", "-n", "5")
    assert out(bare_pyz, "-m", f"sha256-{hex_digest}", *args) == via_ollama
    assert out(bare_pyz, "-m", f"sha256:{hex_digest}", *args) == via_ollama


def test_ollama_system_layer_reaches_the_chat(
    bare_pyz: Path, tiny_gguf: Path, store: Store
) -> None:
    chat = ("--chat", "--temp", "0", "-n", "6")
    via_ollama = out(bare_pyz, "-m", "ollama:smol", *chat, input="hello\n")
    with_system = out(bare_pyz, "-m", str(tiny_gguf), *chat, "--system", SYSTEM, input="hello\n")
    without = out(bare_pyz, "-m", str(tiny_gguf), *chat, input="hello\n")
    assert via_ollama == with_system != without


def test_pack_build_from_ollama(store: Store, tmp_path: Path, tiny_gguf: Path) -> None:
    target = tmp_path / "smol.pyz"
    built = pack("build", "ollama:smol", "-o", str(target))
    assert built.returncode == 0, built.stderr
    assert "has a Go chat template, which cannot run as Jinja" in built.stderr
    manifest = json.loads(pack("inspect", "--json", str(target)).stdout)
    assert manifest["args"] == ["--temp", "0", "-n", "5", "--stop", "</s>", "--system", SYSTEM]
    assert manifest["model"]["license_text"] == LICENSE
    assert manifest["model"]["ollama"] == "ollama:smol:latest"
    assert manifest["weights"]["filename"] == "smol-latest.gguf"
    shown = pack("inspect", str(target)).stdout
    assert "default args:   --temp 0 -n 5 --stop </s> --system" in shown
    assert out(target, "-p", PROMPT) == out(
        target, "-m", str(tiny_gguf), "-p", PROMPT, "--temp", "0", "-n", "5"
    )


def test_ollama_refusals(bare_pyz: Path, store: Store, tmp_path: Path) -> None:
    for name, text in [
        ("ollama:../../etc/passwd", "is not an Ollama model name"),
        ("ollama:../x", "is not an Ollama model name"),
        ("ollama:/etc/passwd", "is not an Ollama model name"),
        ("ollama:smoll", "ollama:smol:latest"),  # the suggestion
    ]:
        result = run_pyz(bare_pyz, "-m", name, "-p", "hi")
        assert_clean_error(result, 1, text)
    # A blob that no longer matches its digest: refused by pack build (sha256), and at run
    # time when its size is off.
    _, layers = store.add("broken", layers=[("model", b"GGUF" + bytes(60))])
    store.blob_path(layers[0]).write_bytes(b"GGUF" + bytes(61))
    assert_clean_error(
        run_pyz(bare_pyz, "-m", "ollama:broken", "-p", "hi"),
        1,
        "has 65 bytes, but its manifest says 64",
    )
    store.blob_path(layers[0]).write_bytes(b"GGUF" + bytes(59) + b"\x01")
    built = pack("build", "ollama:broken", "-o", str(tmp_path / "b.pyz"))
    assert_clean_error(built, 1, "sha256")
    assert not (tmp_path / "b.pyz").exists()
    store.add("notgguf", layers=[("model", b"PK\x03\x04 not a model")])
    assert_clean_error(
        run_pyz(bare_pyz, "-m", "ollama:notgguf", "-p", "hi"), 1, "is not a GGUF model"
    )
    store.add("nomodel", layers=[("system", b"hi")])
    assert_clean_error(run_pyz(bare_pyz, "-m", "ollama:nomodel", "-p", "hi"), 1, "ollama:nomodel")
    bad = store.root / "manifests/registry.ollama.ai/library/badjson/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert_clean_error(run_pyz(bare_pyz, "-m", "ollama:badjson", "-p", "hi"), 1, "not valid JSON")


def test_list_ollama(store: Store) -> None:
    listed = pack("list-ollama")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "MODIFIED"]
    assert [line.split()[0] for line in lines[1:]] == ["plain:latest", "smol:latest"]


def test_baked_args_limit_tokens_unless_the_user_says(tiny_gguf: Path, tmp_path: Path) -> None:
    target = tmp_path / "three.pyz"
    built = pack("build", str(tiny_gguf), "-o", str(target), "--", "-n", "3", "--temp", "0")
    assert built.returncode == 0, built.stderr
    assert "default args:   -n 3 --temp 0" in pack("inspect", str(target)).stdout
    three = out(target, "-p", PROMPT)
    assert three == out(target, "-p", PROMPT, "-n", "3", "--temp", "0")
    assert len(out(target, "-p", PROMPT, "-n", "10")) > len(three)


def test_args_file_with_placeholder(tiny_gguf: Path, tmp_path: Path) -> None:
    args = tmp_path / "my.args"
    args.write_text("# defaults for the fox\n--temp 0\n...\n-n 4  # the last word\n")
    target = tmp_path / "fox.pyz"
    built = pack("build", str(tiny_gguf), "-o", str(target), "--args-file", str(args))
    assert built.returncode == 0, built.stderr
    assert json.loads(pack("inspect", "--json", str(target)).stdout)["args"] == [
        "--temp",
        "0",
        "...",
        "-n",
        "4",
    ]
    # The user's -n comes before the file's: the file's -n 4 wins, as its place says.
    assert out(target, "-p", PROMPT, "-n", "9") == out(target, "-p", PROMPT, "-n", "4")


def test_invalid_default_args_fail_the_build(tiny_gguf: Path, tmp_path: Path) -> None:
    result = pack("build", str(tiny_gguf), "-o", str(tmp_path / "x.pyz"), "--", "--tmep", "0")
    assert_clean_error(result, 1, "the default arguments '--tmep 0' are not valid: No such option")
    assert "--temp" in result.stderr.split("--tmep 0")[1]  # the close match
    bad = tmp_path / "bad.args"
    bad.write_text("-p 'unclosed\n")
    result = pack("build", str(tiny_gguf), "-o", str(tmp_path / "x.pyz"), "--args-file", str(bad))
    assert_clean_error(result, 1, "opens a single quote that is never closed")
    assert not (tmp_path / "x.pyz").exists()


def test_llamafile_member_runs_like_the_gguf(
    bare_pyz: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    llamafile = write_zip(
        tmp_path / "tiny.llamafile", [("tiny.gguf", tiny_gguf.read_bytes(), zipfile.ZIP_STORED)]
    )
    args = ("-p", PROMPT, "--temp", "0", "-n", "8")
    assert out(bare_pyz, "-m", str(llamafile), *args) == out(bare_pyz, "-m", str(tiny_gguf), *args)
    packed = write_zip(
        tmp_path / "packed.llamafile", [("tiny.gguf", tiny_gguf.read_bytes(), zipfile.ZIP_DEFLATED)]
    )
    assert_clean_error(run_pyz(bare_pyz, "-m", str(packed), *args), 1, "compressed")


def test_llamafile_flags(tiny_pyz: Path) -> None:
    args = ("-p", PROMPT, "--temp", "0", "-n", "6")
    plain = out(tiny_pyz, *args)
    gpu = run_pyz(tiny_pyz, *args, "-ngl", "99")
    assert gpu.stdout == plain
    assert "warning: -ngl 99 asks for a GPU, but no GPU found" in gpu.stderr
    assert out(tiny_pyz, *args, "--mlock", "--cli") == plain
    assert out(tiny_pyz, *args, "--no-mmap") == plain
    stopped = out(tiny_pyz, *args, "--stop", plain.strip().split()[1])
    assert plain.startswith(stopped) and len(stopped) < len(plain)
    unknown = run_pyz(tiny_pyz, *args, "--temperature", "0")
    assert unknown.returncode == 2
    assert "No such option" in unknown.stderr and "--temperature" in unknown.stderr
    assert "Possible options: --chat-template, --temp)" in unknown.stderr  # the close matches

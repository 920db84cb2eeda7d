"""`pack build`, `inspect`, `verify`: the bytes on disk, the manifest, and every way a build can fail."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import PACK, assert_clean_error, default_sigint, pack

from runtime.file.archive import ALIGNMENT, MANIFEST_NAME, preamble


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_layout_is_shebang_aligned_gguf_then_zip(tiny_pyz: Path, tiny_gguf: Path) -> None:
    data = tiny_pyz.read_bytes()
    gguf = tiny_gguf.read_bytes()
    head = preamble(["3.9", "3.10", "3.11", "3.12", "3.13"], ["x86_64", "aarch64"])
    assert data.startswith(head)
    assert data[len(head) : ALIGNMENT] == bytes(ALIGNMENT - len(head))
    assert data[ALIGNMENT : ALIGNMENT + len(gguf)] == gguf
    assert os.stat(tiny_pyz).st_mode & 0o111 == 0o111
    with zipfile.ZipFile(tiny_pyz) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
        names = zf.namelist()
    assert manifest["weights"] == {
        "offset": ALIGNMENT,
        "size": len(gguf),
        "sha256": hashlib.sha256(gguf).hexdigest(),
        "filename": "tiny.gguf",
    }
    assert manifest["model"]["name"] == "tiny-llama"
    assert manifest["model"]["architecture"] == "llama"
    assert manifest["model"]["quantization"] == "ALL_F32"
    assert manifest["model"]["context_length"] == 256
    assert manifest["model"]["chat_template"] is False
    assert manifest["build"]["packages"]["llama_cpp_python"] == "0.3.36"
    assert {"__main__.py", "environment.json", "_llamapyz_boot.py"} <= set(names)


def test_bundle_ships_one_copy_of_each_library_and_no_headers(tiny_pyz: Path) -> None:
    with zipfile.ZipFile(tiny_pyz) as zf:
        names = [n for n in zf.namelist() if n.startswith(("site-packages/", "native/x86_64/"))]
    libs = sorted(n.rsplit("/", 1)[1] for n in names if "/llama_cpp/lib/" in n)
    assert libs == ["libggml-base.so.0", "libggml.so.0", "libllama.so"]
    variants = [n for n in names if "/bin/libggml-cpu-" in n]
    assert any(n.endswith("libggml-cpu-x64.so") for n in variants) and len(variants) >= 8
    assert not any("/include/" in n or "/cmake/" in n or "numpy" in n for n in names)
    assert "site-packages/llama_cpp/llama.py" not in names  # imports numpy; unused


def test_inspect_reads_without_running(tiny_pyz: Path) -> None:
    result = pack("inspect", str(tiny_pyz))
    assert result.returncode == 0, result.stderr
    assert "weights:        tiny.gguf" in result.stdout
    assert "model:          tiny-llama (llama, " in result.stdout
    as_json = json.loads(pack("inspect", "--json", str(tiny_pyz)).stdout)
    assert as_json["weights"]["offset"] == ALIGNMENT


def test_bare_runtime_has_no_weights(bare_pyz: Path) -> None:
    assert json.loads(pack("inspect", "--json", str(bare_pyz)).stdout)["weights"] is None
    assert "none (bare runtime" in pack("inspect", str(bare_pyz)).stdout


def test_verify_passes_then_catches_a_flipped_byte(tiny_pyz: Path, tmp_path: Path) -> None:
    ok = pack("verify", str(tiny_pyz))
    assert ok.returncode == 0 and "weights ok" in ok.stderr
    damaged = tmp_path / "damaged.pyz"
    data = bytearray(tiny_pyz.read_bytes())
    data[ALIGNMENT + 200_000] ^= 0x01
    damaged.write_bytes(bytes(data))
    assert_clean_error(pack("verify", str(damaged)), 1, f"{damaged}: the weights are damaged")


def test_default_output_name(tiny_gguf: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    result = pack("build", str(model))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.pyz").exists()
    assert result.stderr.startswith(f"wrote {tmp_path / 'm.pyz'} (")


def test_not_a_gguf(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello there")
    result = pack("build", str(notes), "-o", str(tmp_path / "x.pyz"))
    assert_clean_error(
        result, 1, f"{notes} is not a GGUF file (it starts with b'hell', not b'GGUF')"
    )
    assert leftovers(tmp_path) == ["home", "notes.txt"]


def test_truncated_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:-1000])
    result = pack("build", str(cut), "-o", str(tmp_path / "x.pyz"))
    assert_clean_error(result, 1, f"{cut} is")
    assert "truncated" in result.stderr
    assert leftovers(tmp_path) == ["cut.gguf", "home"]


def test_directory_and_missing_input(tmp_path: Path) -> None:
    assert_clean_error(pack("build", str(tmp_path), "-o", "x.pyz"), 1, "is a directory")
    missing = tmp_path / "nope.gguf"
    assert_clean_error(pack("build", str(missing), "-o", "x.pyz"), 1, f"{missing} does not exist")


def test_output_equal_to_input(tiny_gguf: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    result = pack("build", str(model), "-o", str(model))
    assert_clean_error(result, 1, "is the input model")
    assert model.read_bytes() == tiny_gguf.read_bytes()


def test_unwritable_output_directory(tiny_gguf: Path) -> None:
    # /proc refuses new files even to root, so this holds in CI's root shell too.
    result = pack("build", str(tiny_gguf), "-o", "/proc/model.pyz")
    assert_clean_error(result, 1, "cannot write in /proc")


def test_missing_output_directory(tiny_gguf: Path, tmp_path: Path) -> None:
    result = pack("build", str(tiny_gguf), "-o", str(tmp_path / "no" / "x.pyz"))
    assert_clean_error(result, 1, "does not exist")


def test_usage_errors_exit_2(tiny_gguf: Path) -> None:
    assert pack("build").returncode == 2
    assert pack("build", str(tiny_gguf), "--no-weights").returncode == 2


@pytest.mark.slow
def test_full_disk_leaves_nothing(smollm2: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    limit = 50 * 1024 * 1024  # the model is 98 MB: the write must fail half way

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [PACK, "build", str(smollm2), "-o", str(out / "x.pyz")],
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
    )
    assert_clean_error(result, 1, f"cannot write {out / 'x.pyz'}: File too large")
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def big_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 600 MB GGUF, so that a build is still writing when the signal arrives."""
    import gguf
    import numpy as np

    path = tmp_path_factory.mktemp("big") / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    chunk = np.ones((1024, 1024), dtype=np.float32)  # 4 MB
    for i in range(150):
        writer.add_tensor(f"t{i}.weight", chunk)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_build_leaves_nothing(
    big_gguf: Path, tmp_path: Path, sig: int, parent_sigint: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Page cache cold or warm, a 600 MB copy plus its sha256 takes well over the poll interval;
    # a cache of its own, so that no earlier build's remembered sha256 makes it a bare copy.
    proc = subprocess.Popen(
        [PACK, "build", str(big_gguf), "-o", str(out / "x.pyz")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache")),
        preexec_fn=default_sigint,
    )
    # The fresh cache's runtime zip comes first: both architectures' wheels, fetched from the index.
    deadline = time.monotonic() + 180
    while not any(p.name.endswith(".tmp") and p.stat().st_size > 1_000_000 for p in out.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: {out / 'x.pyz'} was not written" in stderr
    assert leftovers(out) == []

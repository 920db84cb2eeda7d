"""A GPU that is present but broken never takes the run down: a real ggml backend built to go
wrong (tests/broken_gpu.c, loaded as the file's libggml-vulkan.so) computes wrong numbers,
dies in its self-test, dies while loading, or has no device; each costs one line, the verdict
is remembered, and a start after it never loads the backend again."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest

from runtime.engine.devices.gpu import GPU_NODES, NO_GPU_NODE
from tests.conftest import ROOT, assert_clean_error, pack, run_pyz

pytestmark = pytest.mark.slow
PROMPT = ("-p", "The capital of France is", "-n", "4", "--temp", "0")
CRASHING_BACKEND = r"""
void *ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


def _no_gpu(why: str) -> str:
    return f"no GPU found (Vulkan: {why}; CUDA: not in this file): running on the CPU"


def _lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def broken_pyz(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    """The tiny model in a file whose Vulkan backend is tests/broken_gpu.c."""
    from runtime.engine.decoding import model as engine

    folder = tmp_path_factory.mktemp("broken")
    source = subprocess.run(
        [str(ROOT / "scripts/engine-source.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    ggml = Path(source) / "vendor/llama.cpp/ggml"
    lib = engine.lib_dir()
    cc = ["cc", "-shared", "-fPIC", "-O1", f"-I{ggml}/include", f"-I{ggml}/src"]
    cc += [str(ROOT / "tests/broken_gpu.c"), f"-L{lib}", "-l:libggml-base.so.0", "-l:libggml.so.0"]
    subprocess.run([*cc, "-o", str(folder / "libggml-vulkan.so")], check=True)
    env = dict(os.environ, LLAMAPYZ_GPU_DIR=str(folder))
    pyz = folder / "broken.pyz"
    built = pack("build", str(tiny_gguf), "-o", str(pyz), env=env)
    assert built.returncode == 0, built.stderr
    return pyz


def _env(tmp_path: Path, mode: str) -> dict[str, str]:
    """A fresh cache (so the self-test runs), the backend's mode, and its load log."""
    return dict(
        os.environ,
        LLAMAPYZ_CACHE=str(tmp_path / "cache"),
        BROKEN_GPU=mode,
        BROKEN_GPU_LOG=str(tmp_path / "loads"),
        GGML_VK_VISIBLE_DEVICES="0",  # tried even on a machine with no GPU in /dev
    )


def _loads(tmp_path: Path) -> int:
    log = tmp_path / "loads"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_device_that_computes_wrong_numbers_is_skipped(broken_pyz: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, "wrong")
    first = run_pyz(broken_pyz, *PROMPT, env=env)
    assert first.returncode == 0, first.stderr
    said = _lines(first)
    assert len(said) == 1 and said[0].startswith(
        "no GPU found (Vulkan: Vulkan0 refused: its results differ from the CPU's (mean KL "
    ), first.stderr
    assert _loads(tmp_path) == 1  # by the self-test's child only
    again = run_pyz(broken_pyz, *PROMPT, env=env)
    assert _lines(again) == said and again.stdout == first.stdout
    assert _loads(tmp_path) == 1  # the verdict is remembered: the backend is not loaded again
    info = run_pyz(broken_pyz, "--system-info", env=env)
    assert "  Vulkan Vulkan0: refused: its results differ from the CPU's" in info.stdout
    asked = run_pyz(broken_pyz, *PROMPT, "--gpu", "vulkan", env=env)
    assert_clean_error(asked, 1, "Error: --gpu vulkan: no usable Vulkan device (Vulkan0 refused")


def test_a_device_that_dies_in_its_self_test_is_skipped(broken_pyz: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, "crash")
    first = run_pyz(broken_pyz, *PROMPT, env=env)
    assert first.returncode == 0, first.stderr
    line = _no_gpu("Vulkan0 refused: its self-test died with SIGILL")
    assert _lines(first) == [line], first.stderr
    again = run_pyz(broken_pyz, *PROMPT, env=env)
    assert _lines(again) == [line] and _loads(tmp_path) == 1


def test_a_start_without_a_device_never_loads_the_backend(broken_pyz: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, "none")
    for _ in range(3):
        result = run_pyz(broken_pyz, *PROMPT, env=env)
        assert result.returncode == 0 and _lines(result) == [_no_gpu("no device")], result.stderr
    assert _loads(tmp_path) == 1
    moved = dict(env, GGML_VK_VISIBLE_DEVICES="1")  # what decides the devices changed: again
    assert _lines(run_pyz(broken_pyz, *PROMPT, env=moved)) == [_no_gpu("no device")]
    assert _loads(tmp_path) == 2


@pytest.mark.skipif(
    any(glob.glob(pattern) for pattern in GPU_NODES), reason="this machine has a GPU in /dev"
)
def test_no_gpu_in_dev_loads_no_backend(broken_pyz: Path, tmp_path: Path) -> None:
    """With no GPU device node, Vulkan can only have CPU devices, which ggml hides: nothing
    is loaded, not even on a first start (GGML_VK_VISIBLE_DEVICES unset)."""
    env = _env(tmp_path, "wrong")
    del env["GGML_VK_VISIBLE_DEVICES"]
    result = run_pyz(broken_pyz, *PROMPT, env=env)
    assert result.returncode == 0 and _lines(result) == [_no_gpu(NO_GPU_NODE)], result.stderr
    assert _loads(tmp_path) == 0


def test_a_backend_that_dies_while_loading_is_skipped(
    tmp_path: Path, tiny_gguf: Path, session_cache: Path
) -> None:
    folder = tmp_path / "gpu"
    folder.mkdir()
    (tmp_path / "crash.c").write_text(CRASHING_BACKEND)
    cc = ["cc", "-shared", "-fPIC", "-o", str(folder / "libggml-vulkan.so")]
    subprocess.run([*cc, str(tmp_path / "crash.c")], check=True)
    env = dict(os.environ, LLAMAPYZ_GPU_DIR=str(folder))
    built = pack("build", str(tiny_gguf), "-o", str(tmp_path / "crash.pyz"), env=env)
    assert built.returncode == 0, built.stderr
    cache = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"), GGML_VK_VISIBLE_DEVICES="0")
    first = run_pyz(tmp_path / "crash.pyz", *PROMPT, env=cache)
    assert first.returncode == 0, first.stderr
    line = _no_gpu("refused: loading the backend died with SIGILL")
    assert line in _lines(first)
    again = run_pyz(tmp_path / "crash.pyz", *PROMPT, env=cache)  # remembered: no child now
    assert line in _lines(again) and again.stdout == first.stdout
    info = run_pyz(tmp_path / "crash.pyz", "--system-info", env=cache)
    assert "  Vulkan: refused: loading the backend died with SIGILL" in info.stdout


def test_the_server_refuses_the_device_too(
    broken_pyz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server loads its model on a thread, so its self-test runs in a new Python (a fork
    is only taken while the process has one thread)."""
    from tests.test_server import Server

    env = _env(tmp_path, "wrong")
    for key in ("LLAMAPYZ_CACHE", "BROKEN_GPU", "BROKEN_GPU_LOG", "GGML_VK_VISIBLE_DEVICES"):
        monkeypatch.setenv(key, env[key])
    srv = Server(broken_pyz, "-c", "256")
    try:
        said = srv.banner
        while "running on the CPU" not in said:
            line = srv.proc.stderr.readline() if srv.proc.stderr else ""
            assert line, said
            said += line
    finally:
        srv.stop()
    assert "no GPU found (Vulkan: Vulkan0 refused: its results differ from the CPU's" in said
    assert _loads(tmp_path) == 1

"""A .pyz runs wherever it is copied: every supported CPython, a fresh or broken cache, many
copies at once, damaged files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_pyz

PROMPT = "the quick brown fox"
ARGS = ("-p", PROMPT, "-n", "8", "--temp", "0")
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


def interpreter(version: str) -> Path:
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no CPython {version} under {PYENV}")
    return found[-1]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.9", "3.10", "3.12", "3.13"])
def test_same_text_on_every_supported_python(tiny_pyz: Path, version: str) -> None:
    expected = run_pyz(tiny_pyz, *ARGS).stdout
    assert expected.strip()
    python = interpreter(version)
    through_preamble = run_pyz(tiny_pyz, *ARGS, env=dict(os.environ, LLAMAPYZ_PYTHON=str(python)))
    assert through_preamble.returncode == 0, through_preamble.stderr
    assert through_preamble.stdout == expected
    direct = subprocess.run([str(python), str(tiny_pyz), *ARGS], capture_output=True, text=True)
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout == expected


@pytest.mark.slow
def test_server_imports_on_the_oldest_and_newest_python(tiny_pyz: Path) -> None:
    # pydantic-core is compiled: its modules for each ABI travel in the file.
    for version in ("3.9", "3.13"):
        code = "import pydantic_core, fastapi, uvicorn, sse_starlette; print(pydantic_core.__version__)"
        result = subprocess.run(
            [str(interpreter(version)), str(tiny_pyz), "--version"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        env = dict(os.environ, SHIV_INTERPRETER="1")
        probe = subprocess.run(
            [str(interpreter(version)), str(tiny_pyz)],
            input=code,
            capture_output=True,
            text=True,
            env=env,
        )
        assert probe.returncode == 0, probe.stderr
        assert "2.46.5" in probe.stdout


def test_unsupported_python_is_one_line(tiny_pyz: Path, tmp_path: Path) -> None:
    old = interpreter("3.8")
    direct = subprocess.run([str(old), str(tiny_pyz), *ARGS], capture_output=True, text=True)
    assert_clean_error(
        direct, 1, f"{tiny_pyz} needs CPython 3.9, 3.10, 3.11, 3.12, 3.13; found Python 3.8"
    )
    # Through the preamble, with nothing better on PATH than python3 = 3.8.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old)
    for tool in ("wc", "sh"):
        (bin_dir / tool).symlink_to(
            f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else f"/bin/{tool}"
        )
    result = run_pyz(tiny_pyz, *ARGS, env={"PATH": str(bin_dir), "HOME": os.environ["HOME"]})
    assert_clean_error(result, 1, "needs CPython 3.9, 3.10, 3.11, 3.12, 3.13; found Python 3.8")


def test_preamble_finds_a_suitable_python_when_python3_is_too_old(
    tiny_pyz: Path, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(interpreter("3.8"))
    (bin_dir / "python3.12").symlink_to(interpreter("3.12"))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    result = run_pyz(tiny_pyz, *ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == run_pyz(tiny_pyz, *ARGS).stdout


def test_truncated_inside_the_header(tiny_pyz: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pyz"
    cut.write_bytes(tiny_pyz.read_bytes()[:3000])
    cut.chmod(0o755)
    assert_clean_error(run_pyz(cut, *ARGS), 1, f"{cut} is damaged or truncated")


@pytest.mark.slow
def test_eight_copies_at_once_on_an_empty_cache(tiny_pyz: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    procs = [
        subprocess.Popen(
            [str(tiny_pyz), *ARGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert len({out for out, _ in results}) == 1 and results[0][0].strip()
    extractions = [p for p in (cache / "runtimes").glob("cp*/*") if p.is_dir()]
    assert len(extractions) == 1, extractions
    assert extractions[0].parent.name == f"cp{sys.version_info[0]}{sys.version_info[1]}"
    assert (cache / "cpu-variant.json").exists()


def test_cache_location_follows_xdg_and_llamapyz_cache(tiny_pyz: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LLAMAPYZ_CACHE"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    assert run_pyz(tiny_pyz, *ARGS, env=env).returncode == 0
    assert any((tmp_path / "xdg" / "llamapyz" / "runtimes").iterdir())
    env.pop("XDG_CACHE_HOME")
    assert run_pyz(tiny_pyz, *ARGS, env=env).returncode == 0
    assert any((Path(env["HOME"]) / ".cache" / "llamapyz" / "runtimes").iterdir())


def test_unusable_cache_falls_back_to_a_temporary_one(tiny_pyz: Path) -> None:
    expected = run_pyz(tiny_pyz, *ARGS).stdout
    # /proc takes no new files, even from root.
    result = run_pyz(tiny_pyz, *ARGS, env=dict(os.environ, LLAMAPYZ_CACHE="/proc/llamapyz-cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
    assert "llamapyz: the cache /proc/llamapyz-cache cannot be used (" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_full_disk_while_extracting_is_one_line(tiny_pyz: Path, tmp_path: Path) -> None:
    import resource

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [str(tiny_pyz), *ARGS], capture_output=True, text=True, env=env, preexec_fn=small_disk
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{tiny_pyz}: cannot extract its runtime (File too large)" in result.stderr
    assert not any((tmp_path / "cache" / "runtimes").glob("*.tmp"))


@pytest.mark.slow
def test_older_extractions_are_dropped_and_clean_cache(tiny_gguf: Path, tmp_path: Path) -> None:
    from conftest import pack

    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    target = tmp_path / "m.pyz"
    for pythons in ("3.11", "3.11,3.12"):  # two builds of the same file, two runtimes
        assert (
            pack(
                "build", str(tiny_gguf), "-o", str(target), "--python", pythons, env=env
            ).returncode
            == 0
        )
        assert run_pyz(target, *ARGS, env=env).returncode == 0
    assert len([p for p in (cache / "runtimes").glob("cp*/m.pyz_*") if p.is_dir()]) == 1
    other = tmp_path / "other.pyz"
    other.write_bytes(target.read_bytes())
    other.chmod(0o755)
    assert run_pyz(other, *ARGS, env=env).returncode == 0
    assert len([p for p in (cache / "runtimes").glob("cp*/*") if p.is_dir()]) == 2
    cleaned = run_pyz(target, "--clean-cache", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stderr.startswith("removed ")
    left = [p.name for p in (cache / "runtimes").glob("cp*/*") if p.is_dir()]
    assert len(left) == 1 and left[0].startswith("m.pyz_")
    assert not (cache / "build").exists() or not any((cache / "build").iterdir())
    assert run_pyz(target, *ARGS, env=env).returncode == 0
    assert sys.executable  # the cleaned cache still runs the file


@pytest.mark.slow
@pytest.mark.parametrize("cpu,expected", [("Nehalem", {"sse42", "x64"}), ("Haswell", {"haswell"})])
def test_cpu_variant_under_emulated_cpus(
    tiny_pyz: Path, tmp_path: Path, cpu: str, expected: set[str]
) -> None:
    import shutil

    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 is not installed (.ci/run installs Debian's qemu-user)")
    python = str(Path(sys.executable).resolve())  # qemu-user runs an ELF, not a venv's symlink
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    info = subprocess.run(
        [qemu, "-cpu", cpu, python, str(tiny_pyz), "--system-info"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert info.returncode == 0, info.stderr
    chosen = next(line for line in info.stdout.splitlines() if line.startswith("chosen: "))
    assert chosen.split()[1] in expected, info.stdout
    assert "zen4: refused: this CPU lacks the features it was built for" in info.stdout
    answer = subprocess.run(
        [qemu, "-cpu", cpu, python, str(tiny_pyz), *ARGS],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout == run_pyz(tiny_pyz, *ARGS).stdout


def test_an_extraction_in_use_is_not_dropped(tiny_gguf: Path, tmp_path: Path) -> None:
    """A chat (or a server) started from one build keeps its runtime while a rebuild of the
    same file starts, and while --clean-cache runs; once it exits, the runtime may go."""
    from conftest import pack

    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    target = tmp_path / "m.pyz"
    assert (
        pack("build", str(tiny_gguf), "-o", str(target), "--python", "3.11", env=env).returncode
        == 0
    )
    chat = subprocess.Popen(
        [str(target), "--chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert chat.stderr is not None and chat.stdin is not None
        while "chat:" not in (line := chat.stderr.readline()):
            assert line, "the chat ended before it started"
        (first,) = [p for p in (cache / "runtimes").glob("cp*/m.pyz_*") if p.is_dir()]
        built = pack("build", str(tiny_gguf), "-o", str(target), "--python", "3.11,3.12", env=env)
        assert built.returncode == 0
        assert run_pyz(target, *ARGS, env=env).returncode == 0
        assert first.is_dir()  # the rebuild's first start left it
        assert run_pyz(target, "--clean-cache", env=env).returncode == 0
        assert first.is_dir()  # and so did --clean-cache
        out, _ = chat.communicate("/exit\n", timeout=120)
        assert chat.returncode == 0
    finally:
        chat.kill()
    assert run_pyz(target, "--clean-cache", env=env).returncode == 0
    assert not first.exists()

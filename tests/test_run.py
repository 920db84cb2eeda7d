"""Running a .pyz as a user does: embedded weights, -m, stdin, symlinks, moved files, zero copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_pyz

PROMPT = "The capital of France is"
TINY_PROMPT = "the quick brown fox"


def completion(pyz: Path, *args: str, **kw: object) -> str:
    result = run_pyz(pyz, *args, **kw)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tiny_model_same_text_embedded_gguf_and_other_pyz(
    tiny_pyz: Path, tiny_gguf: Path, bare_pyz: Path
) -> None:
    args = ("-p", TINY_PROMPT, "-n", "24", "--temp", "0")
    embedded = completion(tiny_pyz, *args)
    assert len(embedded.split()) >= 3
    assert completion(tiny_pyz, "-m", str(tiny_gguf), *args) == embedded
    assert completion(bare_pyz, "-m", str(tiny_gguf), *args) == embedded
    assert completion(bare_pyz, "-m", str(tiny_pyz), *args) == embedded


def test_seeded_sampling_is_repeatable_and_seed_matters(tiny_pyz: Path) -> None:
    args = ("-p", TINY_PROMPT, "-n", "24", "--temp", "1.5", "--top-k", "0", "--top-p", "1")
    first = completion(tiny_pyz, *args, "--seed", "1")
    assert completion(tiny_pyz, *args, "--seed", "1") == first
    assert completion(tiny_pyz, *args, "--seed", "2") != first


def test_n_predict_limits_tokens(tiny_pyz: Path) -> None:
    short = completion(tiny_pyz, "-p", TINY_PROMPT, "-n", "3", "--temp", "0")
    long = completion(tiny_pyz, "-p", TINY_PROMPT, "-n", "12", "--temp", "0")
    assert long.startswith(short) and len(short) < len(long)


def test_prompt_from_stdin(tiny_pyz: Path) -> None:
    args = ("-n", "8", "--temp", "0")
    direct = completion(tiny_pyz, "-p", TINY_PROMPT, *args)
    assert completion(tiny_pyz, "-p", "-", *args, input=TINY_PROMPT) == direct
    assert completion(tiny_pyz, *args, input=TINY_PROMPT) == direct


def test_stderr_is_quiet_and_verbose_shows_llama_log(tiny_pyz: Path) -> None:
    quiet = run_pyz(tiny_pyz, "-p", TINY_PROMPT, "-n", "4", "--temp", "0")
    # One line says where the model ran (no GPU here); nothing of llama.cpp's own log.
    assert quiet.returncode == 0
    assert (
        quiet.stderr
        == "no GPU found (Vulkan: no device (no GPU in /dev); CUDA: not in this file): running on the CPU\n"
    )
    loud = run_pyz(tiny_pyz, "-p", TINY_PROMPT, "-n", "4", "--temp", "0", "--verbose")
    assert "llama_model_loader" in loud.stderr
    assert loud.stdout == quiet.stdout


def test_runs_through_symlink_from_other_dir_and_after_move(tiny_pyz: Path, tmp_path: Path) -> None:
    args = ("-p", TINY_PROMPT, "-n", "8", "--temp", "0")
    expected = completion(tiny_pyz, *args)
    link = tmp_path / "links" / "model"
    link.parent.mkdir()
    link.symlink_to(tiny_pyz)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert completion(Path("../links/model"), *args, cwd=elsewhere) == expected
    moved = tmp_path / "renamed.pyz"
    shutil.copy2(tiny_pyz, moved)
    assert completion(moved, *args, cwd=elsewhere) == expected
    assert (
        subprocess.run(
            [sys.executable, "renamed.pyz", *args], cwd=tmp_path, capture_output=True, text=True
        ).stdout
        == expected
    )


def test_bare_runtime_needs_a_model(bare_pyz: Path) -> None:
    result = run_pyz(bare_pyz, "-p", "hi")
    assert_clean_error(
        result, 1, "carries no weights (built with --no-weights): give a model with -m"
    )


def test_model_errors_are_one_line(bare_pyz: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello world")
    assert_clean_error(
        run_pyz(bare_pyz, "-m", str(notes), "-p", "hi"),
        1,
        f"{notes} is not a GGUF file (it starts with b'hell', not b'GGUF')",
    )
    assert_clean_error(run_pyz(bare_pyz, "-m", str(tmp_path), "-p", "hi"), 1, "is a directory")
    missing = tmp_path / "missing.gguf"
    assert_clean_error(run_pyz(bare_pyz, "-m", str(missing), "-p", "hi"), 1, "does not exist")


def test_truncated_external_gguf_is_refused(
    bare_pyz: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    result = run_pyz(bare_pyz, "-m", str(cut), "-p", "hi")
    assert_clean_error(result, 1, f"{cut} is truncated: the tensor ")
    assert "past the end of the file" in result.stderr


def test_cpu_variant_forced_and_unknown(tiny_pyz: Path) -> None:
    args = ("-p", TINY_PROMPT, "-n", "8", "--temp", "0")
    expected = completion(tiny_pyz, *args)
    env = dict(os.environ, LLAMAPYZ_CPU_VARIANT="haswell")
    assert completion(tiny_pyz, *args, env=env) == expected
    assert completion(tiny_pyz, *args, "--cpu-variant", "x64")
    result = run_pyz(tiny_pyz, *args, "--cpu-variant", "pentium")
    assert_clean_error(result, 1, "there is no CPU variant 'pentium'; the bundle has ")


def test_system_info_names_the_choice(tiny_pyz: Path) -> None:
    result = run_pyz(tiny_pyz, "--system-info")
    assert result.returncode == 0, result.stderr
    chosen = [line for line in result.stdout.splitlines() if line.startswith("chosen: ")]
    assert len(chosen) == 1
    name = chosen[0].split()[1]
    assert f"  {name}: ran the self-test" in result.stdout


def test_version(tiny_pyz: Path) -> None:
    result = run_pyz(tiny_pyz, "--version")
    assert result.returncode == 0
    assert result.stdout.startswith("llamapyz 0.1.0 (llama-cpp-python 0.3.36, Python 3.")


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2_pyz: Path) -> None:
    out = completion(smollm2_pyz, "-p", PROMPT, "-n", "16", "--temp", "0")
    assert "Paris" in out


PLAIN = textwrap.dedent(
    """
    import ctypes, sys
    from pathlib import Path
    import llama_cpp
    lib = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(lib / "libggml.so.0"))
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    variant = lib.parent.parent / "bin" / f"libggml-cpu-{sys.argv[2]}.so"
    assert ggml.ggml_backend_load(str(variant).encode())
    llm = llama_cpp.Llama(
        sys.argv[1], n_ctx=4096, n_batch=512, n_threads=2, flash_attn=True, verbose=False
    )
    out = llm.create_completion(
        sys.argv[3], max_tokens=int(sys.argv[4]), temperature=float(sys.argv[5]),
        seed=int(sys.argv[6]), top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
    )
    sys.stdout.write(out["choices"][0]["text"])
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("temp,seed", [("0", "0"), ("0.8", "1234")])
def test_smollm2_same_tokens_as_plain_llama_cpp_python(
    smollm2_pyz: Path, smollm2: Path, bare_pyz: Path, temp: str, seed: str
) -> None:
    info = run_pyz(smollm2_pyz, "--system-info").stdout
    variant = next(line.split()[1] for line in info.splitlines() if line.startswith("chosen: "))
    args = ("-p", PROMPT, "-n", "32", "--temp", temp, "--seed", seed, "-t", "2")
    embedded = completion(smollm2_pyz, *args)
    assert completion(bare_pyz, "-m", str(smollm2), *args) == embedded
    plain = subprocess.run(
        [sys.executable, "-c", PLAIN, str(smollm2), variant, PROMPT, "32", temp, seed],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == embedded


@pytest.mark.slow
def test_no_copy_of_the_weights_on_disk(smollm2_pyz: Path, tmp_path: Path) -> None:
    home, cache, tmp = tmp_path / "h", tmp_path / "c", tmp_path / "t"
    for d in (home, cache, tmp):
        d.mkdir()
    env = dict(os.environ, HOME=str(home), LLAMAPYZ_CACHE=str(cache), TMPDIR=str(tmp))
    for _ in range(2):  # the first run extracts the runtime; the second must not copy either
        assert "Paris" in completion(smollm2_pyz, "-p", PROMPT, "-n", "8", "--temp", "0", env=env)
    weights = 98_000_000
    sizes = {p: p.stat().st_size for d in (home, cache, tmp) for p in d.rglob("*") if p.is_file()}
    assert sizes, "the first run extracted nothing: the check would prove nothing"
    biggest = max(sizes.values())
    assert biggest < weights // 4, max(sizes, key=lambda p: sizes[p])
    assert sum(sizes.values()) < 60_000_000


def test_failed_llama_cpp_check_is_one_line_not_an_abort(
    bare_pyz: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    # Two tokens spelled alike trip a GGML_ASSERT in llama.cpp's vocabulary loader.
    data = tiny_gguf.read_bytes()
    dup = tmp_path / "dup.gguf"
    dup.write_bytes(data.replace("\u2581quick".encode(), "\u2581brown".encode(), 1))
    result = run_pyz(bare_pyz, "-m", str(dup), "-p", "hi")
    assert_clean_error(result, 1, "Error: llama.cpp stopped on a failed check (GGML_ASSERT(")
    assert "the model file may be damaged or unsupported" in result.stderr

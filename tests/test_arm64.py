"""One file for Linux x86-64 and arm64: the same .pyz runs natively here and under qemu-aarch64
with Debian's own arm64 CPython (bookworm's 3.11, trixie's 3.13, in sysroots fetched once into
the dev cache by scripts/debian-sysroot.sh); each architecture extracts only its own files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    Server,
    assert_clean_error,
    image_bytes,
    pack,
    run_pyz,
    write_tiny_projector,
)

# qemu's default `max` emulates pointer authentication and 512-bit SVE so slowly that a start
# takes minutes: always these two options with it.
MAX = "max,pauth-impdef=on,sve-default-vector-length=16"
PYTHONS = {"bookworm": "python3.11", "trixie": "python3.13"}
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine


@pytest.fixture(scope="session")
def sysroots() -> dict[str, Path]:
    """Debian 12's and 13's arm64 CPython, unpacked (never installed) into the dev cache."""
    import fetch_smollm2

    env = dict(os.environ, LLAMAPYZ_DEV_CACHE=str(fetch_smollm2.dev_cache()))
    found = {}
    for suite in PYTHONS:
        done = subprocess.run(
            [str(ROOT / "scripts" / "debian-sysroot.sh"), suite],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        found[suite] = Path(done.stdout.strip())
    return found


def qemu(
    sysroot: Path, suite: str, pyz: Path, *args: str, cpu: str = MAX, **kw: object
) -> subprocess.CompletedProcess[str]:
    """`pyz` run by Debian's arm64 Python under qemu-aarch64, as `python3 m.pyz ARGS`."""
    return subprocess.run(
        _command(sysroot, suite, pyz, *args, cpu=cpu),
        capture_output=True,
        text=True,
        timeout=600,
        **kw,  # type: ignore[call-overload]
    )


def _command(sysroot: Path, suite: str, pyz: Path, *args: str, cpu: str = MAX) -> list[str]:
    binary = shutil.which("qemu-aarch64")
    if binary is None:
        pytest.fail("qemu-aarch64 is not installed (make system-test installs Debian's qemu-user)")
    python = sysroot / "usr" / "bin" / PYTHONS[suite]
    return [binary, "-cpu", cpu, "-L", str(sysroot), str(python), str(pyz), *args]


def members(pyz: Path) -> list[str]:
    with zipfile.ZipFile(pyz) as zf:
        return zf.namelist()


def elf_machines(folder: Path) -> set[str]:
    """The architectures of the ELF files under `folder`."""
    found = set()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                head = fh.read(20)
            if head[:4] == b"\x7fELF":
                found.add(ELF_MACHINES.get(int.from_bytes(head[18:20], "little"), "other"))
    return found


def extraction(cache: Path, tag: str) -> Path:
    (found,) = [p for p in (cache / "runtimes" / tag).iterdir() if p.is_dir()]
    return found


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_one_file_carries_both_architectures_apart(tiny_pyz: Path) -> None:
    names = members(tiny_pyz)
    assert "native/aarch64/llama_cpp/lib/libllama.so" in names, "run make install (arm64 side)"
    for machine in ("x86_64", "aarch64"):
        assert f"native/{machine}/llama_cpp/lib/libllama.so" in names
        assert f"native/{machine}/bin/libggml-rpc.so" in names
    assert "native/aarch64/bin/libggml-cpu-armv8.0_1.so" in names
    assert "native/x86_64/bin/libggml-cpu-x64.so" in names
    assert not [n for n in names if "armv9.2" in n]  # the SME variants are left out
    assert not [n for n in names if n.startswith("site-packages/") and ".so" in n.split("/")[-1]
                and "-linux-gnu.so" not in n]  # fmt: skip
    for tag in ("39", "310", "311", "312", "313"):
        for machine in ("x86_64", "aarch64"):
            assert any(f"_pydantic_core.cpython-{tag}-{machine}-linux-gnu.so" in n for n in names)
    shown = pack("inspect", str(tiny_pyz)).stdout
    assert (
        "runs on:        CPython 3.9, 3.10, 3.11, 3.12, 3.13 (Linux x86-64, Linux arm64)" in shown
    )
    assert "cpu variants:   Linux x86-64: alderlake, " in shown
    assert (
        "cpu variants:   Linux arm64: armv8.0_1, armv8.2_1, armv8.2_2, armv8.2_3, armv8.6_1, "
        "armv8.6_2\n" in shown
    )
    assert "gpu backends:   Vulkan (not on Linux arm64: the CPU only there)" in shown
    manifest = json.loads(pack("inspect", "--json", str(tiny_pyz)).stdout)
    assert sorted(manifest["build"]["arches"]) == ["aarch64", "x86_64"]
    assert manifest["build"]["arches"]["aarch64"]["gpu_backends"] == []


@pytest.mark.slow
def test_arch_x86_64_and_aarch64_each_leave_the_other_out(
    tiny_gguf: Path, tiny_pyz: Path, tmp_path: Path
) -> None:
    sizes = {}
    for machine, other in (("x86_64", "aarch64"), ("aarch64", "x86_64")):
        out = tmp_path / f"{machine}.pyz"
        built = pack("build", str(tiny_gguf), "-o", str(out), "--arch", machine)
        assert built.returncode == 0, built.stderr
        names = members(out)
        assert not [n for n in names if n.startswith(f"native/{other}/") or f"-{other}-" in n]
        assert f"native/{machine}/llama_cpp/lib/libllama.so" in names
        own = "Linux x86-64" if machine == "x86_64" else "Linux arm64"
        assert f"(Linux {own.split()[1]})\n" in pack("inspect", str(out)).stdout
        sizes[machine] = out.stat().st_size
    both = tiny_pyz.stat().st_size
    assert sizes["x86_64"] < both and sizes["aarch64"] < both
    # The arm64 side (no Vulkan there) is the smaller one; both together are their sum, less
    # the Python they share.
    assert sizes["aarch64"] < sizes["x86_64"]
    assert both < sizes["x86_64"] + sizes["aarch64"]
    # An arm64-only file on this x86-64 machine: one sentence, from the preamble and the boot.
    arm = tmp_path / "aarch64.pyz"
    assert_clean_error(
        run_pyz(arm, "-p", "hi"), 1, f"{arm} runs on Linux arm64; this is linux x86_64"
    )
    direct = subprocess.run(["python3", str(arm), "-p", "hi"], capture_output=True, text=True)
    assert_clean_error(direct, 1, f"{arm} runs on Linux arm64; this is Linux x86-64")


def test_arch_is_refused_when_not_one_of_them(tiny_gguf: Path, tmp_path: Path) -> None:
    result = pack("build", str(tiny_gguf), "-o", str(tmp_path / "m.pyz"), "--arch", "riscv64")
    assert result.returncode == 2
    assert "Invalid value for '--arch'" in result.stderr


@pytest.mark.slow
def test_smollm2_one_shot_and_extractions_under_qemu(
    smollm2_pyz: Path, sysroots: dict[str, Path], tmp_path: Path
) -> None:
    prompt = ("-p", "The capital of France is", "-n", "4", "--temp", "0")
    cache = tmp_path / "cache"
    env = dict(os.environ, LLAMAPYZ_CACHE=str(cache))
    start = time.monotonic()
    arm = qemu(sysroots["bookworm"], "bookworm", smollm2_pyz, *prompt, env=env)
    took = time.monotonic() - start
    assert arm.returncode == 0, arm.stderr
    assert "Paris" in arm.stdout
    print(f"arm64 under qemu max: {took:.1f} s for a first start and 4 tokens")
    native = run_pyz(smollm2_pyz, *prompt, env=env)
    assert native.returncode == 0, native.stderr
    assert "Paris" in native.stdout
    arm_side, x86_side = extraction(cache, "cp311-aarch64"), extraction(cache, "cp311")
    assert elf_machines(arm_side) == {"aarch64"}
    assert elf_machines(x86_side) == {"x86_64"}
    # A first start on arm64 writes no more than on x86-64 (one CPU variant each, no GPU).
    assert size_of(arm_side) <= size_of(x86_side)
    verified = pack("verify", str(smollm2_pyz))
    assert verified.returncode == 0 and "weights ok" in verified.stderr


@pytest.mark.slow
def test_variant_chosen_for_each_emulated_arm_cpu(
    tiny_pyz: Path, sysroots: dict[str, Path], tmp_path: Path
) -> None:
    """ggml picks the variant from HWCAP, which qemu-user emulates; the self-test runs in a fork
    (a new process would not run under qemu without binfmt), and two arm CPUs never share a
    remembered choice."""
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    expected = {"cortex-a53": "armv8.0_1", "neoverse-n1": "armv8.2_2", MAX: "armv8.6_2"}
    for cpu, variant in expected.items():
        info = qemu(sysroots["bookworm"], "bookworm", tiny_pyz, "--system-info", cpu=cpu, env=env)
        assert info.returncode == 0, info.stderr
        assert "machine: aarch64\n" in info.stdout
        chosen = next(line for line in info.stdout.splitlines() if line.startswith("chosen: "))
        assert chosen.split()[1] == variant, info.stdout
        assert f"  {variant}: ran the self-test" in info.stdout
        features = next(line for line in info.stdout.splitlines() if line.startswith("cpu feat"))
        assert features.split()[2] == "asimd", features
        assert ("asimddp" in features.split()) == (cpu != "cortex-a53"), features
    choices = json.loads((tmp_path / "cache" / "cpu-variant.json").read_text())["choices"]
    assert sorted(c["variant"] for c in choices.values()) == sorted(expected.values())


@pytest.mark.slow
def test_server_under_qemu_answers_the_openai_client(
    smollm2_pyz: Path, sysroots: dict[str, Path], tmp_path: Path
) -> None:
    import openai

    *launcher, pyz = _command(sysroots["bookworm"], "bookworm", smollm2_pyz)
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    server = Server(Path(pyz), "-c", "512", "--temp", "0", launcher=launcher, env=env)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=6,
        )
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens <= 6
    finally:
        server.stop()


@pytest.mark.slow
def test_python_3_13_chat_and_external_weights_under_qemu(
    bare_pyz: Path, tiny_gguf: Path, smollm2: Path, sysroots: dict[str, Path], tmp_path: Path
) -> None:
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    root = sysroots["trixie"]
    text = qemu(root, "trixie", bare_pyz, "-m", str(smollm2), "-p", "The capital of France is",
                "-n", "4", "--temp", "0", env=env)  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert "Paris" in text.stdout
    assert (tmp_path / "cache" / "runtimes" / "cp313-aarch64").is_dir()
    chat = qemu(root, "trixie", bare_pyz, "-m", str(tiny_gguf), "--chat", "-n", "4",
                "--temp", "0", input="hello\n", env=env)  # fmt: skip
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()


@pytest.mark.slow
def test_an_image_under_qemu_extracts_arm64_libmtmd(
    tiny_gguf: Path, sysroots: dict[str, Path], tmp_path: Path
) -> None:
    projector = write_tiny_projector(tmp_path / "proj.gguf", width=64)
    picture = tmp_path / "a.png"
    picture.write_bytes(image_bytes("png", 40, 30, seed=1))
    pyz = tmp_path / "v.pyz"
    built = pack("build", str(tiny_gguf), "--mmproj", str(projector), "-o", str(pyz))
    assert built.returncode == 0, built.stderr
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    seen = qemu(sysroots["bookworm"], "bookworm", pyz, "--image", str(picture), "-p", "hi",
                "-n", "4", "--seed", "3", env=env)  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip()
    libmtmd = extraction(tmp_path / "cache", "cp311-aarch64") / "site-packages/bin/libmtmd.so"
    assert elf_machines(libmtmd.parent) == {"aarch64"} and libmtmd.stat().st_size > 1_000_000

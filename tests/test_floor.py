"""The floor: the native libraries are built with Zig's toolchain for glibc 2.28 and its own
libc++ (scripts/zig-toolchain.sh), so the same file runs in Debian 11 with its own CPython 3.9
(glibc 2.31, GCC 10's libstdc++): x86-64 in a chroot, arm64 under qemu-aarch64. A file whose
libraries need a newer glibc than the system's says so in one sentence, never a loader error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, Server, assert_clean_error, pack

pytestmark = pytest.mark.slow
BULLSEYE_ENV = {"HOME": "/tmp", "LLAMAPYZ_CACHE": "/tmp/cache", "PATH": "/usr/bin:/bin"}


def sysroot(suite: str, arch: str) -> Path:
    import fetch_smollm2

    done = subprocess.run(
        [str(ROOT / "scripts" / "debian-sysroot.sh"), suite, arch],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, LLAMAPYZ_DEV_CACHE=str(fetch_smollm2.dev_cache())),
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


@pytest.fixture
def bullseye(tmp_path: Path) -> Iterator[Path]:
    """A hard-linked copy of Debian 11's amd64 sysroot (the cached one stays as it is)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root = tmp_path / "bullseye"
    subprocess.run(["cp", "-al", str(sysroot("bullseye", "amd64")), str(root)], check=True)
    (root / "tmp").mkdir(exist_ok=True)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def launcher(root: Path) -> list[str]:
    """Run a command chrooted into `root` with its own /proc and /dev (a private mount
    namespace: nothing stays mounted), as Debian 11's python3.9."""
    mount, chroot = (shutil.which(n) or f"/usr/sbin/{n}" for n in ("mount", "chroot"))
    mounts = (
        f"{mount} -t proc proc {root}/proc && {mount} --rbind /dev {root}/dev && "
        f'exec {chroot} {root} "$@"'
    )
    for sub in ("proc", "dev"):
        (root / sub).mkdir(exist_ok=True)
    return [shutil.which("unshare") or "unshare", "-m", "--propagation", "private", "sh", "-c", mounts, "sh",
            "/usr/bin/python3.9"]  # fmt: skip


def chrooted(root: Path, pyz: Path, *args: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(pyz, root / "tmp" / "m.pyz")
    return subprocess.run([*launcher(root), "/tmp/m.pyz", *args], capture_output=True,
                          text=True, env=BULLSEYE_ENV, timeout=600)  # fmt: skip


def test_the_manifest_records_a_floor_of_glibc_2_28_and_no_libstdcxx(tiny_pyz: Path) -> None:
    arches = json.loads(pack("inspect", "--json", str(tiny_pyz)).stdout)["build"]["arches"]
    for machine in ("x86_64", "aarch64"):
        floor = arches[machine]["floor"]
        assert "glibcxx" not in floor, floor  # Zig's libc++ is linked into each library
        assert version(floor["glibc"]) <= (2, 28), floor


def test_debian_11_runs_the_file_on_both_architectures(
    smollm2_pyz: Path, bullseye: Path, tmp_path: Path
) -> None:
    args = ("-p", "The capital of France is", "-n", "6", "--temp", "0")
    x86 = chrooted(bullseye, smollm2_pyz, *args)
    assert x86.returncode == 0, x86.stderr
    assert "Paris" in x86.stdout
    arm = sysroot("bullseye", "arm64")
    qemu = shutil.which("qemu-aarch64")
    assert qemu is not None, "qemu-aarch64 is not installed (make system-test installs it)"
    command = [qemu, "-cpu", "cortex-a53", "-L", str(arm), str(arm / "usr/bin/python3.9"),
               str(smollm2_pyz), *args]  # fmt: skip
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_debian_11_serves_the_openai_client(smollm2_pyz: Path, bullseye: Path) -> None:
    import openai

    shutil.copy(smollm2_pyz, bullseye / "tmp" / "m.pyz")
    server = Server(Path("/tmp/m.pyz"), "-c", "512", "--temp", "0", launcher=launcher(bullseye),
                    env=BULLSEYE_ENV)  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
    finally:
        server.stop()


def test_a_library_newer_than_the_system_is_one_sentence(
    tiny_gguf: Path, bullseye: Path, tmp_path: Path
) -> None:
    """A GPU backend built against this machine's glibc (dlopen needs GLIBC_2.34) raises the
    file's floor above Debian 11's: refused before extracting, with the versions named."""
    folder = tmp_path / "gpu"
    folder.mkdir()
    source = tmp_path / "newer.c"
    source.write_text('#include <dlfcn.h>\nvoid *newer(void) { return dlopen("x", RTLD_NOW); }\n')
    cc = shutil.which("cc") or "gcc"
    subprocess.run([cc, "-shared", "-fPIC", str(source), "-o", str(folder / "libggml-vulkan.so")],
                   check=True)  # fmt: skip
    pyz = tmp_path / "newer.pyz"
    env = dict(os.environ, LLAMAPYZ_GPU_DIR=str(folder))
    built = pack("build", str(tiny_gguf), "-o", str(pyz), "--arch", "x86_64", env=env)
    assert built.returncode == 0, built.stderr
    arches = json.loads(pack("inspect", "--json", str(pyz)).stdout)["build"]["arches"]
    assert arches["x86_64"]["floor"]["glibc"] == "2.34"
    result = chrooted(bullseye, pyz, "-p", "hi", "-n", "2")
    assert_clean_error(
        result,
        1,
        "/tmp/m.pyz needs glibc 2.34 or newer (Debian 12, Ubuntu 22.04, RHEL 9, Fedora 36 and "
        "later); this system has glibc 2.31",
    )
    assert not (bullseye / "tmp" / "cache" / "runtimes").exists()  # refused before extracting

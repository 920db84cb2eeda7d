"""Below the native libraries' floor (glibc 2.34, GCC 12's libstdc++), a file says so in one
sentence, never with a loader error: Debian 11's own CPython and libraries (x86-64 in a chroot,
arm64 under qemu-aarch64), and Debian 12's with Debian 11's older libstdc++."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error, pack

GLIBC = "needs glibc 2.34 or newer (Debian 12, Ubuntu 22.04, Fedora 36 and later)"


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


def chrooted(
    root: Path, pyz: Path, tmp_path: Path, python: str
) -> subprocess.CompletedProcess[str]:
    """`python m.pyz` inside a hard-linked copy of `root` (the cached sysroot stays as it is)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    work = tmp_path / "root"
    tmp_path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(root), str(work)], check=True)
    (work / "tmp").mkdir(exist_ok=True)
    shutil.copy(pyz, work / "tmp" / "m.pyz")
    env = {"HOME": "/tmp", "LLAMAPYZ_CACHE": "/tmp/cache", "PATH": "/usr/bin:/bin"}
    command = [
        shutil.which("chroot") or "/usr/sbin/chroot",
        str(work),
        f"/usr/bin/{python}",
        "/tmp/m.pyz",
        "-p",
        "hi",
        "-n",
        "2",
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_manifest_records_each_architectures_floor(tiny_pyz: Path) -> None:
    arches = json.loads(pack("inspect", "--json", str(tiny_pyz)).stdout)["build"]["arches"]
    for machine in ("x86_64", "aarch64"):
        assert arches[machine]["floor"] == {"glibc": "2.34", "glibcxx": "3.4.30"}


@pytest.mark.slow
def test_debian_11_gets_one_sentence_on_both_architectures(tiny_pyz: Path, tmp_path: Path) -> None:
    x86 = chrooted(sysroot("bullseye", "amd64"), tiny_pyz, tmp_path, "python3.9")
    assert_clean_error(x86, 1, f"/tmp/m.pyz {GLIBC}; this system has glibc 2.31")
    arm = sysroot("bullseye", "arm64")
    qemu = shutil.which("qemu-aarch64")
    assert qemu is not None, "qemu-aarch64 is not installed (make system-test installs it)"
    command = [qemu, "-cpu", "cortex-a53", "-L", str(arm), str(arm / "usr/bin/python3.9"),
               str(tiny_pyz), "-p", "hi"]  # fmt: skip
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert_clean_error(result, 1, f"{tiny_pyz} {GLIBC}; this system has glibc 2.31")
    assert not (tmp_path / "cache" / "runtimes").exists()  # refused before extracting


@pytest.mark.slow
def test_an_older_libstdcxx_is_one_sentence(tiny_pyz: Path, tmp_path: Path) -> None:
    """glibc 2.34 or newer with GCC 11's C++ runtime is RHEL 9's and Amazon Linux 2023's case:
    here Debian 12 with Debian 11's libstdc++ (GCC 10's)."""
    old = sysroot("bullseye", "amd64") / "usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.28"
    root = tmp_path / "mixed"
    subprocess.run(["cp", "-al", str(sysroot("bookworm", "amd64")), str(root)], check=True)
    lib = root / "usr/lib/x86_64-linux-gnu"
    for path in lib.glob("libstdc++.so.6*"):
        path.unlink()
    shutil.copy(old, lib / old.name)
    (lib / "libstdc++.so.6").symlink_to(old.name)
    result = chrooted(root, tiny_pyz, tmp_path / "run", "python3.11")
    assert_clean_error(
        result,
        1,
        "this system's libstdc++.so.6 is older than llama.cpp needs: it lacks GLIBCXX_3.4.29 "
        "(the C++ runtime of GCC 12 or newer)",
    )

"""What this CPU is: its model and features, the key of a remembered variant choice and the
features `--system-info` shows.

x86-64 names them in /proc/cpuinfo (`model name`, `flags`). arm64's /proc/cpuinfo has no such
lines, and under qemu-user it is the host's file, so there the features come from the kernel's
AT_HWCAP and AT_HWCAP2 words (as ggml's own variant scores do; qemu emulates them) and the
model from the `CPU implementer` / `CPU part` lines where they exist.
"""

from __future__ import annotations

import ctypes
import platform

AT_HWCAP = 16
AT_HWCAP2 = 26
# Linux's arch/arm64/include/uapi/asm/hwcap.h, bit by bit: the names /proc/cpuinfo uses.
HWCAP = [
    "fp",
    "asimd",
    "evtstrm",
    "aes",
    "pmull",
    "sha1",
    "sha2",
    "crc32",
    "atomics",
    "fphp",
    "asimdhp",
    "cpuid",
    "asimdrdm",
    "jscvt",
    "fcma",
    "lrcpc",
    "dcpop",
    "sha3",
    "sm3",
    "sm4",
    "asimddp",
    "sha512",
    "sve",
    "asimdfhm",
    "dit",
    "uscat",
    "ilrcpc",
    "flagm",
    "ssbs",
    "sb",
    "paca",
    "pacg",
]
HWCAP2 = [
    "dcpodp",
    "sve2",
    "sveaes",
    "svepmull",
    "svebitperm",
    "svesha3",
    "svesm4",
    "flagm2",
    "frint",
    "svei8mm",
    "svef32mm",
    "svef64mm",
    "svebf16",
    "i8mm",
    "bf16",
    "dgh",
    "rng",
    "bti",
    "mte",
    "ecv",
    "afp",
    "rpres",
    "mte3",
    "sme",
    "sme_i16i64",
    "sme_f64f64",
    "sme_i8i32",
    "sme_f16f32",
    "sme_b16f32",
    "sme_f32f32",
    "sme_fa64",
    "wfxt",
    "ebf16",
    "sve_ebf16",
    "cssc",
    "rprfm",
    "sve2p1",
    "sme2",
    "sme2p1",
]
# What --system-info names: the features the CPU variants are built for.
SHOWN = {
    "x86_64": [
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_tile",
        "amx_int8",
    ],
    "aarch64": ["asimd", "fphp", "asimdhp", "asimddp", "sve", "sve2", "i8mm", "bf16", "sme"],
}


def _cpuinfo(keys: tuple[str, ...]) -> dict[str, str]:
    """The first value of each of `keys` in /proc/cpuinfo."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in keys and key not in found:
                    found[key] = value.strip()
                if len(found) == len(keys):
                    break
    except OSError:
        pass
    return found


def hwcaps() -> list[str]:
    """arm64's feature names from AT_HWCAP and AT_HWCAP2."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return []
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    names = []
    for word, table in ((AT_HWCAP, HWCAP), (AT_HWCAP2, HWCAP2)):
        bits = int(getauxval(word))
        names += [name for i, name in enumerate(table) if bits >> i & 1]
    return names


def cpu_fingerprint() -> str:
    """A short text naming this CPU's architecture, model and features."""
    machine = platform.machine()
    if machine == "aarch64":
        ids = _cpuinfo(("CPU implementer", "CPU part", "CPU variant"))
        model = "-".join(ids[k] for k in ("CPU implementer", "CPU part", "CPU variant") if k in ids)
        return f"{machine} {model or 'arm64'} {' '.join(hwcaps())}"
    info = _cpuinfo(("model name", "flags"))
    return f"{machine} {info.get('model name', '')} {info.get('flags', '')}"


def cpu_flags() -> set[str]:
    return set(cpu_fingerprint().split()[1:])


def shown_features() -> list[str]:
    """The features `--system-info` lists that this CPU has, in the variants' order."""
    flags = cpu_flags()
    return [f for f in SHOWN.get(platform.machine(), []) if f in flags]

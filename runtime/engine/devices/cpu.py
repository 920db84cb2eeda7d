"""Chooses the CPU backend variant that actually runs on this machine.

CPUID is not enough: a CPU may advertise AMX or AVX-512 features that the kernel or the
hypervisor does not let a process use, and the variant built for them dies with SIGILL.
So each candidate, best first, runs a tiny quantized model in a child process; the first
one that answers is used, and the choice is remembered in the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from runtime.engine.devices import selftest_model
from runtime.engine.devices.cpuinfo import cpu_fingerprint
from runtime.engine.devices.forked import run_forked, single_threaded
from runtime.engine.devices.variants import CpuError, available, extracted, load, size
from runtime.file.boot import cache_dir
from runtime.file.jsonfile import write_atomic

PROBE_TIMEOUT = 120
PROBE_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from runtime.engine.devices.cpu import probe_main; probe_main(sys.argv[2:])"
)
CHOICE_FORMAT = 1


@dataclass
class Choice:
    """The variant in use and how it was chosen."""

    variant: Optional[str]
    path: Optional[Path]
    reason: str
    tried: dict[str, str] = field(default_factory=dict)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _site_dir() -> str:
    return str(Path(__file__).resolve().parents[3])  # the folder that holds runtime/


def score(path: Path) -> int:
    """The variant's own score for the CPU this process sees (0: it lacks the features).

    Asked in this process, as ggml itself does when it picks a backend: under an emulator
    (qemu -cpu Nehalem) only this process sees the emulated CPU; a child would run natively.
    """
    import ctypes

    from runtime.engine.decoding import model as engine

    engine.bindings()  # loads libggml-base, which the variants link to
    try:
        fn = getattr(load(path), "ggml_backend_score", None)
    except (OSError, CpuError):
        return 0
    if fn is None:
        return 1
    fn.restype = ctypes.c_int
    return int(fn())


def _scores(variants: dict[str, Path]) -> dict[str, int]:
    return {name: score(path) for name, path in variants.items()}


def _probe(path: Path, model: Path) -> tuple[bool, str]:
    """Run the self-test on one variant in a child: a fork of this process when that is safe
    (no new interpreter to start and nothing to import again), else a new Python."""
    if hasattr(os, "fork") and single_threaded():
        return _probe_forked(path, model)
    return _probe_spawned(path, model)


def _probe_forked(path: Path, model: Path) -> tuple[bool, str]:
    text, code = run_forked(lambda: _self_test(path, model), PROBE_TIMEOUT)
    if code is None:
        return False, f"did not answer in {PROBE_TIMEOUT} s"
    if code < 0:
        return False, f"died with {_signal_name(code)}"
    return _verdict(code, text)


def _probe_spawned(path: Path, model: Path) -> tuple[bool, str]:
    try:
        out = subprocess.run(
            [sys.executable, "-s", "-c", PROBE_CODE, _site_dir(), str(path), str(model)],
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            text=True,
        )
    except subprocess.TimeoutExpired:
        return False, f"did not answer in {PROBE_TIMEOUT} s"
    except OSError as exc:  # under qemu-user without binfmt, an arm64 Python cannot be started
        return False, f"cannot start {sys.executable} ({exc.strerror or exc})"
    if out.returncode < 0:
        return False, f"died with {_signal_name(out.returncode)}"
    return _verdict(out.returncode, out.stdout + out.stderr)


def _verdict(code: int, text: str) -> tuple[bool, str]:
    lines = text.strip().splitlines()
    if code == 0 and lines and lines[-1] == "ok":
        return True, "ran the self-test"
    return False, lines[-1] if lines else f"exited with code {code}"


def _key(variants: dict[str, Path]) -> str:
    """This CPU and these libraries: sizes, not times, so each new extraction of the same
    runtime (another .pyz name, say) reuses the choice instead of probing again."""
    h = hashlib.sha256(cpu_fingerprint().encode())
    for name, path in sorted(variants.items()):
        h.update(f"{name}:{size(path)}".encode())
    return h.hexdigest()[:16]


def _remembered(key: str, variants: dict[str, Path]) -> Optional[Choice]:
    try:
        data = json.loads((cache_dir() / "cpu-variant.json").read_text())
        entry = data["choices"][key]
        name = entry["variant"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if name not in variants:
        return None
    return Choice(
        name, variants[name], entry.get("reason", "remembered"), dict(entry.get("tried", {}))
    )


def _remember(key: str, choice: Choice) -> None:
    path = cache_dir() / "cpu-variant.json"
    try:
        data = json.loads(path.read_text())
        if data.get("format") != CHOICE_FORMAT:
            raise ValueError
    except (OSError, ValueError):
        data = {"format": CHOICE_FORMAT, "choices": {}}
    data["choices"][key] = {
        "variant": choice.variant,
        "reason": choice.reason,
        "tried": choice.tried,
    }
    write_atomic(path, data)


def choose(forced: Optional[str] = None, fresh: bool = False) -> Choice:
    """The variant to load: the forced one, the remembered one, or the best that passes."""
    variants = available()
    if not variants:
        # A build without GGML_BACKEND_DL has its CPU backend built in.
        return Choice(None, None, "the engine has a built-in CPU backend")
    forced = forced or os.environ.get("LLAMAPYZ_CPU_VARIANT") or None
    if forced:
        if forced not in variants:
            raise CpuError(
                f"there is no CPU variant {forced!r}; the bundle has {', '.join(sorted(variants))}"
            )
        return Choice(forced, extracted(variants[forced]), "forced by the user")
    key = _key(variants)
    if not fresh:
        known = _remembered(key, variants)
        if known and known.path and score(extracted(known.path)) > 0:
            return known
    with _probe_lock():
        # Eight copies started at once probe once: the others find the choice here.
        known = None if fresh else _remembered(key, variants)
        if known and known.path and score(extracted(known.path)) > 0:
            return known
        return _probe_all(key, variants)


@contextlib.contextmanager
def _probe_lock() -> Iterator[None]:
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fh = open(cache_dir() / "cpu-variant.lock", "a")  # noqa: SIM115  (held by the with below)
    except OSError:
        yield  # no cache to share a choice through: each process probes for itself
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _probe_all(key: str, variants: dict[str, Path]) -> Choice:
    scores = _scores(variants)
    order = sorted(variants, key=lambda n: (-scores.get(n, 1), n))
    model = cache_dir() / "selftest-v2.gguf"
    try:
        if not model.exists():
            selftest_model.write(model)
    except OSError:
        import tempfile

        model = Path(tempfile.mkdtemp(prefix="llamapyz-")) / "selftest-v2.gguf"
        selftest_model.write(model)
    tried: dict[str, str] = {}
    unsupported = [n for n in order if scores and scores.get(n, 0) == 0]
    for name in order:
        if name in unsupported:
            continue
        packed = not variants[name].exists()
        ok, why = _probe(extracted(variants[name]), model)
        tried[name] = why if ok else f"refused: {why}"
        if packed and not ok:
            # Still in the .pyz: only the chosen variant stays on disk.
            with contextlib.suppress(OSError):
                variants[name].unlink()
        if ok:
            for other in unsupported:
                tried[other] = "refused: this CPU lacks the features it was built for"
            score = f" (score {scores[name]})" if name in scores else ""
            choice = Choice(
                name, variants[name], f"the best variant{score} that ran the self-test", tried
            )
            _remember(key, choice)
            return choice
    for other in unsupported:
        tried[other] = "refused: this CPU lacks the features it was built for"
    raise CpuError(
        "no CPU variant runs on this machine: "
        + "; ".join(f"{n}: {why}" for n, why in tried.items())
    )


def probe_main(args: list[str]) -> None:
    """A new Python's entry point: the self-test of one variant."""
    sys.exit(_self_test(Path(args[0]), Path(args[1])))


def _self_test(variant: Path, model: Path) -> int:
    """In the child: load one variant and run the self-test model; write ok to fd 1."""
    from runtime.engine.decoding import model as engine
    from runtime.sources.source import ModelSource

    engine.set_verbose(False)
    try:
        engine.start_backend(variant)
        source = ModelSource(model, 0, model.stat().st_size, str(model))
        with engine.Model(source, n_ctx=64, n_batch=32, n_threads=min(2, os.cpu_count() or 1)) as m:
            prompt = m.tokenize("the quick brown fox jumps over the lazy dog")
            text = "".join(m.generate(prompt, 4, engine.Sampling(temp=0.0)))
    except engine.EngineError as exc:
        os.write(1, f"{exc}\n".encode())
        return 3
    os.write(1, b"ok\n" if isinstance(text, str) else b"no text\n")
    return 0

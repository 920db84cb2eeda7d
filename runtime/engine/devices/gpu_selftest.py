"""Each GPU device's self-test: in a child, the tiny self-test model's next-token
distributions on the device against the CPU's, within a tolerance (backends differ on
near-ties, so never by text). A backend that crashes, hangs or computes wrong numbers is
refused with its reason; the verdicts are remembered in the cache, keyed by the backend
library, the driver and the environment that decides which devices show. A backend with no
device at all is remembered too, so that a start on a machine without a GPU never loads it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

from runtime.engine.devices import registry
from runtime.engine.devices.forked import run_forked, single_threaded
from runtime.file.boot import cache_dir
from runtime.file.jsonfile import write_atomic

TIMEOUT = 300  # lavapipe compiles its shaders on a first run: about 25 s on 2 cores
MAX_KL = 0.05
MIN_AGREEMENT = 0.75
PROMPT = "the quick brown fox jumps over the lazy dog and then runs far away"
CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from runtime.engine.devices.gpu_selftest import child_main; child_main(sys.argv[2:])"
)
FORMAT = 2


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    z = math.log(sum(math.exp(x - top) for x in row))
    return [x - top - z for x in row]


def compare(reference: list[list[float]], other: list[list[float]]) -> tuple[float, float]:
    """(mean KL divergence of `other` from `reference`, share of positions whose top token
    agrees), over next-token logits."""
    kls, agree = [], 0
    for ref, got in zip(reference, other):
        p, q = _log_softmax(ref), _log_softmax(got)
        kls.append(sum(math.exp(a) * (a - b) for a, b in zip(p, q)))
        agree += ref.index(max(ref)) == got.index(max(got))
    n = max(1, len(kls))
    return sum(kls) / n, agree / n


def _driver_fingerprint(backend: str, library: Path) -> str:
    """What a verdict depends on: the backend library, the driver files, the visible devices."""
    from runtime.engine.devices.gpu import visible_env
    from runtime.engine.devices.variants import size

    h = hashlib.sha256(f"{FORMAT} {backend} {size(library)} {visible_env()}".encode())
    icds = sorted(
        glob.glob("/usr/share/vulkan/icd.d/*.json") + glob.glob("/etc/vulkan/icd.d/*.json")
    )
    for path in [*icds, "/proc/driver/nvidia/version"]:
        with contextlib.suppress(OSError):
            h.update(path.encode() + Path(path).read_bytes())
    # A GPU plugged in or out (an eGPU, a driver loaded) shows here: tested again.
    for folder in ("/sys/class/drm", "/dev"):
        with contextlib.suppress(OSError):
            names = sorted(n for n in os.listdir(folder) if n.startswith(("card", "nvidia")))
            h.update(" ".join(names).encode())
    return h.hexdigest()[:16]


def verdicts(cpu_variant: Optional[Path]) -> dict[str, dict[str, str]]:
    """Backend -> device name -> "ok" or why it was refused ("*": the whole backend), for
    the backends this file carries that can have a device here; tested once, remembered."""
    from runtime.engine.devices import gpu

    found: dict[str, dict[str, str]] = {}
    memo_path = cache_dir() / "gpu-selftest.json"
    try:
        memo = json.loads(memo_path.read_text())
        if memo.get("format") != FORMAT:
            raise ValueError
    except (OSError, ValueError, AttributeError):
        memo = {"format": FORMAT, "verdicts": {}}
    changed = False
    for backend, library in gpu.carried().items():
        if gpu._loader_missing(backend):
            continue
        key = _driver_fingerprint(backend, library)
        if key not in memo["verdicts"]:
            memo["verdicts"][key] = _run_child(backend, cpu_variant)
            changed = True
        found[backend] = dict(memo["verdicts"][key])
    if changed:
        with contextlib.suppress(OSError):  # else tested again next time
            write_atomic(memo_path, memo)
    return found


def _site_dir() -> str:
    return str(Path(__file__).resolve().parents[3])  # the folder that holds runtime/


def _run_child(backend: str, cpu_variant: Optional[Path]) -> dict[str, str]:
    from runtime.engine.devices import selftest_model

    model = cache_dir() / "selftest-v1.gguf"
    if not model.exists():
        selftest_model.write(model)
    if hasattr(os, "fork") and _forkable():
        text, code = run_forked(lambda: _test_devices(backend, model), TIMEOUT)
    else:
        text, code = _spawned(backend, cpu_variant, model)
    result: dict[str, str] = {}
    testing = None
    said = []  # what the child wrote besides its answers: the last line is its reason
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "testing":
            testing = rest
        elif kind == "verdict":
            name, _, why = rest.partition(" ")
            result[name] = why
            testing = None
        elif line.strip() and line != "done":
            said.append(line.strip())
    if code == 0 and "done" in text.splitlines():
        return result
    if code is None:
        how = f"did not answer in {TIMEOUT} s"
    elif code < 0:
        try:
            how = f"died with {signal.Signals(-code).name}"
        except ValueError:
            how = f"died with signal {-code}"
    else:
        how = said[-1] if said else f"exited with code {code}"
    if testing:
        result[testing] = f"refused: its self-test {how}"
    else:
        result["*"] = f"refused: loading the backend {how}"
    return result


def _forkable() -> bool:
    """A fork can test: the CPU backend is started here, no GPU backend loaded, one thread
    (a first start's usual case: no new Python to start, nothing to import again)."""
    from runtime.engine.backend import backend_started

    return backend_started() and not registry.loaded() and single_threaded()


def _spawned(backend: str, cpu_variant: Optional[Path], model: Path) -> tuple[str, Optional[int]]:
    from runtime.file.boot import archive

    args = [_site_dir(), backend, str(cpu_variant or ""), str(model), str(archive() or "")]
    try:
        out = subprocess.run(
            [sys.executable, "-s", "-c", CODE, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        return out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as exc:
        return (exc.stdout or b"").decode("utf-8", "replace"), None


def child_main(args: list[str]) -> None:
    """A new Python's child: load the CPU variant, then test the backend's devices."""
    from runtime.engine.decoding import model as engine

    backend, variant, model, pyz = args[0], args[1], Path(args[2]), args[3]
    if pyz:  # the packed libraries are read from the .pyz, as in the parent
        import types

        boot = types.ModuleType("_llamapyz_boot")
        boot.ARCHIVE = Path(pyz)  # type: ignore[attr-defined]
        sys.modules["_llamapyz_boot"] = boot
    engine.set_verbose(False)
    engine.start_backend(Path(variant) if variant else None)
    _test_devices(backend, model)


def _test_devices(backend: str, model: Path) -> int:
    """In the child: load the backend, test each of its GPU devices, say so on stdout
    (`testing NAME`, `verdict NAME ok|refused: why`, `done`), and exit."""
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import gpu, offload
    from runtime.sources.source import ModelSource

    engine.set_verbose(False)
    try:
        found = gpu.load(backend, gpu.carried()[backend], keep_on_disk=False)
    except gpu.GpuError as exc:
        print(f"verdict * refused: {exc}\ndone", flush=True)
        os._exit(0)
    if not found:  # remembered, so that a start without a device never loads the backend
        note = gpu.load_note(backend)
        print(f"verdict * no device{f': {note}' if note else ''}\ndone", flush=True)
        os._exit(0)
    source = ModelSource(model, 0, model.stat().st_size, str(model))

    def logits(handles: list[int]) -> list[list[float]]:
        place = offload.make_offload(handles, 99)
        with engine.Model(source, n_ctx=64, n_batch=32, n_threads=2, offload=place) as m:
            return m.logits_after(m.tokenize(PROMPT)[:12])

    reference = logits([])
    for device in found:
        print(f"testing {device.name}", flush=True)
        try:
            kl, agree = compare(reference, logits([device.handle]))
        except engine.EngineError as exc:
            print(f"verdict {device.name} refused: {exc}", flush=True)
            continue
        if kl < MAX_KL and agree >= MIN_AGREEMENT:
            print(f"verdict {device.name} ok", flush=True)
        else:
            print(
                f"verdict {device.name} refused: its results differ from the CPU's "
                f"(mean KL {kl:.3f}, top token agrees {agree:.0%})",
                flush=True,
            )
    print("done", flush=True)
    os._exit(0)  # a driver's atexit handlers are not part of the test

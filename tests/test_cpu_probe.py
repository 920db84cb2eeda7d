"""The CPU variant self-test: a variant that scores best but dies on this CPU (as the
sapphirerapids one does where AMX is advertised but unusable) is refused, not used."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from runtime.engine.devices import cpu, selftest_model, variants
from tests.conftest import run_pyz

Probe = Callable[[Path, Path], tuple[bool, str]]

# Claims to be the best variant for any CPU, then dies with SIGILL once ggml registers it.
CRASHING_VARIANT = r"""
int ggml_backend_score(void) { return 1 << 20; }
void *ggml_backend_init(void) { __builtin_trap(); return 0; }
"""


def compile_variant(directory: Path, name: str, source: str = CRASHING_VARIANT) -> Path:
    c_file = directory / f"{name}.c"
    c_file.write_text(source)
    out = directory / f"{variants.PREFIX}{name}.so"
    result = subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(out), str(c_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def crashing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_variant(tmp_path_factory.mktemp("variant"), "zzcrash")


@pytest.fixture(scope="module")
def selftest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("selftest") / "selftest.gguf"
    selftest_model.write(path)
    return path


@pytest.mark.parametrize("probe", [cpu._probe_forked, cpu._probe_spawned])
def test_a_variant_that_dies_is_refused(probe: Probe, crashing: Path, selftest: Path) -> None:
    ok, why = probe(crashing, selftest)
    assert (ok, why) == (False, "died with SIGILL")


@pytest.mark.parametrize("probe", [cpu._probe_forked, cpu._probe_spawned])
def test_a_working_variant_passes(probe: Probe, selftest: Path) -> None:
    shipped = variants.available()
    name = "x64" if "x64" in shipped else sorted(shipped)[0]
    assert probe(shipped[name], selftest) == (True, "ran the self-test")


def test_the_file_skips_a_crashing_best_variant(tiny_pyz: Path, tmp_path: Path) -> None:
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    first = run_pyz(tiny_pyz, "-p", "ab", "-n", "4", "--temp", "0", env=env)
    assert first.returncode == 0, first.stderr
    bins = list((tmp_path / "cache" / "runtimes").glob("cp*/*/site-packages/bin"))
    assert len(bins) == 1, bins
    compile_variant(bins[0], "zzcrash")

    info = run_pyz(tiny_pyz, "--system-info", env=env)
    assert info.returncode == 0, info.stderr
    assert "zzcrash: refused: died with SIGILL" in info.stdout
    chosen = next(line for line in info.stdout.splitlines() if line.startswith("chosen: "))
    assert "zzcrash" not in chosen

    again = run_pyz(tiny_pyz, "-p", "ab", "-n", "4", "--temp", "0", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout

"""A damaged .pyz gives one clear line, never a traceback or a crash."""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
from conftest import assert_clean_error, pack, run_pyz

from runtime.file.archive import ALIGNMENT, MANIFEST_NAME


def copy_cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    dst.chmod(0o755)
    return dst


@pytest.mark.parametrize("where", ["zip", "weights"])
def test_truncated_pyz(tiny_pyz: Path, tmp_path: Path, where: str) -> None:
    size = tiny_pyz.stat().st_size
    cut = size - 5000 if where == "zip" else ALIGNMENT + 100_000
    damaged = copy_cut(tiny_pyz, tmp_path / "cut.pyz", cut)
    result = run_pyz(damaged, "-p", "hi")
    assert_clean_error(
        result, 1, f"{damaged} is damaged or truncated: the runtime at its end is missing"
    )
    inspect = pack("inspect", str(damaged))
    assert_clean_error(inspect, 1, f"{damaged} is not a llamapyz file or is damaged")


def test_manifest_pointing_past_the_end(tiny_pyz: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "lying.pyz"
    damaged.write_bytes(tiny_pyz.read_bytes())
    damaged.chmod(0o755)
    with zipfile.ZipFile(damaged) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
    manifest["ggufs"][0]["size"] = 10**12
    with warnings.catch_warnings(), zipfile.ZipFile(damaged, "a") as zf:
        warnings.simplefilter("ignore")  # the later copy of a duplicate name is the one read
        zf.writestr(MANIFEST_NAME, json.dumps(manifest))
    expected = f"{damaged} is damaged: its manifest places the weights at bytes {ALIGNMENT}-"
    assert_clean_error(run_pyz(damaged, "-p", "hi"), 1, expected)
    assert_clean_error(pack("verify", str(damaged)), 1, expected)


def test_not_a_pyz(tmp_path: Path) -> None:
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a.txt", "a")
    assert_clean_error(pack("inspect", str(plain)), 1, "is a zip file but not a llamapyz file")
    assert_clean_error(pack("inspect", str(tmp_path / "nope.pyz")), 1, "does not exist")

"""A rebuild of the same, unchanged GGUF reuses the sha256 an earlier build computed; any change
to the file, or a file that changed just now, is hashed again."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from packager import build, memo
from tests.conftest import pack


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def gguf(tiny_gguf: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(tiny_gguf, tmp_path / "model.gguf"))


def test_a_rebuild_does_not_hash_again(
    gguf: Path, tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memo, "SETTLED_S", 0.0)
    first = build.build_pyz(gguf, tmp_path / "a.pyz", cache=session_cache)
    assert first.manifest.weights is not None
    assert first.manifest.weights.sha256 == sha256(gguf)

    def no_hashing(*args: object) -> str:
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(build, "_copy_and_hash", no_hashing)
    second = build.build_pyz(gguf, tmp_path / "b.pyz", cache=session_cache)
    assert second.manifest.weights == first.manifest.weights
    assert second.manifest.model == first.manifest.model
    verified = pack("verify", str(tmp_path / "b.pyz"))
    assert verified.returncode == 0, verified.stderr


def test_a_changed_file_is_hashed_again(
    gguf: Path, tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memo, "SETTLED_S", 0.0)
    first = build.build_pyz(gguf, tmp_path / "a.pyz", cache=session_cache)
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF  # a tensor byte: same size, same header
    gguf.write_bytes(bytes(data))
    second = build.build_pyz(gguf, tmp_path / "b.pyz", cache=session_cache)
    assert first.manifest.weights is not None and second.manifest.weights is not None
    assert second.manifest.weights.sha256 == sha256(gguf) != first.manifest.weights.sha256
    verified = pack("verify", str(tmp_path / "b.pyz"))
    assert verified.returncode == 0, verified.stderr


def test_a_file_that_just_changed_is_not_remembered(
    gguf: Path, tmp_path: Path, session_cache: Path
) -> None:
    build.build_pyz(gguf, tmp_path / "a.pyz", cache=session_cache)
    memo_file = session_cache / "build" / "sources.json"
    remembered = json.loads(memo_file.read_text())["files"] if memo_file.exists() else {}
    assert [e for e in remembered.values() if e["path"] == str(gguf)] == []


def test_the_runtime_zip_is_made_again_when_an_install_changes(
    tmp_path: Path, session_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packager import runtime_zip, zip_memo

    first = runtime_zip.build(session_cache)
    assert runtime_zip.build(session_cache) == first  # remembered: no metadata read
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    stamp = zip_memo.stamp(runtime_zip.FORMAT, first.pythons)
    (site / "new_distribution-1.0.dist-info").mkdir()  # what pip does on an install
    assert zip_memo.stamp(runtime_zip.FORMAT, first.pythons) != stamp
    # The files are looked at again, and they are the same: the same runtime comes back.
    again = runtime_zip.build(session_cache)
    assert again.path.is_file() and again.build_id == first.build_id

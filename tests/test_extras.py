"""A draft model and a vision projector in the file: laid out, listed, verified, refused when
they do not fit the model; a file of manifest format 1 still reads and runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest
from conftest import (
    assert_clean_error,
    pack,
    run_pyz,
    write_tiny_gguf,
    write_tiny_projector,
)

from runtime.file.archive import ALIGNMENT, MANIFEST_NAME, align_up, read_manifest
from runtime.file.gguf_check import check
from runtime.sources.resolve import WeightsError, embedded


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("extras")
    return {
        "draft": write_tiny_gguf(d / "draft.gguf", seed=5),
        "projector": write_tiny_projector(d / "proj.gguf", width=64),
    }


@pytest.fixture(scope="module")
def extras_pyz(
    tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, parts: dict[str, Path]
) -> Path:
    out = tmp_path_factory.mktemp("extras-pyz") / "m.pyz"
    result = pack(
        "build",
        str(tiny_gguf),
        "--draft",
        str(parts["draft"]),
        "--mmproj",
        str(parts["projector"]),
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return out


def manifest_json(pyz: Path) -> dict[str, object]:
    with zipfile.ZipFile(pyz) as zf:
        data: dict[str, object] = json.loads(zf.read(MANIFEST_NAME))
    return data


def test_every_gguf_at_an_aligned_offset_byte_for_byte(
    extras_pyz: Path, tiny_gguf: Path, parts: dict[str, Path]
) -> None:
    data = extras_pyz.read_bytes()
    manifest = manifest_json(extras_pyz)
    assert manifest["format"] == 2
    ggufs = manifest["ggufs"]
    assert isinstance(ggufs, list)
    assert [g["role"] for g in ggufs] == ["model", "draft", "projector"]
    sources = {"model": tiny_gguf, **parts}
    expected_offset = ALIGNMENT
    for g in ggufs:
        source = sources[g["role"]].read_bytes()
        assert g["offset"] == expected_offset and g["offset"] % ALIGNMENT == 0
        assert g["size"] == len(source)
        assert data[g["offset"] : g["offset"] + g["size"]] == source
        assert g["sha256"] == hashlib.sha256(source).hexdigest()
        assert g["filename"] == sources[g["role"]].name
        expected_offset = align_up(g["offset"] + g["size"])
    # the model's entry again where a runtime of format 1 reads it
    model_entry = {k: v for k, v in ggufs[0].items() if k != "role"}
    assert manifest["weights"] == model_entry
    assert b"PK\x06\x06" not in data[expected_offset:]  # the zip needs no ZIP64 record
    assert ggufs[2]["facts"] == {
        "name": "tiny-projector",
        "projector_type": "mlp",
        "image_size": 32,
        "output_width": 64,
    }
    assert ggufs[1]["facts"]["name"] == "tiny-llama"


def test_inspect_lists_each_gguf(extras_pyz: Path, parts: dict[str, Path]) -> None:
    result = pack("inspect", str(extras_pyz))
    assert result.returncode == 0, result.stderr
    m = read_manifest(extras_pyz)
    draft, proj = m.gguf("draft"), m.gguf("projector")
    assert draft is not None and proj is not None
    lines = result.stdout.splitlines()
    i = lines.index(next(x for x in lines if x.startswith("draft:")))
    assert lines[i].startswith("draft:          draft.gguf, ")
    assert lines[i].endswith(f" at offset {draft.offset}")
    assert lines[i + 1] == f"  sha256:       {draft.sha256}"
    assert lines[i + 2].startswith("  model:        tiny-llama (llama, ")
    assert lines[i + 3].startswith("projector:      proj.gguf, ")
    assert lines[i + 3].endswith(f" at offset {proj.offset}")
    assert lines[i + 4] == f"  sha256:       {proj.sha256}"
    assert lines[i + 5] == "  type:         mlp (images 32 px, output width 64)"


def test_verify_checks_each_and_names_the_damaged_one(extras_pyz: Path, tmp_path: Path) -> None:
    ok = pack("verify", str(extras_pyz))
    assert ok.returncode == 0, ok.stderr
    said = ok.stderr.splitlines()
    assert [x.split(" ok ")[0] for x in said] == [
        f"{extras_pyz}: weights",
        f"{extras_pyz}: draft model",
        f"{extras_pyz}: vision projector",
    ]
    draft = read_manifest(extras_pyz).gguf("draft")
    assert draft is not None
    damaged = tmp_path / "damaged.pyz"
    data = bytearray(extras_pyz.read_bytes())
    data[draft.offset + draft.size // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    assert_clean_error(pack("verify", str(damaged)), 1, f"{damaged}: the draft model is damaged")


def test_the_file_runs_as_without_extras(extras_pyz: Path, tiny_pyz: Path) -> None:
    args = ("-p", "Once upon", "-n", "4", "--temp", "0")
    plain, with_extras = run_pyz(tiny_pyz, *args), run_pyz(extras_pyz, *args)
    assert plain.returncode == 0 and with_extras.returncode == 0, with_extras.stderr
    assert with_extras.stdout == plain.stdout != ""


def test_embedded_sources_by_role(extras_pyz: Path, tiny_pyz: Path) -> None:
    for role in ("draft", "projector"):
        source = embedded(extras_pyz, role)
        entry = read_manifest(extras_pyz).gguf(role)
        assert entry is not None
        assert (source.offset, source.size) == (entry.offset, entry.size)
        assert check(source.path, source.offset, source.size).size == entry.size
    with pytest.raises(WeightsError, match=f"{tiny_pyz.name} carries no draft model"):
        embedded(tiny_pyz, "draft")


def refused(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    out.mkdir()
    return pack("build", *args, "-o", str(out / "m.pyz")), out


@pytest.mark.parametrize("case", ["draft-vocab", "projector-width", "not-a-projector", "merged"])
def test_what_does_not_fit_is_refused_and_nothing_written(
    case: str, tmp_path: Path, tiny_gguf: Path, parts: dict[str, Path]
) -> None:
    model = tiny_gguf
    if case == "draft-vocab":
        other = write_tiny_gguf(tmp_path / "other.gguf", extra_tokens=["<|im_start|>"])
        args = ["--draft", str(other)]
        why = f"{other} cannot be the draft model of {model}: token "
    elif case == "projector-width":
        narrow = write_tiny_projector(tmp_path / "narrow.gguf", width=32)
        args = ["--mmproj", str(narrow)]
        why = (
            f"{narrow} does not fit {model}: mismatch between text model (n_embd = 64) "
            "and mmproj (n_embd = 32)"
        )
    elif case == "not-a-projector":
        args = ["--mmproj", str(parts["draft"])]
        why = f"{parts['draft']} is not a vision projector: its general.architecture is 'llama'"
    else:
        model = write_tiny_gguf(tmp_path / "merged.gguf", vision_keys=True)
        args = ["--mmproj", str(parts["projector"])]
        why = f"{model} has its vision tower merged into the model GGUF (llama.vision."
    result, out = refused(tmp_path, str(model), *args)
    assert_clean_error(result, 1, why)
    assert os.listdir(out) == []


def test_extras_need_a_model(tmp_path: Path, parts: dict[str, Path]) -> None:
    result, out = refused(tmp_path, "--no-weights", "--draft", str(parts["draft"]))
    assert_clean_error(result, 2, "--draft and --mmproj go with a MODEL")
    assert os.listdir(out) == []


def test_a_file_of_manifest_format_1_still_reads_and_runs(tiny_pyz: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.pyz"
    old.write_bytes(tiny_pyz.read_bytes())
    old.chmod(0o755)
    manifest = manifest_json(tiny_pyz)
    assert isinstance(manifest["weights"], dict)
    manifest["format"] = 1
    del manifest["ggufs"]  # format 1: one `weights` entry, as files built before wrote it
    with warnings.catch_warnings(), zipfile.ZipFile(old, "a") as zf:
        warnings.simplefilter("ignore")  # the later copy of a duplicate name is the one read
        zf.writestr(MANIFEST_NAME, json.dumps(manifest))
    read = read_manifest(old)
    assert [g.role for g in read.ggufs] == ["model"]
    assert read.weights == read_manifest(tiny_pyz).weights
    assert pack("inspect", str(old)).stdout == pack("inspect", str(tiny_pyz)).stdout
    assert pack("verify", str(old)).returncode == 0
    args = ("-p", "Once upon", "-n", "4", "--temp", "0")
    ran, plain = run_pyz(old, *args), run_pyz(tiny_pyz, *args)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == plain.stdout

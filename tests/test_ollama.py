"""Ollama's model store, laid out exactly as `ollama pull` writes it, read by runtime.sources.ollama."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest

from runtime.sources import ollama
from runtime.sources.ollama import ModelRef, OllamaError
from runtime.sources.ollama_params import params_to_flags

ROOT = Path(__file__).resolve().parent.parent
MEDIA = "application/vnd.ollama.image."
TEMPLATE = (
    "{{ if .System }}<|system|>{{ .System }}</s>{{ end }}<|user|>{{ .Prompt }}</s><|assistant|>"
)
SYSTEM = "You are a tiny, helpful fox."
LICENSE = "MIT License\n\nCopyright (c) 2024 the tiny fox"
PARAMS = {"temperature": 0, "num_predict": 5, "stop": ["</s>"]}


class Store:
    """An Ollama model store in a folder: content-addressed blobs and JSON manifests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "manifests").mkdir(exist_ok=True)

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / f"sha256-{digest}").write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    def blob_path(self, descriptor: dict[str, Any]) -> Path:
        return self.root / "blobs" / str(descriptor["digest"]).replace(":", "-")

    def add(
        self,
        model: str,
        tag: str = "latest",
        layers: Optional[list[tuple[str, bytes]]] = None,
        *,
        namespace: str = "library",
        host: str = "registry.ollama.ai",
        config: Optional[dict[str, Any]] = None,
    ) -> tuple[Path, list[dict[str, Any]]]:
        """Write a manifest for `layers` (kind, bytes), as Ollama does; return it and its layers."""
        descriptors = [self.blob(data, MEDIA + kind) for kind, data in layers or []]
        settings = config or {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "model_type": "0.1M",
            "file_type": "F32",
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
        }
        config_blob = self.blob(
            json.dumps(settings).encode(), "application/vnd.docker.container.image.v1+json"
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": config_blob,
            "layers": descriptors,
        }
        path = self.root / "manifests" / host / namespace / model / tag
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, separators=(",", ":")))
        return path, descriptors


@pytest.fixture(scope="module")
def gguf(tiny_gguf: Path) -> bytes:
    return tiny_gguf.read_bytes()


def full_layers(gguf: bytes) -> list[tuple[str, bytes]]:
    return [
        ("model", gguf),
        ("template", TEMPLATE.encode()),
        ("system", SYSTEM.encode()),
        ("params", json.dumps(PARAMS).encode()),
        ("license", LICENSE.encode()),
    ]


@pytest.fixture
def store(tmp_path: Path, gguf: bytes) -> Store:
    s = Store(tmp_path / "models")
    s.add("smol", layers=full_layers(gguf))
    return s


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("smol", ("registry.ollama.ai", "library", "smol", "latest")),
        ("ollama:smol", ("registry.ollama.ai", "library", "smol", "latest")),
        ("smol:135m", ("registry.ollama.ai", "library", "smol", "135m")),
        ("llama3.2:1b-instruct-q4_K_M",
         ("registry.ollama.ai", "library", "llama3.2", "1b-instruct-q4_K_M")),
        ("me/smol", ("registry.ollama.ai", "me", "smol", "latest")),
        ("ollama:me/smol:v2", ("registry.ollama.ai", "me", "smol", "v2")),
        ("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M",
         ("hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_K_M")),
        ("localhost:5000/me/smol", ("localhost:5000", "me", "smol", "latest")),
        ("localhost:5000/me/smol:1b", ("localhost:5000", "me", "smol", "1b")),
        ("_x/_y:_z", ("registry.ollama.ai", "_x", "_y", "_z")),
    ],
)  # fmt: skip
def test_parse_name(text: str, parts: tuple[str, str, str, str]) -> None:
    assert ollama.parse_name(text).parts == parts


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ollama:",
        "../x",
        "..",
        ".",
        "/etc/passwd",
        "a/../../b",
        "smol:..",
        "smol:../../x",
        "../../../../etc:passwd",
        "a//b",
        "/smol",
        "smol/",
        "smol:",
        ":latest",
        "a\\b",
        "..\\..\\x",
        "smol\0:latest",
        "a/b/c/d",
        "a b",
        "smol:la test",
        "-rf",
        ".hidden",
        "my.ns/smol",  # a namespace may not hold a dot
        "smol@sha256:abc",
        "café",
    ],
)
def test_parse_name_refuses_names_that_could_leave_the_store(text: str) -> None:
    with pytest.raises(OllamaError, match=r"names no Ollama model|is not an Ollama model name"):
        ollama.parse_name(text)


def test_parse_name_message() -> None:
    with pytest.raises(OllamaError) as info:
        ollama.parse_name("a/../../b")
    assert str(info.value) == (
        "'a/../../b' is not an Ollama model name (it has 4 parts; at most HOST/NAMESPACE/MODEL:TAG)"
    )
    with pytest.raises(OllamaError) as info:
        ollama.parse_name("../x")
    assert str(info.value) == (
        "'../x' is not an Ollama model name (its namespace '..' must start with a letter, digit "
        "or _ and hold only letters, digits, _ - .)"
    )


@pytest.mark.parametrize(
    ("parts", "display"),
    [
        (("registry.ollama.ai", "library", "smol", "latest"), "smol:latest"),
        (("registry.ollama.ai", "me", "smol", "1b"), "me/smol:1b"),
        (("hf.co", "bartowski", "Smol-GGUF", "Q4_K_M"), "hf.co/bartowski/Smol-GGUF:Q4_K_M"),
    ],
)
def test_display_is_what_ollama_list_shows(parts: tuple[str, str, str, str], display: str) -> None:
    ref = ModelRef(*parts)
    assert ref.display == display and ref.spec == "ollama:" + display
    assert ollama.parse_name(ref.spec) == ref


# --- the store's root ---------------------------------------------------------------------


def test_store_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])  # conftest gives each test its own HOME
    custom = tmp_path / "custom"
    monkeypatch.setenv("OLLAMA_MODELS", str(custom))
    if ollama.SERVICE_ROOT.is_dir():
        pytest.skip(f"{ollama.SERVICE_ROOT} exists on this machine")
    with pytest.raises(OllamaError) as info:
        ollama.store_root()
    assert str(info.value) == (
        f"no Ollama model store found (looked in {custom}, {home}/.ollama/models, "
        f"/usr/share/ollama/.ollama/models; set OLLAMA_MODELS)"
    )
    (home / ".ollama" / "models").mkdir(parents=True)
    assert ollama.store_root() == home / ".ollama" / "models"  # OLLAMA_MODELS does not exist
    custom.mkdir()
    assert ollama.store_root() == custom  # OLLAMA_MODELS wins when it exists
    monkeypatch.delenv("OLLAMA_MODELS")
    assert ollama.store_root() == home / ".ollama" / "models"
    monkeypatch.setenv("OLLAMA_MODELS", "")
    assert ollama.store_root() == home / ".ollama" / "models"


def test_store_root_from_a_given_environment(tmp_path: Path) -> None:
    (tmp_path / "h" / ".ollama" / "models").mkdir(parents=True)
    (tmp_path / "m").mkdir()
    env = {"HOME": str(tmp_path / "h")}
    assert ollama.store_root(env) == tmp_path / "h" / ".ollama" / "models"
    assert ollama.store_root({**env, "OLLAMA_MODELS": str(tmp_path / "m")}) == tmp_path / "m"


def test_store_root_expands_tilde(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Path(os.environ["HOME"])
    (home / "my-models").mkdir()
    monkeypatch.setenv("OLLAMA_MODELS", "~/my-models")
    assert ollama.store_root() == home / "my-models"


def test_resolve_uses_the_store_root_from_the_environment(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_MODELS", str(store.root))
    assert ollama.resolve("smol").source.path.parent == store.root / "blobs"


# --- resolve ------------------------------------------------------------------------------


def test_resolve_reads_every_layer(store: Store, gguf: bytes) -> None:
    model = ollama.resolve("ollama:smol", root=store.root, verify=True)
    digest = hashlib.sha256(gguf).hexdigest()
    assert model.ref == ModelRef(model="smol")
    assert model.manifest_path == store.root / "manifests/registry.ollama.ai/library/smol/latest"
    assert model.digest == f"sha256:{digest}"
    src = model.source
    assert src.path == store.root / "blobs" / f"sha256-{digest}"
    assert (src.offset, src.size, src.label) == (0, len(gguf), "ollama:smol:latest")
    assert src.path.read_bytes() == gguf
    assert model.params == PARAMS
    assert model.system == SYSTEM
    assert model.template == TEMPLATE
    assert model.license == LICENSE
    assert model.other_layers == []


def test_resolve_minimal_model(store: Store, gguf: bytes) -> None:
    store.add("bare", "1b", [("model", gguf)], namespace="me")
    model = ollama.resolve("me/bare:1b", root=store.root)
    assert model.source.label == "ollama:me/bare:1b"
    assert model.params == {} and model.system is None and model.template is None
    assert model.license is None and model.other_layers == []


def test_resolve_reports_layers_it_does_not_use(store: Store, gguf: bytes) -> None:
    store.add(
        "llava",
        "7b",
        [
            ("model", gguf),
            ("projector", b"GGUF projector"),
            ("adapter", b"GGUF lora"),
            ("messages", b'[{"role":"user","content":"hi"}]'),
            ("license", b"first"),
            ("license", b"second"),
        ],
    )
    model = ollama.resolve("llava:7b", root=store.root)
    assert model.other_layers == ["adapter", "messages"]  # the projector is used (images)
    assert model.projector is not None
    assert model.projector.path.read_bytes() == b"GGUF projector"
    assert model.projector.offset == 0 and model.projector.size == len(b"GGUF projector")
    assert model.license == "first\n\nsecond"


def test_resolve_takes_the_first_of_several_model_layers(store: Store, gguf: bytes) -> None:
    _, layers = store.add("split", layers=[("model", gguf), ("model", gguf + b"part two")])
    model = ollama.resolve("split", root=store.root)
    assert model.source.path == store.blob_path(layers[0])
    assert model.other_layers == ["model"]  # so the caller can say what it left out


def test_resolve_ignores_case_as_ollama_does(store: Store) -> None:
    model = ollama.resolve("SMOL:Latest", root=store.root)
    assert model.ref == ModelRef(model="smol") and model.source.label == "ollama:smol:latest"


def test_resolve_refuses_hostile_names_before_touching_the_disk(store: Store) -> None:
    secret = store.root.parent / "secret"
    secret.mkdir()
    (secret / "x").write_text("{}")
    for name in ("../secret/x", "../../secret:x", "/etc/passwd", "a/../../b"):
        with pytest.raises(OllamaError, match="is not an Ollama model name"):
            ollama.resolve(name, root=store.root)


def test_missing_manifest_suggests_the_closest_names(store: Store, gguf: bytes) -> None:
    for name, tag in [("smol", "1b"), ("qwen2.5", "0.5b"), ("llama3.2", "latest")]:
        store.add(name, tag, [("model", gguf)])
    store.add("smol", "latest", [("model", gguf)], namespace="me")
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smoll", root=store.root)
    assert str(info.value) == (
        f"ollama:smoll:latest is not in the Ollama store at {store.root}; the closest it has: "
        "ollama:smol:latest, ollama:me/smol:latest, ollama:smol:1b, ollama:llama3.2:latest, "
        "ollama:qwen2.5:0.5b"
    )
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol:2b", root=store.root)  # the same model first, whatever its tag
    assert str(info.value).endswith(
        "the closest it has: ollama:smol:1b, ollama:smol:latest, ollama:me/smol:latest, "
        "ollama:llama3.2:latest, ollama:qwen2.5:0.5b"
    )


def test_missing_manifest_in_a_big_store_says_how_many_more(store: Store, gguf: bytes) -> None:
    for i in range(8):
        store.add(f"model{i}", layers=[("model", gguf)])
    with pytest.raises(OllamaError) as info:
        ollama.resolve("model9", root=store.root)
    message = str(info.value)
    assert message.startswith("ollama:model9:latest is not in the Ollama store at ")
    assert message.count("ollama:model") == 1 + 5
    assert message.endswith(" (and 4 more: see `ollama list`)")


def test_missing_manifest_in_an_empty_store(tmp_path: Path) -> None:
    root = Store(tmp_path / "models").root
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=root)
    assert str(info.value) == (
        f"ollama:smol:latest is not in the Ollama store at {root} "
        "(it holds no models; fetch one with `ollama pull smol:latest`)"
    )


def test_manifest_not_json(store: Store) -> None:
    path = store.root / "manifests/registry.ollama.ai/library/smol/latest"
    path.write_text('{"schemaVersion": 2, "layers": [')
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root)
    assert str(info.value).startswith(
        f"the manifest of ollama:smol:latest ({path}) is not valid JSON ("
    )


@pytest.mark.parametrize("content", ["[]", '{"layers": {}}', '"text"', "{}"])
def test_manifest_without_a_list_of_layers(store: Store, content: str) -> None:
    path = store.root / "manifests/registry.ollama.ai/library/smol/latest"
    path.write_text(content)
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root)
    assert str(info.value) == f"the manifest of ollama:smol:latest ({path}) has no list of layers"


def test_no_model_layer(store: Store) -> None:
    store.add("tmpl", layers=[("template", b"{{ .Prompt }}"), ("params", b"{}")])
    with pytest.raises(OllamaError) as info:
        ollama.resolve("tmpl", root=store.root)
    assert (
        str(info.value)
        == "ollama:tmpl:latest has no GGUF model layer (its layers: params, template)"
    )


def test_cloud_model_says_so(store: Store) -> None:
    store.add(
        "gpt-oss",
        "120b-cloud",
        [],
        config={"remote_host": "https://ollama.com:443", "remote_model": "gpt-oss:120b"},
    )
    with pytest.raises(OllamaError) as info:
        ollama.resolve("gpt-oss:120b-cloud", root=store.root)
    assert str(info.value) == (
        "ollama:gpt-oss:120b-cloud is an Ollama cloud model (served by https://ollama.com:443); "
        "it has no weights on this machine"
    )


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:1234",
        "sha256-" + "a" * 64,
        "md5:" + "a" * 64,
        "sha256:" + "A" * 64,
        "sha256:../../../etc/passwd" + "a" * 48,
        None,
    ],
)
def test_bad_digest_format(store: Store, digest: Optional[str]) -> None:
    path = store.root / "manifests/registry.ollama.ai/library/smol/latest"
    manifest = json.loads(path.read_text())
    manifest["layers"][0]["digest"] = digest
    path.write_text(json.dumps(manifest))
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root)
    assert str(info.value) == (
        f"layer 0 of the manifest of ollama:smol:latest ({path}) has a bad digest {digest!r} "
        "(expected sha256:<64 hex digits>)"
    )


def test_missing_blob(store: Store) -> None:
    model = ollama.resolve("smol", root=store.root)
    model.source.path.unlink()
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root)
    assert str(info.value) == (
        f"the model layer of ollama:smol:latest is missing from the store ({model.source.path}); "
        "fetch it again with `ollama pull smol:latest`"
    )


def test_size_mismatch_is_always_checked(store: Store, gguf: bytes) -> None:
    blob = ollama.resolve("smol", root=store.root).source.path
    with blob.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root)
    assert str(info.value) == (
        f"the model layer of ollama:smol:latest ({blob}) has {len(gguf) + 1} bytes, but its "
        f"manifest says {len(gguf)}; fetch it again with `ollama pull smol:latest`"
    )


def test_small_layers_are_size_checked_too(store: Store) -> None:
    path = store.root / "manifests/registry.ollama.ai/library/smol/latest"
    system = next(
        layer
        for layer in json.loads(path.read_text())["layers"]
        if layer["mediaType"].endswith("system")
    )
    store.blob_path(system).write_text(SYSTEM + "!")
    with pytest.raises(
        OllamaError, match=r"^the system layer of ollama:smol:latest .* has 29 bytes"
    ):
        ollama.resolve("smol", root=store.root)


def test_sha_mismatch_only_with_verify(store: Store, gguf: bytes) -> None:
    blob = ollama.resolve("smol", root=store.root).source.path
    damaged = bytearray(gguf)
    damaged[-1] ^= 0xFF  # same size, one byte flipped in the last tensor
    blob.write_bytes(bytes(damaged))
    assert ollama.resolve("smol", root=store.root).source.path == blob  # size alone: cheap
    with pytest.raises(OllamaError) as info:
        ollama.resolve("smol", root=store.root, verify=True)
    digest = hashlib.sha256(gguf).hexdigest()
    assert str(info.value) == (
        f"the model layer of ollama:smol:latest ({blob}) is damaged: its sha256 is "
        f"{hashlib.sha256(damaged).hexdigest()}, not {digest}; "
        "fetch it again with `ollama pull smol:latest`"
    )


def test_model_layer_that_is_not_gguf(store: Store) -> None:
    _, (layer,) = store.add("notgguf", layers=[("model", b"\x89PNG\r\n\x1a\n not a model")])
    with pytest.raises(OllamaError) as info:
        ollama.resolve("notgguf", root=store.root, verify=True)
    assert str(info.value) == (
        f"the model layer of ollama:notgguf:latest ({store.blob_path(layer)}) is not a GGUF model "
        "(it starts with b'\\x89PNG', not b'GGUF')"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'["temperature", 0]', "is not a JSON object (it is a list)"),
        (b"0.7", "is not a JSON object (it is a float)"),
        (b'{"temperature": ', "is not valid JSON ("),
    ],
)
def test_params_layer_must_be_a_json_object(
    store: Store, gguf: bytes, content: bytes, expected: str
) -> None:
    _, layers = store.add("p", layers=[("model", gguf), ("params", content)])
    with pytest.raises(OllamaError) as info:
        ollama.resolve("p", root=store.root)
    assert str(info.value).startswith(
        f"the params layer of ollama:p:latest ({store.blob_path(layers[1])}) {expected}"
    )


def test_text_layer_that_is_not_utf8(store: Store, gguf: bytes) -> None:
    store.add("t", layers=[("model", gguf), ("system", b"\xff\xfe s\x00")])
    with pytest.raises(
        OllamaError, match=r"^the system layer of ollama:t:latest .* is not UTF-8 text$"
    ):
        ollama.resolve("t", root=store.root)


# --- blobs by digest ----------------------------------------------------------------------


def test_resolve_digest(store: Store, gguf: bytes) -> None:
    digest = hashlib.sha256(gguf).hexdigest()
    blob = store.root / "blobs" / f"sha256-{digest}"
    for text in (f"sha256-{digest}", f"sha256:{digest}", f"sha256:{digest.upper()}"):
        src = ollama.resolve_digest(text, root=store.root)
        assert (src.path, src.offset, src.size) == (blob, 0, len(gguf))
        assert src.label == f"sha256-{digest[:12]}"


def test_resolve_digest_errors(store: Store) -> None:
    missing = "0" * 64
    with pytest.raises(OllamaError) as info:
        ollama.resolve_digest(f"sha256-{missing}", root=store.root)
    assert (
        str(info.value) == f"there is no blob sha256-{missing} in the Ollama store at {store.root}"
    )
    system = hashlib.sha256(SYSTEM.encode()).hexdigest()
    with pytest.raises(OllamaError) as info:
        ollama.resolve_digest(f"sha256:{system}", root=store.root)
    assert str(info.value) == (
        f"blob sha256-{system} ({store.root}/blobs/sha256-{system}) is not a GGUF model "
        "(it starts with b'You ', not b'GGUF')"
    )
    for bad in ("sha256-abc", "sha256-../../x", "md5-" + "0" * 64, "0" * 64):
        with pytest.raises(OllamaError, match=r"is not a blob digest \(expected sha256-<64 hex"):
            ollama.resolve_digest(bad, root=store.root)


# --- list ---------------------------------------------------------------------------------


def test_list_models(store: Store, gguf: bytes) -> None:
    smol = store.root / "manifests/registry.ollama.ai/library/smol/latest"
    os.utime(smol, (1_700_000_000, 1_700_000_000))
    store.add("smol", "1b", [("model", gguf + b"x" * 3)], namespace="me")
    store.add("Tiny-GGUF", "Q4_K_M", [("model", gguf)], namespace="bartowski", host="hf.co")
    store.add("tmpl", layers=[("template", b"{{ .Prompt }}")])  # nothing to run
    store.add("gpt-oss", "120b-cloud", [], config={"remote_host": "https://ollama.com:443"})
    broken = store.root / "manifests/registry.ollama.ai/library/broken/latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("{")
    (store.root / "manifests/registry.ollama.ai/library/smol/.DS_Store").write_bytes(b"\0")
    listed = ollama.list_models(store.root)
    assert [(m.name, m.size) for m in listed] == [
        ("hf.co/bartowski/Tiny-GGUF:Q4_K_M", len(gguf)),
        ("me/smol:1b", len(gguf) + 3),
        ("smol:latest", len(gguf)),
    ]
    assert listed[2].modified == 1_700_000_000
    assert listed[2].spec == "ollama:smol:latest"
    for m in listed:  # every listed name resolves
        assert ollama.resolve(m.spec, root=store.root).source.label == m.spec


def test_list_models_of_an_empty_store(tmp_path: Path) -> None:
    assert ollama.list_models(tmp_path) == []


# --- parameters to flags ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "flags", "ignored"),
    [
        ({}, [], []),
        (PARAMS, ["--temp", "0", "-n", "5", "--stop", "</s>"], []),
        ({"temperature": 0.7}, ["--temp", "0.7"], []),
        ({"num_ctx": 8192}, ["-c", "8192"], []),
        ({"num_ctx": 2048.0}, ["-c", "2048"], []),
        ({"top_k": 40, "top_p": 0.9, "min_p": 0.05},
         ["--top-k", "40", "--top-p", "0.9", "--min-p", "0.05"], []),
        ({"repeat_penalty": 1.1, "seed": 42}, ["--repeat-penalty", "1.1", "--seed", "42"], []),
        ({"seed": -1}, ["--seed", "-1"], []),
        ({"num_predict": -1, "num_thread": 4}, ["-n", "-1", "-t", "4"], []),
        ({"stop": ["<|im_end|>", "<|endoftext|>"]},
         ["--stop", "<|im_end|>", "--stop", "<|endoftext|>"], []),
        ({"stop": "User:"}, ["--stop", "User:"], []),
        ({"stop": []}, [], []),
        ({"mirostat": 2, "temperature": 1, "num_gpu": 99, "num_keep": 24},
         ["--temp", "1"], ["mirostat", "num_gpu", "num_keep"]),
    ],
)  # fmt: skip
def test_params_to_flags(params: dict[str, Any], flags: list[str], ignored: list[str]) -> None:
    assert params_to_flags(params) == (flags, ignored)


def test_params_of_a_resolved_model_become_flags(store: Store) -> None:
    model = ollama.resolve("smol", root=store.root)
    assert params_to_flags(model.params) == (
        ["--temp", "0", "-n", "5", "--stop", "</s>"],
        [],
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperature": "hot"}, "the Modelfile parameter temperature is 'hot', not a number"),
        ({"num_ctx": True}, "the Modelfile parameter num_ctx is True, not a number"),
        ({"num_ctx": 2048.5}, "the Modelfile parameter num_ctx is 2048.5, not a whole number"),
        ({"top_p": float("nan")}, "the Modelfile parameter top_p is nan, not a number"),
        ({"stop": [1, 2]}, "the Modelfile parameter stop is [1, 2], not a list of text"),
    ],
)
def test_params_with_bad_values(params: dict[str, Any], message: str) -> None:
    with pytest.raises(OllamaError) as info:
        params_to_flags(params)
    assert str(info.value) == message


# --- the model runs -----------------------------------------------------------------------

GENERATE = """
import sys
from pathlib import Path
from runtime.engine.devices import cpu
from runtime.engine.decoding import model as engine
from runtime.sources import ollama
from runtime.sources.source import ModelSource

engine.set_verbose(False)
engine.start_backend(cpu.choose().path)
if sys.argv[1] == "ollama":
    src = ollama.resolve(sys.argv[2], root=Path(sys.argv[3]), verify=True).source
else:
    p = Path(sys.argv[2])
    src = ModelSource(p, 0, p.stat().st_size, "x")
m = engine.Model(src, n_ctx=256, n_threads=2)
print("".join(m.generate(m.tokenize("the quick brown fox"), 8, engine.Sampling(temp=0))))
"""


@pytest.mark.slow
def test_resolved_model_runs_like_the_plain_gguf(store: Store, tiny_gguf: Path) -> None:
    def run(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", GENERATE, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    plain = run("plain", str(tiny_gguf))
    assert len(plain.split()) >= 3
    assert run("ollama", "ollama:smol", str(store.root)) == plain

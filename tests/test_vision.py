"""Images, as a user meets them: a .pyz packed with a projector sees `--image` files and
`/image` in the chat, through the real libmtmd loading the projector from inside the file;
bad images and models without a projector get one line and exit 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import (
    assert_clean_error,
    build_session_pyz,
    image_bytes,
    pack,
    run_pyz,
    write_tiny_gguf,
    write_tiny_projector,
)

pytestmark = pytest.mark.slow
FLAGS = ("-n", "8", "--seed", "3")
PROMPT = re.compile(r"^prompt: (\d+) tokens(?: \((\d+) for (\d+) images?\))?$", re.M)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.png, a.bmp and a.ppm hold the same pixels; b.png others; big.png a header only."""
    d = tmp_path_factory.mktemp("pictures")
    for kind in ("png", "bmp", "ppm"):
        (d / f"a.{kind}").write_bytes(image_bytes(kind, 40, 30, seed=1))
    (d / "b.png").write_bytes(image_bytes("png", 40, 30, seed=2))
    return d


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_projector(tmp_path_factory.mktemp("proj") / "proj.gguf", width=64)


@pytest.fixture(scope="module")
def vision_pyz(
    tmp_path_factory: pytest.TempPathFactory, session_cache: Path, tiny_gguf: Path, projector: Path
) -> Path:
    return build_session_pyz(
        tmp_path_factory, session_cache, str(tiny_gguf), "--mmproj", str(projector)
    )


def see(pyz: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pyz(pyz, *FLAGS, *args)


def text_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_file_carries_libmtmd_and_extracts_it_at_the_first_image(
    vision_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(vision_pyz) as zf:
        names = set(zf.namelist())
    for machine in ("x86_64", "aarch64"):  # one copy each, beside the CPU variants
        assert f"native/{machine}/bin/libmtmd.so" in names
    assert "site-packages/llama_cpp/mtmd_cpp.py" in names
    assert not any("libmtmd.so." in n or "/llama_cpp/lib/libmtmd" in n for n in names)
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"))
    assert run_pyz(vision_pyz, *FLAGS, "-p", "hello", env=env).returncode == 0
    (site,) = (tmp_path / "cache" / "runtimes").glob("cp*/*/site-packages")
    assert not (site / "bin" / "libmtmd.so").exists()  # a start without an image skips it
    seen = run_pyz(vision_pyz, *FLAGS, "--image", str(pictures / "a.png"), "-p", "hi", env=env)
    assert seen.returncode == 0, seen.stderr
    assert (site / "bin" / "libmtmd.so").stat().st_size > 1_000_000


def test_libmtmd_is_packed_with_lzma_and_a_python_without_lzma_says_so(
    vision_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(vision_pyz) as zf:
        packed = {i.filename: i.compress_type for i in zf.infolist()}
    for machine in ("x86_64", "aarch64"):
        assert packed[f"native/{machine}/bin/libmtmd.so"] == zipfile.ZIP_LZMA
        assert (
            packed[
                f"native/{machine}/bin/libggml-cpu-{'x64' if machine == 'x86_64' else 'armv8.0_1'}.so"
            ]
            == zipfile.ZIP_DEFLATED
        )
    # A Python built without liblzma, whose `import lzma` fails (zipfile then has none): the
    # preamble runs LLAMAPYZ_PYTHON as `PY -I -c CODE FILE ARGS`.
    python = tmp_path / "python3"
    python.write_text(
        f"#!/bin/sh\nflags=$1 code=$3; shift 3\nexec {sys.executable} $flags -c "
        '"import sys; sys.modules[\'lzma\'] = None\n$code" "$@"\n'
    )
    python.chmod(0o755)
    env = dict(os.environ, LLAMAPYZ_CACHE=str(tmp_path / "cache"), LLAMAPYZ_PYTHON=str(python))
    seen = run_pyz(vision_pyz, *FLAGS, "--image", str(pictures / "a.png"), "-p", "hi", env=env)
    assert_clean_error(seen, 1, "libmtmd.so is packed with LZMA and this Python has no lzma module")
    assert run_pyz(vision_pyz, *FLAGS, "-p", "hi", env=env).returncode == 0  # text still runs


def test_the_projector_loads_from_inside_the_file_and_its_tokens_count(
    vision_pyz: Path, projector: Path, pictures: Path, session_cache: Path
) -> None:
    plain = see(vision_pyz, "-p", "hello", "--verbose")
    seen = see(vision_pyz, "--image", str(pictures / "a.png"), "-p", "hello", "--verbose")
    assert seen.returncode == 0, seen.stderr
    n_text = int(PROMPT.search(plain.stderr).group(1))  # type: ignore[union-attr]
    found = PROMPT.search(seen.stderr)
    assert found is not None, seen.stderr
    # a 32 px image in 8 px patches: 16 tokens, before the text (mtmd-cli's place for it)
    assert found.groups() == (str(n_text + 16), "16", "1")
    assert "speculation (ngram): drafted " in plain.stderr
    # an image prompt does not speculate, and says so rather than "drafted 0 tokens"
    assert "speculation: none (a prompt with images does not speculate)" in seen.stderr
    assert "drafted" not in seen.stderr
    # mtmd read the projector from a memfd holding the bytes inside the .pyz: nothing on disk
    assert re.search(r"loaded 41 tensors from /proc/self/fd/\d+", seen.stderr), seen.stderr
    size = projector.stat().st_size
    copies = [p for p in session_cache.rglob("*") if p.is_file() and p.stat().st_size == size]
    assert copies == []


def test_same_image_and_seed_same_text_and_each_format_decodes_alike(
    vision_pyz: Path, pictures: Path
) -> None:
    def run(name: str) -> str:
        return text_of(see(vision_pyz, "--image", str(pictures / name), "-p", "hello"))

    first = run("a.png")
    assert first and run("a.png") == first
    assert run("a.bmp") == first and run("a.ppm") == first  # the same pixels
    other = run("b.png")
    assert other != first
    assert text_of(see(vision_pyz, "-p", "hello")) not in (first, other)
    # two images, each before the text, in order
    both = text_of(
        see(
            vision_pyz,
            "--image",
            str(pictures / "a.png"),
            "--image",
            str(pictures / "b.png"),
            "-p",
            "hello",
            "--verbose",
        )  # fmt: skip
    )
    assert both not in (first, other)


def test_mmproj_overrides_the_projector_in_the_file(
    vision_pyz: Path, tiny_pyz: Path, projector: Path, pictures: Path, tmp_path: Path
) -> None:
    image = ("--image", str(pictures / "a.png"), "-p", "hello")
    embedded = text_of(see(vision_pyz, *image))
    assert text_of(see(tiny_pyz, "--mmproj", str(projector), *image)) == embedded
    assert text_of(see(tiny_pyz, "--mmproj", str(vision_pyz), *image)) == embedded
    other = write_tiny_projector(tmp_path / "other.gguf", width=64, seed=11)
    assert text_of(see(vision_pyz, "--mmproj", str(other), *image)) != embedded


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        "no-projector",
        "mmproj-none",
        "not-an-image",
        "webp",
        "too-many-pixels",
        "too-many-bytes",
        "damaged",
        "missing",
        "past-the-context",
        "not-a-projector",
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    case: str, vision_pyz: Path, tiny_pyz: Path, tiny_gguf: Path, pictures: Path, tmp_path: Path
) -> None:
    pyz, args = vision_pyz, ["-p", "hello"]
    png = image_bytes("png", 40, 30)
    if case == "no-projector":
        pyz, image = tiny_pyz, str(pictures / "a.png")
        text = "this model has no vision projector; pack it with --mmproj or pass --mmproj"
    elif case == "mmproj-none":
        args += ["--mmproj", "none"]
        image = str(pictures / "a.png")
        text = "this model has no vision projector; pack it with --mmproj or pass --mmproj"
    elif case == "not-an-image":
        image = write(tmp_path / "cat.png", b"hello, this is text")
        text = f"{image} is not an image that can be read (it starts with b'hello, t'): give JPEG"
    elif case == "webp":
        image = write(tmp_path / "cat.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ")
        text = f"{image} is a WebP image, which cannot be read: give JPEG, PNG, BMP, GIF or PNM"
    elif case == "too-many-pixels":  # a header that says 10000 x 10000: never decoded
        image = write(tmp_path / "huge.png", png[:16] + (10000).to_bytes(4, "big") * 2 + png[24:])
        text = f"{image} is 10000 x 10000 pixels, over the 50 megapixels an image may have"
    elif case == "too-many-bytes":
        image = write(tmp_path / "big.png", png)
        os.truncate(image, 20_000_001)  # sparse: refused by its size, before it is read
        text = f"{image} is 20.0 MB, over the 20 MB an image may be"
    elif case == "damaged":
        image = write(tmp_path / "cut.png", png[:60])
        text = f"{image} could not be decoded as PNG"
    elif case == "missing":
        image = str(tmp_path / "nowhere.png")
        text = f"{image} does not exist"
    elif case == "past-the-context":  # 80 px in 4 px patches: 400 tokens, in a context of 256
        big = write_tiny_projector(tmp_path / "big.gguf", width=64, image=80, patch=4)
        args += ["--mmproj", str(big), "-c", "256"]
        image = str(pictures / "a.png")
        text = "the prompt is 407 tokens (400 of them for 1 image), more than the context of 256"
    else:
        args += ["--mmproj", str(tiny_gguf)]
        image = str(pictures / "a.png")
        text = (
            f"--mmproj {tiny_gguf} is not a vision projector (its general.architecture is 'llama'"
        )
    result = see(pyz, "--image", image, *args)
    assert_clean_error(result, 1, text)


def test_image_without_a_prompt_is_bad_usage(vision_pyz: Path, pictures: Path) -> None:
    result = see(vision_pyz, "--image", str(pictures / "a.png"), "--server")
    assert_clean_error(result, 2, "--image goes with -p (in a chat: /image PATH)")


def test_chat_attaches_images_and_decodes_each_once(vision_pyz: Path, pictures: Path) -> None:
    a, b = pictures / "a.png", pictures / "b.png"
    cut = pictures / "cut.png"
    cut.write_bytes(image_bytes("png", 40, 30)[:60])
    typed = f"/image {a}\nhello\n/image {pictures / 'nope.png'}\n{cut}\n'{b}'\nhello\n/exit\n"
    result = run_pyz(vision_pyz, "--chat", *FLAGS, "--temp", "0", "--verbose", input=typed)
    assert result.returncode == 0, result.stderr
    assert f"(attached {a}: it goes with your next message)" in result.stderr
    assert f"(attached {b}: it goes with your next message)" in result.stderr  # a path alone
    assert f"Error: {pictures / 'nope.png'} does not exist" in result.stderr
    assert f"Error: {cut} could not be decoded as PNG" in result.stderr  # at once, not later
    # the second turn resends a.png: its positions are reused, only b.png is encoded
    assert result.stderr.count("image: 16 tokens, encoded in ") == 2


def test_the_marker_typed_is_plain_text_or_one_line_and_the_chat_goes_on(
    vision_pyz: Path, pictures: Path
) -> None:
    typed = f"what is <__media__>?\n/image {pictures / 'a.png'}\nsay <__media__>\nhello\n/exit\n"
    result = run_pyz(vision_pyz, "--chat", *FLAGS, "--verbose", input=typed)
    assert result.returncode == 0, result.stderr
    refused = (
        "Error: <__media__> stands for an image here: attach images with /image PATH "
        "(the message was not sent)"
    )
    assert result.stderr.count(refused) == 2
    # the projector loads with the model, as mtmd-cli's and Ollama's: /image waits for none
    assert result.stderr.index("vision projector: ") < result.stderr.index("(attached ")
    assert result.stderr.count("image: 16 tokens, encoded in ") == 1  # "hello" took the image
    assert result.stdout.strip()
    # -p without --image reads it as text (no projector is loaded for it)
    assert text_of(see(vision_pyz, "-p", "what is <__media__>?")).strip()


def test_chat_image_without_a_projector_says_so_and_goes_on(tiny_pyz: Path, pictures: Path) -> None:
    typed = f"/image {pictures / 'a.png'}\nhello\n/exit\n"
    result = run_pyz(tiny_pyz, "--chat", *FLAGS, input=typed)
    assert result.returncode == 0, result.stderr
    assert "Error: this model has no vision projector; pack it with --mmproj" in result.stderr
    assert result.stdout.strip()


def test_pack_inspect_lists_the_projector(vision_pyz: Path) -> None:
    shown = pack("inspect", str(vision_pyz))
    assert shown.returncode == 0, shown.stderr
    assert "  type:         mlp (images 32 px, output width 64)" in shown.stdout


def test_every_source_of_a_projector_sees_alike(
    vision_pyz: Path,
    tiny_pyz: Path,
    tiny_gguf: Path,
    projector: Path,
    pictures: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same model and projector from an Ollama store (its projector layer), a llamafile
    (its mmproj member), and a file built from the store: the same text as the packed file."""
    from test_llamafile import write_zip
    from test_ollama import Store

    image = ("--image", str(pictures / "a.png"), "-p", "hello")
    embedded = text_of(see(vision_pyz, *image))
    store = Store(tmp_path / "ollama")
    store.add(
        "seer", layers=[("model", tiny_gguf.read_bytes()), ("projector", projector.read_bytes())]
    )
    monkeypatch.setenv("OLLAMA_MODELS", str(store.root))
    assert text_of(see(tiny_pyz, "-m", "seer", *image)) == embedded
    assert text_of(see(tiny_pyz, "--mmproj", "ollama:seer", *image)) == embedded
    members = [
        ("llava-mmproj-f16.gguf", projector.read_bytes(), zipfile.ZIP_STORED),
        ("llava.gguf", tiny_gguf.read_bytes(), zipfile.ZIP_STORED),
    ]
    llamafile = write_zip(tmp_path / "llava.llamafile", members)
    assert text_of(see(tiny_pyz, "-m", str(llamafile), *image)) == embedded
    built = pack("build", "ollama:seer", "-o", str(tmp_path / "seer.pyz"))
    assert built.returncode == 0, built.stderr
    assert "ollama:seer:latest: its vision projector layer goes in the file too" in built.stderr
    shown = pack("inspect", str(tmp_path / "seer.pyz"))
    assert "  type:         mlp (images 32 px, output width 64)" in shown.stdout
    (tmp_path / "seer.pyz").chmod(0o755)
    assert text_of(see(tmp_path / "seer.pyz", *image)) == embedded
    # a model with no projector layer, named by --mmproj
    store.add("blind", layers=[("model", tiny_gguf.read_bytes())])
    result = see(tiny_pyz, "--mmproj", "blind", *image)
    assert_clean_error(result, 1, "--mmproj blind: it carries no vision projector")


def test_the_scheduler_seam_decodes_an_image_into_any_sequence(
    tiny_gguf: Path, projector: Path, pictures: Path
) -> None:
    """In process: what the server's scheduler will do for a slot (`decode_image` out of band,
    the text at `pos_at`, in sequence 1) leaves the same next-token logits as the one-shot's
    `prefill` into sequence 0; another image leaves others."""
    from runtime.engine import backend
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.engine.media import vision
    from runtime.sources.source import ModelSource

    def source(path: Path) -> ModelSource:
        return ModelSource(path, 0, path.stat().st_size, path.name)

    engine.set_verbose(False)
    if not backend.backend_started():
        engine.start_backend(cpu.choose().path)
    llm = engine.Model(source(tiny_gguf), n_ctx=256, n_threads=2, n_seq_max=2)
    with llm, vision.Vision(llm, source(projector), n_threads=2) as seen:
        image = vision.read_images((str(pictures / "a.png"),))
        prompt = vision.one_shot(seen, "hello", image)
        n_text = len(llm.tokenize("hello"))
        assert len(prompt) == n_text + 16 and prompt.image_tokens == 16
        start = prompt.spans[1].start  # BOS, then the image, then the text
        assert prompt.image_at(start) is not None and prompt.image_at(start + 1) is None
        assert prompt.keep(start + 5) == start and prompt.keep(start + 16) == start + 16
        assert prompt.text_until(0) == start and prompt.text_until(start + 16) == len(prompt)
        assert prompt.pos_at(start + 16) == start + 16  # mlp: a position per image token
        C = engine.bindings()

        def logits() -> list[float]:
            row = C.llama_get_logits_ith(llm._ctx, -1)
            return [float(row[i]) for i in range(llm.n_vocab)]

        held = vision.prefill(llm, prompt, [], 0)
        assert held == list(prompt)
        first = logits()
        at = 0
        while at < len(prompt):  # the scheduler's way, into sequence 1
            n = vision.decode_image(llm, prompt, at, 1)
            if not n:
                n = prompt.text_until(at) - at
                vision._decode_text(llm, list(prompt)[at : at + n], prompt.pos_at(at), 1)
            at += n
        assert max(abs(a - b) for a, b in zip(first, logits())) < 1e-4
        # sequence 1 took the image's kept embeddings: encoded once, decoded twice, alike
        assert (seen.embeddings.encoded, seen.embeddings.reused, len(seen.embeddings)) == (1, 1, 1)
        seen.embeddings.capacity = seen.embeddings.bytes  # room for one image's embeddings
        other = vision.one_shot(seen, "hello", vision.read_images((str(pictures / "b.png"),)))
        vision.prefill(llm, other, held, 0)
        assert max(abs(a - b) for a, b in zip(first, logits())) > 1e-3  # another image
        vision.prefill(llm, prompt, [], 0)  # b.png's pushed a.png's out: encoded again
        assert max(abs(a - b) for a, b in zip(first, logits())) < 1e-4
        assert (seen.embeddings.encoded, seen.embeddings.reused, len(seen.embeddings)) == (3, 1, 1)


def mtmd_greedy(
    model: Path, projector: Path, image: Path, text: str, n: int, flash_attn: str = "auto"
) -> tuple[str, tuple[int, int, bool]]:
    """In this process: llama.cpp's own reading of `image`, then `text` (mtmd_helper_eval_chunks,
    as mtmd-cli reads a prompt: it counts the positions itself), and `n` greedy tokens after
    it, each at the next position; with the image's tokens and positions (n_tokens, n_pos)
    and whether mtmd gives the model M-RoPE's positions.
    Where mtmd's prompt ends is where engine/vision.py's `Prompt.pos_at` says it does."""
    import ctypes

    from runtime.engine import backend
    from runtime.engine.decoding import model as engine
    from runtime.engine.devices import cpu
    from runtime.engine.media import vision
    from runtime.sources.source import ModelSource

    def source(path: Path) -> ModelSource:
        return ModelSource(path, 0, path.stat().st_size, path.name)

    engine.set_verbose(False)
    if not backend.backend_started():
        engine.start_backend(cpu.choose().path)
    llm = engine.Model(source(model), n_ctx=512, n_threads=2, flash_attn=flash_attn)
    with llm, vision.Vision(llm, source(projector), n_threads=2) as seen:
        C, M = engine.bindings(), seen._M
        prompt = vision.one_shot(seen, text, vision.read_images((str(image),)))
        (span,) = [s for s in prompt.spans if s.image]
        end = prompt.pos_at(len(prompt))
        assert end == len(prompt) - span.n_tokens + span.n_pos
        n_past = C.llama_pos(0)
        rc = M.mtmd_helper_eval_chunks(
            seen._ctx, llm._ctx, prompt._chunks, 0, 0, llm.n_batch, True, ctypes.byref(n_past)
        )
        assert rc == 0 and n_past.value == end
        tokens: list[int] = []
        for pos in range(end, end + n):
            row = C.llama_get_logits_ith(llm._ctx, -1)
            token = max(range(llm.n_vocab), key=lambda i: float(row[i]))
            if C.llama_vocab_is_eog(llm._vocab, token):
                break
            tokens.append(token)
            vision._decode_text(llm, [token], pos, 0)
        said = b"".join(map(llm.piece, tokens)).decode("utf-8", "replace")
        mrope = bool(M.mtmd_decode_use_mrope(seen._ctx))
    return said, (span.n_tokens, span.n_pos, mrope)


@pytest.mark.parametrize("kind", ["mlp", "gemma3", "qwen2vl"])
def test_the_one_shot_reads_an_image_as_mtmds_own_helper_does(
    kind: str, tiny_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    """The one-shot's greedy text is what llama.cpp's own reading of the prompt gives
    (`mtmd_greedy`). Qwen2-VL's M-RoPE: its 5 x 4 image tokens take 5 positions (mtmd's
    n_pos), and the text after the image goes on from there, 15 positions before its token
    count; counted by tokens, the text differs."""
    qwen = kind == "qwen2vl"
    model = write_tiny_gguf(tmp_path / "m.gguf", architecture="qwen2vl" if qwen else "llama")
    proj = write_tiny_projector(tmp_path / "p.gguf", width=64, patch=4, kind=kind)
    image = pictures / "a.png"
    want, facts = mtmd_greedy(model, proj, image, "hello", 8)
    # mlp: 32 px in 4 px patches; gemma3 pools them 2 x 2; qwen2vl: 40 x 30 px resized to
    # 40 x 32, a token per 2 x 2 patches, 5 x 4 of them
    assert (
        facts == {"mlp": (64, 64, False), "gemma3": (16, 16, False), "qwen2vl": (20, 5, True)}[kind]
    )
    shot = see(tiny_pyz, "-m", str(model), "--mmproj", str(proj), "--image", str(image),
               "-p", "hello", "--temp", "0")  # fmt: skip
    assert want and text_of(shot) == want


def test_smollm2_sees_through_a_576_wide_projector_inside_its_chat_template(
    smollm2_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    """A real model and its Jinja chat template: the marker rides in the message's content,
    mtmd splits the templated text there; the projector is as wide as SmolLM2 (576)."""
    wide = write_tiny_projector(tmp_path / "p576.gguf", width=576)
    typed = f"/image {pictures / 'a.png'}\nWhat is this?\n/exit\n"
    args = ("--mmproj", str(wide), "--chat", "-n", "8", "--temp", "0", "--verbose")
    result = run_pyz(smollm2_pyz, *args, input=typed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "chat template: the model's own" in result.stderr
    assert result.stderr.count("image: 16 tokens, encoded in ") == 1
    assert "<|im_start|>user\n" in result.stderr  # mtmd's log of the text around the image
    assert result.stdout.strip()
    narrow = write_tiny_projector(tmp_path / "p64.gguf", width=64)
    refused = run_pyz(
        smollm2_pyz, "--mmproj", str(narrow), "--image", str(pictures / "a.png"), "-p", "hi"
    )
    assert_clean_error(
        refused, 1, "mismatch between text model (n_embd = 576) and mmproj (n_embd = 64)"
    )


@pytest.mark.parametrize("kind", ["mlp", "gemma3"])
def test_the_server_reads_an_image_at_the_one_shots_positions(
    kind: str, tiny_pyz: Path, pictures: Path, tmp_path: Path
) -> None:
    """gemma3's projector (its image read with non-causal attention, between text that marks
    it) as mlp's: the server's scheduler (the image out of band into a slot, the text in the
    shared batch at the prompt's positions) gives the one-shot's greedy text and token count."""
    import base64

    import requests
    from conftest import Server

    proj = write_tiny_projector(tmp_path / "p.gguf", width=64, image=32, patch=4, kind=kind)
    shot = see(tiny_pyz, "--mmproj", str(proj), "--image", str(pictures / "a.png"), "-p", "hello",
               "--temp", "0", "--verbose")  # fmt: skip
    found = PROMPT.search(shot.stderr)
    assert shot.returncode == 0 and found is not None, shot.stderr
    n_image = 16 if kind == "gemma3" else 64  # gemma3 pools 8 x 8 patches 2 x 2
    assert found.groups()[1:] == (str(n_image), "1")
    if kind == "gemma3":  # the text mtmd puts around its image: more tokens than the image's
        assert int(found.group(1)) > n_image + len("hello")
    srv = Server(tiny_pyz, "--mmproj", str(proj), "-c", "1024", "--parallel", "2")
    try:
        b64 = base64.b64encode((pictures / "a.png").read_bytes()).decode()
        body = {"model": "m", "prompt": "hello", "images": [b64], "raw": True, "stream": False}
        body["options"] = {"temperature": 0, "num_predict": 8, "seed": 3}
        reply = requests.post(f"{srv.url}/api/generate", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
    finally:
        srv.stop()
    assert reply.json()["prompt_eval_count"] == int(found.group(1))
    assert reply.json()["response"] == shot.stdout
